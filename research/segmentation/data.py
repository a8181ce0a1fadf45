"""Segmentation datasets and their grain pipelines.

Datasets, by ``data.name`` (builders registered in ``research.data.builders``):

- ``mnist_seg`` and ``shapes_seg``: synthetic canvases generated offline
  (``research.data.builders.synthetic``; generation settings from ``config.seg``), held in memory;
- ``voc_seg`` (``voc_seg/2012``, ``voc_seg/2007``): PASCAL VOC's class masks, downloaded from the VOC
  tarballs (``research.data.builders.voc_seg``), read lazily;
- ``cityscapes`` (TFDS, manual download), read lazily.

The lazily read datasets are resized to ``seg.canvas_size`` (bilinear images, nearest labels) with
their label ids mapped to train ids (255 = ignore). The pipelines mirror ``research.data.pipeline``:
an infinite train stream with joint image/label augmentation (pad-and-random-crop, horizontal flip;
padded label pixels are ``IGNORE_LABEL``) determined by (seed, stream position), and a one-pass eval
stream whose final batch is padded with a mask.
"""

from __future__ import annotations

import dataclasses
import threading

import grain
import numpy as np

from research.data import augment as augment_lib
from research.data import builders as builders_lib
from research.data import datasets as datasets_lib
from research.data import roots
from research.data.builders import voc_seg
from research.data.builders.synthetic import (
    MNIST_CLASSES,
    SHAPES_CLASSES,
    STROKE_THRESHOLD,
    MnistSeg,
    SegConfig,
    SegParams,
    ShapesSeg,
    load_mnist_digits,
    make_mnist_canvas,
    make_shapes_canvas,
    paste_digits,
)
from research.data.builders.synthetic import example_rng as _rng

__all__ = [
    'MNIST_CLASSES',
    'SHAPES_CLASSES',
    'STROKE_THRESHOLD',
    'MnistSeg',
    'SegConfig',
    'SegParams',
    'ShapesSeg',
    '_rng',
    'load_mnist_digits',
    'make_mnist_canvas',
    'make_shapes_canvas',
    'paste_digits',
]

IGNORE_LABEL = 255
#: The synthetic segmentation datasets (held in memory; generation settings from ``config.seg``).
SEG_BUILDERS = ('mnist_seg', 'shapes_seg')
_AUG_TAG = 0x5345474155
_SHUFFLE_TAG = 0x5345475348


def params_from_config(seg_cfg) -> SegParams:
    """``SegParams`` from a ``config.seg`` section (missing keys keep their defaults)."""
    kw = {}
    names = dict(
        data_seed='seed',
        canvas_size='canvas_size',
        min_objects='min_objects',
        max_objects='max_objects',
        min_scale='min_scale',
        max_scale='max_scale',
        num_train='num_train',
        num_test='num_test',
    )
    for key, fieldname in names.items():
        if seg_cfg is not None and key in seg_cfg:
            kw[fieldname] = type(getattr(SegParams, fieldname))(seg_cfg[key])
    p = SegParams(**kw)
    p.validate()
    return p


def make_seg_builder(name: str, path: str, data_dir: str, params: SegParams = SegParams()):
    """The (unprepared) builder of synthetic segmentation dataset ``name``."""
    if name not in SEG_BUILDERS:
        raise ValueError(f"unknown segmentation dataset '{name}' (known: {', '.join(SEG_BUILDERS)})")
    return datasets_lib.make_builder(name, path, data_dir, params)


_LOCK = threading.RLock()
_CACHE: dict[tuple, object] = {}


#: TFDS segmentation datasets read by name (users with network access / manual downloads): image and
#: label feature names, a label-id -> train-id table (255 = ignore) and the class names.
CITYSCAPES_CLASSES = (
    'road',
    'sidewalk',
    'building',
    'wall',
    'fence',
    'pole',
    'traffic light',
    'traffic sign',
    'vegetation',
    'terrain',
    'sky',
    'person',
    'rider',
    'car',
    'truck',
    'bus',
    'train',
    'motorcycle',
    'bicycle',
)
# Cityscapes label ids 0..33 -> the 19 evaluated train ids (cityscapesScripts' labels.py), others ignored.
_CITYSCAPES_IDS = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
CITYSCAPES_TRAIN_IDS = np.full(256, IGNORE_LABEL, np.uint8)
for _k, _v in _CITYSCAPES_IDS.items():
    CITYSCAPES_TRAIN_IDS[_k] = _v
VOC_TRAIN_IDS = np.arange(256, dtype=np.uint8)  # 0..20 are the classes, 255 the ignored border
VOC_TRAIN_IDS[len(voc_seg.CLASSES) : IGNORE_LABEL] = IGNORE_LABEL
TFDS_LAYOUTS = {
    'cityscapes': dict(
        image='image_left', label='segmentation_label', table=CITYSCAPES_TRAIN_IDS, classes=CITYSCAPES_CLASSES
    ),
    'voc_seg': dict(image='image', label='segmentation', table=VOC_TRAIN_IDS, classes=voc_seg.CLASSES),
}


