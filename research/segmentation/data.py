"""Offline segmentation datasets (TFDS builders, no TensorFlow) and their grain pipelines.

Builders (array_record, ``Tensor`` features):

- ``mnist_seg``: MNIST-10k digits (the ``<split>/<digit>/<png>`` tgz or folder) pasted on
  ``canvas x canvas`` black canvases, ``min_objects..max_objects`` digits each with random scale
  and position; later digits occlude earlier ones. ``segmentation`` is 0 = background,
  1..10 = digits 0..9 (a digit's pixels are its stroke, thresholded at ``STROKE_THRESHOLD``);
  ``instances`` is 0 = none, k = the k-th pasted digit (visible stroke pixels). Train canvases
  use the folder's train digits, test canvases its test digits.
- ``shapes_seg``: circles (1), squares (2) and triangles (3) on textured RGB backgrounds.

Every example is a pure function of (generation seed, split, index). The pipelines mirror
``research.data.pipeline``: an infinite train stream with joint image/label augmentation
(pad-and-random-crop, horizontal flip; padded label pixels are ``IGNORE_LABEL``) determined by
(seed, stream position), and a one-pass eval stream whose final batch is padded with a mask.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading

import grain
import numpy as np
import tensorflow_datasets as tfds

from research.data import augment as augment_lib
from research.data import datasets as datasets_lib
from research.data.builders import image_folder as image_folder_lib
from research.data.builders._base import OfflineBuilder

IGNORE_LABEL = 255
STROKE_THRESHOLD = 128
SEG_BUILDERS = ('mnist_seg', 'shapes_seg')
MNIST_CLASSES = ('background',) + tuple(f'digit_{i}' for i in range(10))
SHAPES_CLASSES = ('background', 'circle', 'square', 'triangle')
_SPLIT_TAG = {'train': 1, 'test': 2}
_AUG_TAG = 0x5345474155
_SHUFFLE_TAG = 0x5345475348


@dataclasses.dataclass(frozen=True)
class SegParams:
    """What a synthetic segmentation dataset is generated from (part of its identity)."""

    canvas_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    min_scale: float = 0.6  # digit / shape size relative to 28 px (mnist) or canvas/3 (shapes)
    max_scale: float = 1.4
    num_train: int = 8000
    num_test: int = 2000
    seed: int = 0

    def validate(self) -> None:
        if self.canvas_size < 16:
            raise ValueError(f'seg.canvas_size must be >= 16, got {self.canvas_size}')
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f'need 1 <= seg.min_objects <= seg.max_objects, got {self.min_objects}, {self.max_objects}'
            )
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(
                f'need 0 < seg.min_scale <= seg.max_scale, got {self.min_scale}, {self.max_scale}'
            )
        if self.num_train < 1 or self.num_test < 1:
            raise ValueError('seg.num_train and seg.num_test must be >= 1')


def params_from_config(seg_cfg) -> SegParams:
    """``SegParams`` from a ``config.seg`` section (missing keys keep their defaults)."""
    kw = {}
    names = dict(data_seed='seed', canvas_size='canvas_size', min_objects='min_objects',
                 max_objects='max_objects', min_scale='min_scale', max_scale='max_scale',
                 num_train='num_train', num_test='num_test')  # fmt: skip
    for key, fieldname in names.items():
        if seg_cfg is not None and key in seg_cfg:
            kw[fieldname] = type(getattr(SegParams, fieldname))(seg_cfg[key])
    p = SegParams(**kw)
    p.validate()
    return p


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_TAG.get(split, 3), int(index)]))


# ---------------------------------------------------------------------------
# Generators (pure numpy; also used directly by tests).


def load_mnist_digits(source: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (uint8 [N, 28, 28] images, int32 [N] digit labels)}`` of an MNIST folder/tgz, sorted by path."""
    scan = image_folder_lib.scan_source(image_folder_lib.resolve_source(source))
    out = {}
    for split, entries in scan.files.items():
        entries = sorted(entries, key=lambda e: e[0])
        images = np.stack([image_folder_lib.decode_image(ref, 1)[..., 0] for _, _, ref in entries])
        labels = np.asarray([int(scan.class_names[lab]) for _, lab, _ in entries], np.int32)
        out[split] = (images, labels)
    return out


