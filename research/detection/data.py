"""Detection datasets and their grain pipelines.

Datasets, by ``data.name``:

- ``mnist_det``: MNIST-10k digits pasted on canvases, generated offline with ``config.det``'s settings
  (``research.data.builders.mnist_det``: boxes, labels and instance masks), held in memory;
- any TFDS detection dataset (``voc/2007``, ``voc/2012``, ``coco/2017``, ``coco/2014``: an ``image``
  and ``objects`` with ``bbox`` and ``label``), prepared on first use (the ``prepare`` extra) and
  read lazily, resized to ``det.canvas_size`` with ``det.max_objects`` objects per image.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping

import grain
import numpy as np

from research.data import augment as augment_lib
from research.data import builders as builders_lib
from research.data import datasets as datasets_lib
from research.data import tfds_catalog
from research.data.builders.mnist_det import CLASSES, DetParams, MnistDet, make_det_canvas, masks_to_boxes

__all__ = ['CLASSES', 'DetParams', 'MnistDet', 'make_det_canvas', 'masks_to_boxes']

IMAGENET_MEAN, IMAGENET_STD = datasets_lib.IMAGENET_MEAN, datasets_lib.IMAGENET_STD
_SHUFFLE_TAG = 0x4445545348
_AUG_TAG = 0x4445544147


def params_from_config(det_cfg: Mapping | None) -> DetParams:
    """``DetParams`` from a mapping / ConfigDict (``data_seed`` or ``seed``; missing keys: defaults)."""
    kw = {}
    for f in dataclasses.fields(DetParams):
        for key in (f.name, 'data_seed') if f.name == 'seed' else (f.name,):
            if det_cfg is not None and key in det_cfg:
                kw[f.name] = type(getattr(DetParams, f.name))(det_cfg[key])
    p = DetParams(**kw)
    p.validate()
    return p


_LOCK = threading.RLock()
_CACHE: dict[tuple, MnistDet] = {}


def get_det_builder(data_cfg, det_cfg: Mapping | None = None):
    """The prepared builder of ``config.data``: ``mnist_det`` (generated from ``data.path``, default
    ``$RESEARCH_DATA_DIR/mnist10k-png.tgz``, with the settings ``det_cfg``), or any TFDS detection
    dataset by name (``voc/2007``, ``coco/2017``, ...: prepared on first use, which needs network and
    the ``prepare`` extra). Built once, then reused."""
    name = str(datasets_lib.field(data_cfg, 'name'))
    data_dir = datasets_lib.resolve_data_dir(data_cfg)
    entry = builders_lib.lookup(name)
    if entry is None:
        return _tfds_builder(name, data_dir)
    if entry.kind != 'detection':  # another of this project's names (the task refuses them): mnist_det
        name, entry = 'mnist_det', builders_lib.lookup('mnist_det')
    params = params_from_config(det_cfg)
    path = datasets_lib.source_path(name, str(datasets_lib.field(data_cfg, 'path')))
    key = (name, path, data_dir, params)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = datasets_lib.prepare(name, path, data_dir, params)
        return _CACHE[key]


def _tfds_builder(name: str, data_dir: str):
    key = (name, data_dir)
    with _LOCK:
        if key not in _CACHE:
            try:
                builder = tfds_catalog.open_dataset(name, data_dir)
            except ValueError as e:
                raise ValueError(
                    f"unknown detection dataset data.name={name!r}: not 'mnist_det' and not a TFDS dataset"
                ) from e
            feats = builder.info.features
            if 'image' not in feats or 'objects' not in feats or 'bbox' not in feats['objects'].feature:
                raise ValueError(
                    f"TFDS dataset {name!r} is not a detection dataset: it needs 'image' and "
                    f"'objects' with 'bbox' and 'label' features (as voc and coco have)"
                )
            _CACHE[key] = builder
        return _CACHE[key]


def class_names(builder) -> tuple[str, ...]:
    """('background', <the dataset's classes>...): label k of the batches is ``names[k]``."""
    if isinstance(builder, MnistDet):
        return CLASSES
    return ('background',) + tuple(builder.info.features['objects']['label'].names)


class DetSplit:
    """A whole split in memory: images uint8 [N, S, S, 1], boxes [N, M, 4], labels [N, M], num_objects
    [N] and (``with_masks``) masks uint8 [N, M, S, S]."""

    def __init__(self, builder: MnistDet, split: str, with_masks: bool = False):
        src = builder.as_data_source(split)
        recs = src.__getitems__(list(range(len(src))))
        self.images = np.stack([np.asarray(r['image'], np.uint8) for r in recs])
        self.boxes = np.stack([np.asarray(r['boxes'], np.float32) for r in recs])
        self.labels = np.stack([np.asarray(r['labels'], np.int32) for r in recs])
        self.num_objects = np.asarray([int(r['num_objects']) for r in recs], np.int32)
        self.masks = np.stack([np.asarray(r['masks'], np.uint8) for r in recs]) if with_masks else None

    def __len__(self) -> int:
        return len(self.images)


class TfdsDetSplit:
    """A TFDS detection split (``voc``, ``coco``, ...) read lazily from its array_record data source,
    with the in-memory split's interface (``images`` / ``boxes`` / ``labels`` / ``num_objects`` indexed
    by example index arrays): each image is resized to ``size`` x ``size`` (bilinear; boxes scaled with
    it), TFDS's normalised (ymin, xmin, ymax, xmax) boxes become xyxy pixels, labels become 1..K (0 =
    padding), crowd boxes (COCO's ``is_crowd``) are dropped and the first ``max_objects`` objects kept.
    Decoded with NumPy/OpenCV/PIL (no TensorFlow); masks are not read."""

    def __init__(self, builder, split: str, size: int, max_objects: int):
        self.source = builder.as_data_source(split)
        self.size, self.max_objects = int(size), int(max_objects)
        shape = builder.info.features['image'].shape
        self.channels = int(shape[-1] or 3)
        self.masks = None
        self._key, self._records = None, None
        self.images, self.boxes = _LazyField(self, 'image'), _LazyField(self, 'boxes')
        self.labels, self.num_objects = _LazyField(self, 'labels'), _LazyField(self, 'num_objects')

    def __len__(self) -> int:
        return len(self.source)

    def example(self, index: int) -> dict[str, np.ndarray]:
        from PIL import Image  # pylint: disable=g-import-not-at-top

        rec = self.source[int(index)]
        image = np.asarray(rec['image'], np.uint8)
        if image.ndim == 2:
            image = image[..., None]
        s, m = self.size, self.max_objects
        if image.shape[:2] != (s, s):
            chans = [
                Image.fromarray(image[..., c]).resize((s, s), Image.BILINEAR) for c in range(image.shape[-1])
            ]
            image = np.stack([np.asarray(c, np.uint8) for c in chans], -1)
        objects = rec['objects']
        bbox = np.asarray(objects['bbox'], np.float32).reshape(-1, 4)
        labels = np.asarray(objects['label'], np.int32).reshape(-1) + 1
        keep = np.ones(len(labels), bool)
        if 'is_crowd' in objects:
            keep &= ~np.asarray(objects['is_crowd'], bool).reshape(-1)
        bbox, labels = bbox[keep][:m], labels[keep][:m]
        n = len(labels)
        boxes = np.zeros((m, 4), np.float32)
        boxes[:n] = np.stack([bbox[:, 1], bbox[:, 0], bbox[:, 3], bbox[:, 2]], -1) * s
        out_labels = np.zeros((m,), np.int32)
        out_labels[:n] = labels
        return {'image': image, 'boxes': boxes, 'labels': out_labels, 'num_objects': np.int32(n)}

    def records(self, indices) -> list[dict[str, np.ndarray]]:
        key = tuple(int(i) for i in np.asarray(indices).ravel())
        if key != self._key:  # the four fields of one batch decode the examples once
            self._key, self._records = key, [self.example(i) for i in key]
        return self._records


class _LazyField:
    def __init__(self, split: TfdsDetSplit, name: str):
        self.split, self.name = split, name

    def __getitem__(self, indices) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.nonzero(idx)[0]
        recs = self.split.records(idx.reshape(-1))
        return np.stack([r[self.name] for r in recs]).reshape(*idx.shape, *recs[0][self.name].shape)

    def __len__(self) -> int:
        return len(self.split)


_SPLITS: dict[tuple, DetSplit] = {}


def get_split(
    builder, split: str, with_masks: bool = False, det_cfg: Mapping | None = None, key_name: str = 'split'
):
    """The split's examples: in memory for ``mnist_det`` (:class:`DetSplit`), lazily for a TFDS dataset
    (:class:`TfdsDetSplit`, resized to ``det.canvas_size`` with ``det.max_objects`` objects)."""
    key = (str(builder.data_path), split, with_masks)
    if not isinstance(builder, MnistDet):
        p = params_from_config(det_cfg)
        key += (p.canvas_size, p.max_objects)
    with _LOCK:
        if key not in _SPLITS:
            datasets_lib.num_examples(builder, split, key_name)  # a one-line error for a bad split
            if isinstance(builder, MnistDet):
                _SPLITS[key] = DetSplit(builder, split, with_masks)
            else:
                if with_masks:
                    raise ValueError(f'instance masks are read from mnist_det only, not {builder.info.name}')
                _SPLITS[key] = TfdsDetSplit(builder, split, p.canvas_size, p.max_objects)
        return _SPLITS[key]


def normalization(data_cfg, det_cfg=None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per ``data.normalize``: the train split's pixels in [0, 1] ('auto' / True; a TFDS
    dataset uses ImageNet's per-channel statistics, as torchvision's detectors), ImageNet's constants
    ('imagenet'), or (0, 1) (False)."""
    mode = datasets_lib.normalize_mode(datasets_lib.field(data_cfg, 'normalize'))
    if mode == 'none':
        return (0.0,), (1.0,)
    builder = get_det_builder(data_cfg, det_cfg)
    if not isinstance(builder, MnistDet):
        return IMAGENET_MEAN, IMAGENET_STD
    if mode == 'imagenet':
        return datasets_lib.imagenet_constants(1)
    train = get_split(builder, str(datasets_lib.field(data_cfg, 'train_split')), key_name='data.train_split')
    x = train.images.astype(np.float64) / 255.0
    return (float(x.mean()),), (max(float(x.std()), 1e-6),)


def hflip(images: np.ndarray, boxes: np.ndarray, valid: np.ndarray, masks: np.ndarray | None = None):
    """Horizontal flip of images [B, S, S, C], boxes [B, M, 4] (x -> S - x; padding stays 0), masks."""
    w = images.shape[2]
    flipped = np.stack([w - boxes[..., 2], boxes[..., 1], w - boxes[..., 0], boxes[..., 3]], -1)
    boxes = np.where(valid[..., None], flipped, 0.0).astype(np.float32)
    return images[:, :, ::-1], boxes, None if masks is None else masks[..., ::-1]


def _batch(data: DetSplit, idx: np.ndarray, valid_rows: np.ndarray, mean, std, flip_rows=None):
    safe = np.where(valid_rows, idx, 0)
    images, boxes, labels = data.images[safe], data.boxes[safe], data.labels[safe]
    box_mask = (np.arange(boxes.shape[1])[None] < data.num_objects[safe][:, None]) & valid_rows[:, None]
    masks = data.masks[safe] if data.masks is not None else None
    if flip_rows is not None and flip_rows.any():
        fi, fb, fm = hflip(
            images[flip_rows],
            boxes[flip_rows],
            box_mask[flip_rows],
            None if masks is None else masks[flip_rows],
        )
        images[flip_rows], boxes[flip_rows] = fi, fb
        if masks is not None:
            masks[flip_rows] = fm
    x = augment_lib.Normalizer(mean, std, images.shape[2])(images.astype(np.float32) * np.float32(1 / 255))
    x[~valid_rows] = 0.0
    out = {
        'image': x,
        'boxes': np.where(box_mask[..., None], boxes, 0.0).astype(np.float32),
        'labels': np.where(box_mask, labels, 0).astype(np.int32),
        'box_mask': box_mask,
        'index': np.where(valid_rows, idx, -1).astype(np.int32),
    }
    if masks is not None:
        out['masks'] = np.where(box_mask[..., None, None], masks, 0).astype(np.uint8)
    return out


def make_train_iterator(
    data_cfg,
    det_cfg=None,
    *,
    seed: int,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    with_masks: bool = False,
):
    """Infinite shuffled batches {'image' float32 [L, S, S, 1], 'boxes' [L, M, 4], 'labels' int32 [L, M],
    'box_mask' bool [L, M], 'index' int32 [L] (the example's index in the split; -1 = padding)
    (+ 'masks' uint8 [L, M, S, S])}, horizontally flipped at random when
    ``data.augment.flip``; determined by (seed, stream position), so the grain iterator is
    checkpointable and resumes bit for bit."""
    local = global_batch_size // process_count
    data = get_split(
        get_det_builder(data_cfg, det_cfg),
        str(datasets_lib.field(data_cfg, 'train_split')),
        with_masks,
        det_cfg,
        'data.train_split',
    )
    if len(data) < global_batch_size:
        raise ValueError(f'global_batch_size {global_batch_size} exceeds the {len(data)} train examples')
    mean, std = normalization(data_cfg, det_cfg)
    flip = bool(datasets_lib.field(data_cfg, 'augment.flip'))
    s = int(datasets_lib.field(data_cfg, 'shuffle_seed'))
    seed = (seed if s < 0 else s) % 2**64
    epoch_len = len(data) // global_batch_size * global_batch_size
    lo = process_index * local

    def fn(step: int) -> dict[str, np.ndarray]:
        pos = np.arange(step * global_batch_size + lo, step * global_batch_size + lo + local, dtype=np.int64)
        epochs, slots = np.divmod(pos, epoch_len)
        idx = np.empty_like(pos)
        for e in np.unique(epochs):
            rng = np.random.default_rng(np.random.SeedSequence([seed, _SHUFFLE_TAG, int(e)]))
            idx[epochs == e] = rng.permutation(len(data))[slots[epochs == e]]
        flips = (augment_lib.uniform_hash(seed ^ _AUG_TAG, pos, 1)[:, 0] < 0.5) if flip else None
        return _batch(data, idx, np.ones(local, bool), mean, std, flips)

    steps = len(data) // global_batch_size
    ds = grain.MapDataset.range(steps).repeat().map_with_index(lambda step, _: fn(step))
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def make_eval_iterator(
    data_cfg,
    det_cfg=None,
    split: str = 'test',
    *,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    with_masks: bool = False,
):
    """One ordered pass over ``split``: the train batch keys plus 'mask' bool [L]; the final batch is
    padded with zero images and no boxes (mask False), so metrics over the pass are exact."""
    local = global_batch_size // process_count
    data = get_split(
        get_det_builder(data_cfg, det_cfg),
        str(split),
        with_masks,
        det_cfg,
        datasets_lib.split_key(data_cfg, str(split)),
    )
    mean, std = normalization(data_cfg, det_cfg)
    lo = process_index * local

    def fn(step: int) -> dict[str, np.ndarray]:
        pos = np.arange(step * global_batch_size + lo, step * global_batch_size + lo + local, dtype=np.int64)
        mask = pos < len(data)
        return {**_batch(data, pos, mask, mean, std), 'mask': mask}

    steps = -(-len(data) // global_batch_size)
    ds = grain.MapDataset.range(steps).map(fn)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))