def tfds_layout(name: str) -> dict | None:
    """The layout of TFDS segmentation dataset ``name`` (``cityscapes``, ``cityscapes/semantic_segmentation``)."""
    return TFDS_LAYOUTS.get(name.split('/')[0].split(':')[0])


def get_seg_builder(data_cfg, seg_cfg=None):
    """The prepared builder for ``config.data`` / ``config.seg`` (built once, then reused): ``mnist_seg``,
    ``shapes_seg`` (generated with ``config.seg``'s settings), ``voc_seg`` or a TFDS dataset of
    :data:`TFDS_LAYOUTS` by name (prepared on first use; TFDS's need the ``prepare`` extra)."""
    name = str(datasets_lib.field(data_cfg, 'name'))
    entry = builders_lib.lookup(name)
    if entry is not None and entry.kind != 'segmentation':
        raise ValueError(
            f'data.name={name!r} holds {entry.kind} data, not segmentation masks '
            f'(segmentation datasets: {", ".join(segmentation_names())})'
        )
    if entry is None and tfds_layout(name) is None:
        hint = (
            " (TFDS's 'voc' holds boxes only: for VOC's masks use data.name='voc_seg')"
            if name.startswith('voc')
            else ''
        )
        raise ValueError(
            f'unknown segmentation dataset data.name={name!r}{hint}; known: {", ".join(segmentation_names())}'
        )
    data_dir = datasets_lib.resolve_data_dir(data_cfg)
    params = params_from_config(seg_cfg) if name in SEG_BUILDERS else None
    path = datasets_lib.source_path(data_cfg)
    key = (name, path, data_dir, params)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = datasets_lib.prepare(name, path, data_dir, params)
        return _CACHE[key]


def segmentation_names() -> tuple[str, ...]:
    """The ``data.name`` values the segmentation task reads."""
    return builders_lib.names('segmentation') + tuple(TFDS_LAYOUTS.keys() - set(builders_lib.names()))