def _resize_gray(img: np.ndarray, size: int) -> np.ndarray:
    return augment_lib.resize(img[None, :, :, None].astype(np.float32), size, size)[0, :, :, 0]


def paste_digits(
    digits: np.ndarray, digit_labels: np.ndarray, rng: np.random.Generator, *, canvas_size: int,
    min_objects: int, max_objects: int, min_scale: float, max_scale: float,
    max_iou: float | None = None, max_tries: int = 20,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Pastes ``min_objects..max_objects`` random digits on a black ``canvas_size`` square canvas.

    Returns (float32 [S, S] image in 0..255, uint8 [S, S] instances: k = the k-th digit's visible
    stroke (>= ``STROKE_THRESHOLD``), int32 [count] digit labels of digits 1..count). Later digits
    occlude earlier ones. ``max_iou`` (None: any overlap) redraws a digit's position, up to
    ``max_tries`` times, while its paste window overlaps an earlier one by more than that IoU.
    Shared by ``mnist_seg`` and ``research.detection.data``'s ``mnist_det``.
    """
    s = canvas_size
    image = np.zeros((s, s), np.float32)
    inst = np.zeros((s, s), np.uint8)
    count = int(rng.integers(min_objects, max_objects + 1))
    labels, windows = [], []
    for k in range(1, count + 1):
        i = int(rng.integers(len(digits)))
        size = int(np.clip(round(28 * rng.uniform(min_scale, max_scale)), 8, s))
        d = np.clip(_resize_gray(digits[i], size), 0, 255)
        y, x = (int(v) for v in rng.integers(0, s - size + 1, size=2))
        if max_iou is not None:
            for _ in range(max_tries):
                if all(_window_iou((y, x, size), w) <= max_iou for w in windows):
                    break
                y, x = (int(v) for v in rng.integers(0, s - size + 1, size=2))
            windows.append((y, x, size))
        stroke = d >= STROKE_THRESHOLD
        win = (slice(y, y + size), slice(x, x + size))
        image[win] = np.maximum(image[win] * (d < STROKE_THRESHOLD), d)  # later digits occlude
        inst[win][stroke] = k
        labels.append(int(digit_labels[i]))
    return image, inst, np.asarray(labels, np.int32)


def _window_iou(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """IoU of two square windows given as (y, x, size)."""
    iy = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ix = max(0, min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1]))
    inter = iy * ix
    return inter / (a[2] ** 2 + b[2] ** 2 - inter)


def make_mnist_canvas(
    digits: np.ndarray, digit_labels: np.ndarray, rng: np.random.Generator, p: SegParams
) -> dict[str, np.ndarray]:
    """One canvas: ``image`` uint8 [S, S, 1], ``segmentation`` uint8 [S, S], ``instances`` uint8 [S, S]."""
    image, inst, labels = paste_digits(
        digits, digit_labels, rng, canvas_size=p.canvas_size, min_objects=p.min_objects,
        max_objects=p.max_objects, min_scale=p.min_scale, max_scale=p.max_scale,
    )  # fmt: skip
    seg = np.where(inst > 0, np.concatenate([[0], labels + 1])[inst], 0).astype(np.uint8)
    return {'image': np.round(image).astype(np.uint8)[..., None], 'segmentation': seg, 'instances': inst}


def _texture(rng: np.random.Generator, s: int) -> np.ndarray:
    """Random RGB texture in [0, 1]: oriented stripes of a random colour pair plus noise."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(0.15, 0.8), rng.uniform(0, 2 * np.pi)
    wave = 0.5 + 0.5 * np.sin(freq * (np.cos(theta) * xx + np.sin(theta) * yy) + phase)
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    tex = c0 + (c1 - c0) * wave[..., None]
    return np.clip(tex + rng.normal(0, 0.05, (s, s, 3)), 0, 1).astype(np.float32)


def make_shapes_canvas(rng: np.random.Generator, p: SegParams) -> dict[str, np.ndarray]:
    """Circles (1), squares (2), triangles (3), each with its own texture, on a textured background."""
    s = p.canvas_size
    image = _texture(rng, s)
    seg = np.zeros((s, s), np.uint8)
    inst = np.zeros((s, s), np.uint8)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    count = int(rng.integers(p.min_objects, p.max_objects + 1))
    for k in range(1, count + 1):
        cls = int(rng.integers(1, 4))
        r = float(np.clip(s / 6 * rng.uniform(p.min_scale, p.max_scale), 3, s / 2))
        cy, cx = rng.uniform(r, s - r, size=2)
        if cls == 1:
            region = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        elif cls == 2:
            region = (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
        else:  # upward triangle: apex at the top, base at the bottom
            top, bottom = cy - r, cy + r * 0.8
            half = (yy - top) / (bottom - top) * r
            region = (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half)
        if not region.any():
            continue
        image[region] = _texture(rng, s)[region]
        seg[region] = cls
        inst[region] = k
    return {'image': np.round(image * 255).astype(np.uint8), 'segmentation': seg, 'instances': inst}


# ---------------------------------------------------------------------------
# TFDS builders.


class SegConfig(tfds.core.BuilderConfig):
    """Builder config: generation parameters (and the digit source for mnist_seg) named by a hash."""

    def __init__(self, *, params: SegParams, source: str = '', **kwargs):
        blob = json.dumps({'params': dataclasses.asdict(params), 'source': source}, sort_keys=True)
        digest = hashlib.sha1(blob.encode()).hexdigest()[:10]
        super().__init__(name=f'c{params.canvas_size}_n{params.num_train}_{digest}', **kwargs)
        self.params, self.source = params, source


class _SegBuilder(OfflineBuilder, skip_registration=True):
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}
    CLASSES: tuple[str, ...] = ()
    CHANNELS = 1

    @property
    def params(self) -> SegParams:
        return self.builder_config.params

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.params.canvas_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    'image': tfds.features.Tensor(
                        shape=(s, s, self.CHANNELS), dtype=np.uint8, encoding='bytes'
                    ),
                    'segmentation': tfds.features.Tensor(shape=(s, s), dtype=np.uint8, encoding='bytes'),
                    'instances': tfds.features.Tensor(shape=(s, s), dtype=np.uint8, encoding='bytes'),
                }
            ),
            disable_shuffling=True,  # record i of a split is example i (generated from its index)
            metadata=tfds.core.MetadataDict(
                class_names=list(self.CLASSES),
                params=dataclasses.asdict(self.params),
                source=self.builder_config.source,
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            'train': self._generate_examples('train', self.params.num_train),
            'test': self._generate_examples('test', self.params.num_test),
        }

    def _generate_examples(self, split: str, n: int):
        for i in range(n):
            yield i, self.example(split, i)


