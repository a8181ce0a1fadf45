"""Synthetic segmentation datasets generated offline (TFDS builders, array_record, ``Tensor`` features, no
TensorFlow): ``mnist_seg`` and ``shapes_seg``, plus the canvas generators ``mnist_det`` shares.

- ``mnist_seg``: MNIST-10k digits (the ``<split>/<digit>/<png>`` tgz or folder of ``data.path``,
  default ``$RESEARCH_DATA_DIR/mnist10k-png.tgz``) pasted on ``canvas x canvas`` black canvases,
  ``min_objects..max_objects`` digits each with random scale and position; later digits occlude
  earlier ones. ``segmentation`` is 0 = background, 1..10 = digits 0..9 (a digit's pixels are its
  stroke, thresholded at ``STROKE_THRESHOLD``); ``instances`` is 0 = none, k = the k-th pasted digit
  (visible stroke pixels). Train canvases use the folder's train digits, test canvases its test digits.
- ``shapes_seg``: circles (1), squares (2) and triangles (3) on textured RGB backgrounds.

Every example is a pure function of (generation seed, split, index). The pipelines that read them
are ``research.segmentation.data``'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading

import numpy as np
import tensorflow_datasets as tfds

from research.data import augment as augment_lib
from research.data import roots
from research.data.builders import image_folder as image_folder_lib
from research.data.builders import registry
from research.data.builders._base import OfflineBuilder

STROKE_THRESHOLD = 128
MNIST_CLASSES = ('background',) + tuple(f'digit_{i}' for i in range(10))
SHAPES_CLASSES = ('background', 'circle', 'square', 'triangle')
_SPLIT_TAG = {'train': 1, 'test': 2}


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


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
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
    digits: np.ndarray,
    digit_labels: np.ndarray,
    rng: np.random.Generator,
    *,
    canvas_size: int,
    min_objects: int,
    max_objects: int,
    min_scale: float,
    max_scale: float,
    max_iou: float | None = None,
    max_tries: int = 20,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        digits,
        digit_labels,
        rng,
        canvas_size=p.canvas_size,
        min_objects=p.min_objects,
        max_objects=p.max_objects,
        min_scale=p.min_scale,
        max_scale=p.max_scale,
    )
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
        return make_mnist_canvas(images, labels, example_rng(self.params.seed, split, index), self.params)


class ShapesSeg(_SegBuilder, skip_registration=True):
    """Circles, squares and triangles on textured backgrounds (synthetic)."""

    name = 'shapes_seg'
    CLASSES = SHAPES_CLASSES
    CHANNELS = 3

    def __init__(self, *, params: SegParams = SegParams(), **kwargs):
        kwargs.setdefault('file_format', 'array_record')
        super().__init__(config=SegConfig(params=params), **kwargs)

    def example(self, split: str, index: int) -> dict[str, np.ndarray]:
        return make_shapes_canvas(example_rng(self.params.seed, split, index), self.params)


def _make_mnist_seg(path: str, data_dir: str, params: SegParams | None = None, config=None) -> MnistSeg:
    del config
    return MnistSeg(path=path, params=params or SegParams(), data_dir=data_dir)


def _make_shapes_seg(path: str, data_dir: str, params: SegParams | None = None, config=None) -> ShapesSeg:
    del path, config  # generated from the parameters alone
    return ShapesSeg(params=params or SegParams(), data_dir=data_dir)


registry.register(
    'mnist_seg',
    _make_mnist_seg,
    kind='segmentation',
    uses_path=True,
    default_path=roots.MNIST10K_FOLDER,
    description='MNIST digits on canvases: per-pixel digit classes and instances',
)
registry.register(
    'shapes_seg',
    _make_shapes_seg,
    kind='segmentation',
    description='textured circles, squares and triangles: per-pixel classes and instances',
)