@dataclasses.dataclass(frozen=True)
class SegInfo:
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    num_examples: dict[str, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


class SegSplit:
    """A whole split in memory: uint8 images [N, S, S, C], labels uint8 [N, S, S], instances."""

    def __init__(self, builder, split: str):
        src = builder.as_data_source(split)
        recs = src.__getitems__(list(range(len(src))))
        self.images = np.stack([np.asarray(r['image'], np.uint8) for r in recs])
        self.labels = np.stack([np.asarray(r['segmentation'], np.uint8) for r in recs])
        self.instances = np.stack([np.asarray(r['instances'], np.uint8) for r in recs])

    def __len__(self) -> int:
        return len(self.images)


class TfdsSegSplit:
    """A TFDS segmentation split read lazily (``images`` / ``labels`` indexed by example index arrays):
    images resized bilinearly and labels by nearest neighbour to ``size`` x ``size``, label ids mapped
    to train ids by the layout's table (unlisted ids -> the ignore label). Decoded with NumPy/PIL/OpenCV
    (no TensorFlow)."""

    def __init__(self, builder, split: str, size: int, layout: dict):
        self.source = builder.as_data_source(split)
        self.size, self.layout = int(size), layout
        self._key, self._records = None, None
        self.images, self.labels = _LazySegField(self, 0), _LazySegField(self, 1)

    def __len__(self) -> int:
        return len(self.source)

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        from PIL import Image  # pylint: disable=g-import-not-at-top

        rec = self.source[int(index)]
        image = np.asarray(rec[self.layout['image']], np.uint8)
        label = np.asarray(rec[self.layout['label']], np.uint8).reshape(image.shape[:2])
        s = self.size
        if image.shape[:2] != (s, s):
            image = np.stack(
                [
                    np.asarray(Image.fromarray(image[..., c]).resize((s, s), Image.BILINEAR))
                    for c in range(image.shape[-1])
                ],
                -1,
            )
            label = np.asarray(Image.fromarray(label).resize((s, s), Image.NEAREST))
        return image.astype(np.uint8), self.layout['table'][label]

    def records(self, indices) -> list[tuple[np.ndarray, np.ndarray]]:
        key = tuple(int(i) for i in np.asarray(indices).ravel())
        if key != self._key:
            self._key, self._records = key, [self.example(i) for i in key]
        return self._records


class _LazySegField:
    def __init__(self, split: TfdsSegSplit, which: int):
        self.split, self.which = split, which

    def __getitem__(self, indices) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.nonzero(idx)[0]
        recs = self.split.records(idx.reshape(-1))
        return np.stack([r[self.which] for r in recs]).reshape(*idx.shape, *recs[0][self.which].shape)

    @property
    def shape(self) -> tuple[int, ...]:
        image, label = self.split.records([0])[0]
        return (len(self.split),) + (image if self.which == 0 else label).shape


_SPLITS: dict[tuple, SegSplit] = {}


def get_split(builder, split: str, seg_cfg=None, key_name: str = 'split'):
    """In memory for the synthetic datasets (:class:`SegSplit`); lazily for the others
    (:class:`TfdsSegSplit`, resized to ``seg.canvas_size``). ``key_name``: the config key of ``split``
    (for the error of a bad one)."""
    layout = None if isinstance(builder, (MnistSeg, ShapesSeg)) else tfds_layout(builder.info.name)
    key = (str(builder.data_path), split)
    if layout is not None:
        key += (params_from_config(seg_cfg).canvas_size,)
    with _LOCK:
        if key not in _SPLITS:
            datasets_lib.num_examples(builder, split, key_name)  # a one-line error for a bad split
            if layout is None:
                _SPLITS[key] = SegSplit(builder, split)
            else:
                _SPLITS[key] = TfdsSegSplit(builder, split, params_from_config(seg_cfg).canvas_size, layout)
        return _SPLITS[key]


def _split_counts(builder, data_cfg) -> dict[str, int]:
    """Examples per split, plus the configured train/eval splits (slices such as 'train[:90%]')."""
    counts = {k: int(v.num_examples) for k, v in builder.info.splits.items()}
    for key in ('train_split', 'eval_split'):
        split = str(datasets_lib.field(data_cfg, key))
        counts[split] = datasets_lib.num_examples(builder, split, f'data.{key}')
    return counts


def get_seg_info(data_cfg, seg_cfg=None) -> SegInfo:
    builder = get_seg_builder(data_cfg, seg_cfg)
    layout = None if isinstance(builder, (MnistSeg, ShapesSeg)) else tfds_layout(builder.info.name)
    if layout is not None:
        s = params_from_config(seg_cfg).canvas_size
        c = int(builder.info.features[layout['image']].shape[-1] or 3)
        mode = datasets_lib.normalize_mode(datasets_lib.field(data_cfg, 'normalize'))
        if mode == 'none':
            mean, std = (0.0,) * c, (1.0,) * c
        elif c == 3:  # a photo dataset: ImageNet's constants (torchvision's segmenters), 'dataset' included
            mean, std = datasets_lib.IMAGENET_MEAN, datasets_lib.IMAGENET_STD
        else:
            mean, std = (0.5,) * c, (0.25,) * c
        return SegInfo(
            name=builder.info.full_name,
            num_classes=len(layout['classes']),
            class_names=tuple(layout['classes']),
            image_shape=(s, s, c),
            num_examples=_split_counts(builder, data_cfg),
            mean=mean,
            std=std,
        )
    train = get_split(builder, str(datasets_lib.field(data_cfg, 'train_split')), seg_cfg, 'data.train_split')
    mode = datasets_lib.normalize_mode(datasets_lib.field(data_cfg, 'normalize'))
    c = train.images.shape[-1]
    if mode == 'dataset':
        x = train.images.reshape(-1, c).astype(np.float64) / 255.0
        mean, std = tuple(x.mean(0).tolist()), tuple(max(s, 1e-6) for s in x.std(0).tolist())
    elif mode == 'imagenet':
        mean, std = datasets_lib.imagenet_constants(c)
    else:
        mean, std = (0.0,) * c, (1.0,) * c
    names = tuple(builder.info.metadata['class_names'])
    return SegInfo(
        name=f'{builder.name}/{builder.builder_config.name}',
        num_classes=len(names),
        class_names=names,
        image_shape=tuple(int(d) for d in train.images.shape[1:]),
        num_examples=_split_counts(builder, data_cfg),
        mean=mean,
        std=std,
    )


# ---------------------------------------------------------------------------
# Pipelines.


def joint_crop_flip(
    images: np.ndarray, labels: np.ndarray, u: np.ndarray, crop_padding: int, flip: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Pads (image 0, label ``IGNORE_LABEL``) by ``crop_padding``, crops back at the offsets drawn by
    ``u[:, 0:2]`` and flips horizontally where ``u[:, 2] < 0.5``, identically for image and label."""
    b, h, w = labels.shape
    out_x, out_y = images.copy(), labels.copy()
    if crop_padding:
        p = int(crop_padding)
        px = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        py = np.pad(labels, ((0, 0), (p, p), (p, p)), constant_values=IGNORE_LABEL)
        oy = np.minimum((u[:, 0] * (2 * p + 1)).astype(int), 2 * p)
        ox = np.minimum((u[:, 1] * (2 * p + 1)).astype(int), 2 * p)
        for i in range(b):
            out_x[i] = px[i, oy[i] : oy[i] + h, ox[i] : ox[i] + w]
            out_y[i] = py[i, oy[i] : oy[i] + h, ox[i] : ox[i] + w]
    if flip:
        f = u[:, 2] < 0.5
        out_x[f] = out_x[f, :, ::-1]
        out_y[f] = out_y[f, :, ::-1]
    return out_x, out_y


def _to_float(images: np.ndarray, info: SegInfo) -> np.ndarray:
    x = images.astype(np.float32) * np.float32(1 / 255)
    return augment_lib.Normalizer(info.mean, info.std, x.shape[2])(x)


class _SegTrainBatch:
    def __init__(self, data: SegSplit, info: SegInfo, seed: int, global_batch: int, lo: int, hi: int, aug):
        self._data, self._info = data, info
        self._epoch_len = len(data) // global_batch * global_batch
        self._seed = int(seed) % 2**64
        self._global_batch, self._lo, self._hi = global_batch, lo, hi
        self._crop, self._flip = aug

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        pos = np.arange(
            step * self._global_batch + self._lo, step * self._global_batch + self._hi, dtype=np.int64
        )
        epochs, slots = np.divmod(pos, self._epoch_len)
        idx = np.empty_like(pos)
        for e in np.unique(epochs):
            ss = np.random.SeedSequence([self._seed, _SHUFFLE_TAG, int(e)])
            idx[epochs == e] = np.random.default_rng(ss).permutation(len(self._data))[slots[epochs == e]]
        u = augment_lib.uniform_hash(self._seed ^ _AUG_TAG, pos, 3)
        x, y = joint_crop_flip(self._data.images[idx], self._data.labels[idx], u, self._crop, self._flip)
        return {'image': _to_float(x, self._info), 'label': y.astype(np.int32)}


def make_train_iterator(
    data_cfg, seg_cfg, *, seed: int, global_batch_size: int, process_index=0, process_count=1
):
    """Infinite shuffled batches {'image': float32 [L, S, S, C], 'label': int32 [L, S, S]} (checkpointable)."""
    local = global_batch_size // process_count
    builder = get_seg_builder(data_cfg, seg_cfg)
    data = get_split(builder, str(datasets_lib.field(data_cfg, 'train_split')), seg_cfg, 'data.train_split')
    if len(data) < global_batch_size:
        raise ValueError(f'global_batch_size {global_batch_size} exceeds the {len(data)} train examples')
    aug = (
        int(datasets_lib.field(data_cfg, 'augment.crop_padding')),
        bool(datasets_lib.field(data_cfg, 'augment.flip')),
    )
    s = int(datasets_lib.field(data_cfg, 'shuffle_seed'))
    fn = _SegTrainBatch(
        data,
        get_seg_info(data_cfg, seg_cfg),
        seed if s < 0 else s,
        global_batch_size,
        process_index * local,
        (process_index + 1) * local,
        aug,
    )
    steps = len(data) // global_batch_size
    ds = grain.MapDataset.range(steps).repeat().map_with_index(lambda step, _: fn(step))
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def make_eval_iterator(
    data_cfg, seg_cfg, split: str, *, global_batch_size: int, process_index=0, process_count=1
):
    """One ordered pass: {'image', 'label' (padded examples all ``IGNORE_LABEL``), 'mask' bool [L]}."""
    local = global_batch_size // process_count
    builder = get_seg_builder(data_cfg, seg_cfg)
    data = get_split(builder, str(split), seg_cfg, datasets_lib.split_key(data_cfg, str(split)))
    info = get_seg_info(data_cfg, seg_cfg)
    lo = process_index * local

    def fn(step: int) -> dict[str, np.ndarray]:
        pos = np.arange(step * global_batch_size + lo, step * global_batch_size + lo + local, dtype=np.int64)
        mask = pos < len(data)
        images = np.zeros((local,) + data.images.shape[1:], np.uint8)
        labels = np.full((local,) + data.labels.shape[1:], IGNORE_LABEL, np.int32)
        images[mask], labels[mask] = data.images[pos[mask]], data.labels[pos[mask]]
        x = _to_float(images, info)
        x[~mask] = 0.0
        return {'image': x, 'label': labels, 'mask': mask}

    steps = -(-len(data) // global_batch_size)
    ds = grain.MapDataset.range(steps).map(fn)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def default_mnist_path() -> str:
    """The MNIST-10k folder ``mnist_seg`` / ``mnist_det`` read when ``data.path`` is empty:
    ``$RESEARCH_DATA_DIR/mnist10k-png.tgz``, expanded."""
    return roots.expand(roots.MNIST10K_FOLDER)