class MnistSeg(_SegBuilder, skip_registration=True):
    """MNIST-10k digits on larger canvases: per-pixel digit classes (0 = background) and instances."""

    name = 'mnist_seg'
    CLASSES = MNIST_CLASSES
    CHANNELS = 1

    def __init__(self, *, path: str, params: SegParams = SegParams(), **kwargs):
        source = image_folder_lib.resolve_source(path)
        kwargs.setdefault('file_format', 'array_record')
        self._digits = None
        self._digits_lock = threading.Lock()
        super().__init__(config=SegConfig(params=params, source=source), **kwargs)

    def digit_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of the source's ``split`` digits (loaded once, shared by subclasses)."""
        with self._digits_lock:
            if self._digits is None:
                self._digits = load_mnist_digits(self.builder_config.source)
        if split not in self._digits:
            raise ValueError(f"the digit source has no '{split}' split (has {sorted(self._digits)})")
        return self._digits[split]

    def example(self, split: str, index: int) -> dict[str, np.ndarray]:
        images, labels = self.digit_split(split)
        return make_mnist_canvas(images, labels, _rng(self.params.seed, split, index), self.params)


class ShapesSeg(_SegBuilder, skip_registration=True):
    """Circles, squares and triangles on textured backgrounds (synthetic)."""

    name = 'shapes_seg'
    CLASSES = SHAPES_CLASSES
    CHANNELS = 3

    def __init__(self, *, params: SegParams = SegParams(), **kwargs):
        kwargs.setdefault('file_format', 'array_record')
        super().__init__(config=SegConfig(params=params), **kwargs)

    def example(self, split: str, index: int) -> dict[str, np.ndarray]:
        return make_shapes_canvas(_rng(self.params.seed, split, index), self.params)


def make_seg_builder(name: str, path: str, data_dir: str, params: SegParams = SegParams()):
    """The (unprepared) builder of segmentation dataset ``name``."""
    if name == 'mnist_seg':
        return MnistSeg(path=path, params=params, data_dir=data_dir)
    if name == 'shapes_seg':
        return ShapesSeg(params=params, data_dir=data_dir)
    raise ValueError(f"unknown segmentation dataset '{name}' (known: {', '.join(SEG_BUILDERS)})")


_LOCK = threading.RLock()
_CACHE: dict[tuple, object] = {}


#: TFDS segmentation datasets read by name (users with network access / manual downloads): image and
#: label feature names, a label-id -> train-id table (255 = ignore) and the class names.
CITYSCAPES_CLASSES = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign', 'vegetation',
    'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle',
)  # fmt: skip
# Cityscapes label ids 0..33 -> the 19 evaluated train ids (cityscapesScripts' labels.py), others ignored.
_CITYSCAPES_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                   26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
CITYSCAPES_TRAIN_IDS = np.full(256, IGNORE_LABEL, np.uint8)
for _k, _v in _CITYSCAPES_IDS.items():
    CITYSCAPES_TRAIN_IDS[_k] = _v
TFDS_LAYOUTS = {
    'cityscapes': dict(image='image_left', label='segmentation_label', table=CITYSCAPES_TRAIN_IDS,
                       classes=CITYSCAPES_CLASSES),
}  # fmt: skip


def tfds_layout(name: str) -> dict | None:
    """The layout of TFDS segmentation dataset ``name`` (``cityscapes``, ``cityscapes/semantic_segmentation``)."""
    return TFDS_LAYOUTS.get(name.split('/')[0].split(':')[0])


def get_seg_builder(data_cfg, seg_cfg=None):
    """The prepared builder for ``config.data`` / ``config.seg`` (built once, then reused): ``mnist_seg``,
    ``shapes_seg``, or a TFDS dataset of :data:`TFDS_LAYOUTS` by name (prepared by TFDS on first use)."""
    name = str(datasets_lib.field(data_cfg, 'name'))
    params = params_from_config(seg_cfg)
    data_dir = datasets_lib.resolve_data_dir(data_cfg)
    if name not in SEG_BUILDERS and tfds_layout(name) is not None:
        key = (name, data_dir)
        with _LOCK:
            if key not in _CACHE:
                builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
                if not tfds.core.dataset_info.dataset_info_path(builder.data_path).exists():
                    builder.download_and_prepare(file_format='array_record')
                    builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
                _CACHE[key] = builder
            return _CACHE[key]
    if name not in SEG_BUILDERS:
        raise ValueError(
            f"unknown segmentation dataset '{name}' (offline: {', '.join(SEG_BUILDERS)}; TFDS by name: "
            f"{', '.join(TFDS_LAYOUTS)}; TFDS's 'voc' holds boxes only: use it with task='detection')"
        )
    path = str(datasets_lib.field(data_cfg, 'path')) if name == 'mnist_seg' else ''
    key = (name, path, data_dir, params)
    with _LOCK:
        if key not in _CACHE:
            builder = make_seg_builder(name, path, data_dir, params)
            if not tfds.core.dataset_info.dataset_info_path(builder.data_path).exists():
                with datasets_lib._no_progress_bars():  # pylint: disable=protected-access
                    builder.download_and_prepare(file_format='array_record')
                builder = make_seg_builder(name, path, data_dir, params)
            _CACHE[key] = builder
        return _CACHE[key]


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
    to train ids by the layout's table (unlisted ids -> the ignore label). Decoding ``Image`` features
    needs TensorFlow (the user's TFDS install)."""

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
                [np.asarray(Image.fromarray(image[..., c]).resize((s, s), Image.BILINEAR)) for c in range(image.shape[-1])],
                -1,
            )  # fmt: skip
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


def get_split(builder, split: str, seg_cfg=None):
    """In memory for the offline datasets (:class:`SegSplit`); lazily for a TFDS dataset
    (:class:`TfdsSegSplit`, resized to ``seg.canvas_size``)."""
    layout = None if isinstance(builder, (MnistSeg, ShapesSeg)) else tfds_layout(builder.info.name)
    key = (str(builder.data_path), split)
    if layout is not None:
        key += (params_from_config(seg_cfg).canvas_size,)
    with _LOCK:
        if key not in _SPLITS:
            if split not in builder.info.splits:
                raise ValueError(
                    f"unknown split '{split}' of {builder.name}; available: {sorted(builder.info.splits)}"
                )
            if layout is None:
                _SPLITS[key] = SegSplit(builder, split)
            else:
                _SPLITS[key] = TfdsSegSplit(builder, split, params_from_config(seg_cfg).canvas_size, layout)
        return _SPLITS[key]


def get_seg_info(data_cfg, seg_cfg=None) -> SegInfo:
    builder = get_seg_builder(data_cfg, seg_cfg)
    layout = None if isinstance(builder, (MnistSeg, ShapesSeg)) else tfds_layout(builder.info.name)
    if layout is not None:
        s = params_from_config(seg_cfg).canvas_size
        c = int(builder.info.features[layout['image']].shape[-1] or 3)
        mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if c == 3 else ((0.5,) * c, (0.25,) * c)
        if not datasets_lib.field(data_cfg, 'normalize'):
            mean, std = (0.0,) * c, (1.0,) * c
        return SegInfo(
            name=builder.info.full_name, num_classes=len(layout['classes']), class_names=tuple(layout['classes']),
            image_shape=(s, s, c), num_examples={k: int(v.num_examples) for k, v in builder.info.splits.items()},
            mean=mean, std=std,
        )  # fmt: skip
    train = get_split(builder, str(datasets_lib.field(data_cfg, 'train_split')))
    if datasets_lib.field(data_cfg, 'normalize'):
        x = train.images.reshape(-1, train.images.shape[-1]).astype(np.float64) / 255.0
        mean, std = tuple(x.mean(0).tolist()), tuple(max(s, 1e-6) for s in x.std(0).tolist())
    else:
        c = train.images.shape[-1]
        mean, std = (0.0,) * c, (1.0,) * c
    names = tuple(builder.info.metadata['class_names'])
    return SegInfo(
        name=f'{builder.name}/{builder.builder_config.name}',
        num_classes=len(names),
        class_names=names,
        image_shape=tuple(int(d) for d in train.images.shape[1:]),
        num_examples={s: int(v.num_examples) for s, v in builder.info.splits.items()},
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
    data = get_split(builder, str(datasets_lib.field(data_cfg, 'train_split')), seg_cfg)
    if len(data) < global_batch_size:
        raise ValueError(f'global_batch_size {global_batch_size} exceeds the {len(data)} train examples')
    aug = (
        int(datasets_lib.field(data_cfg, 'augment.crop_padding')),
        bool(datasets_lib.field(data_cfg, 'augment.flip')),
    )
    s = int(datasets_lib.field(data_cfg, 'shuffle_seed'))
    fn = _SegTrainBatch(
        data, get_seg_info(data_cfg, seg_cfg), seed if s < 0 else s, global_batch_size,
        process_index * local, (process_index + 1) * local, aug,
    )  # fmt: skip
    steps = len(data) // global_batch_size
    ds = grain.MapDataset.range(steps).repeat().map_with_index(lambda step, _: fn(step))
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def make_eval_iterator(
    data_cfg, seg_cfg, split: str, *, global_batch_size: int, process_index=0, process_count=1
):
    """One ordered pass: {'image', 'label' (padded examples all ``IGNORE_LABEL``), 'mask' bool [L]}."""
    local = global_batch_size // process_count
    builder = get_seg_builder(data_cfg, seg_cfg)
    data = get_split(builder, str(split), seg_cfg)
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
    """``../shared/data/mnist10k-png.tgz`` beside the repository (the project's offline MNIST-10k)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        os.pardir, 'shared', 'data', 'mnist10k-png.tgz')  # fmt: skip
