"""Datasets by ``data.name``: config -> prepared TFDS builder -> split arrays + info.

``data.name`` is a builder of this project (``research.data.builders``, registered by name:
``digits``, ``image_folder``, ``mnist_seg``, ``shapes_seg``, ``mnist_det``, ``voc_seg``) or any TFDS
catalog name (``research.data.tfds_catalog``: prepared once with
``download_and_prepare(file_format='array_record')``, which needs network or a manual download, and
the ``prepare`` extra). Splits are read with ``builder.as_data_source(split)`` (numpy decode, no
TensorFlow); any split TFDS reads (``train``, ``train[:90%]``, ``train[:200]``, ``train+test``) works.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import threading

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from research import storage
from research.data import augment as augment_lib
from research.data import builders as builders_lib
from research.data import tfds_catalog, transforms
from research.data.builders import image_folder as image_folder_lib

#: This project's own builders, by name (``research.data.builders``); other names are TFDS's.
OFFLINE_BUILDERS = builders_lib.names()

# Splits whose (resized) uint8 images fit in this many bytes are loaded into
# memory once per process; larger ones are decoded lazily per batch.
MAX_IN_MEMORY_BYTES = 2 * 1024**3
# Worker processes (data.num_workers) get in-memory splits up to this size pickled; bigger ones
# read their examples from the data source (the same values, decoded per batch).
MAX_PICKLED_BYTES = 256 * 1024**2
# Normalisation statistics of splits read lazily use this many examples
# (evenly strided; TFDS shuffles examples at build time).
MAX_STATS_EXAMPLES_LAZY = 20_000
_LOAD_CHUNK = 2048


def data_config_defaults() -> ml_collections.ConfigDict:
    """Default data config.

    name: 'digits' | 'image_folder' | any TFDS name; path: folder or .tgz for
    image_folder; data_dir: TFDS data dir ('' = $TFDS_DATA_DIR or
    ~/tensorflow_datasets); train_split / eval_split; image_size: 0 = native,
    N = bilinear resize to NxN; normalize: per-channel train mean/std (else
    x/255; see also below); augment.{crop_padding, flip, rotation (deg), scale, brightness}:
    0/False = off; shuffle_seed: -1 = run seed; num_threads: grain threads;
    classes: keep only these classes (names or indices, relabelled 0..k-1 in
    the given order; () = all), e.g. a source/target split for transfer learning;
    synthetic: train on one random batch made on the devices once (no input
    pipeline: the throughput baseline the pipeline is measured against; the
    dataset still gives the shapes, the classes and the evaluation);
    on_device: the pipeline ships uint8 images and each example's augmentation
    draws, and augmentation and normalisation run inside the jitted step
    (`research.data.device_augment`; classification trainer only).

    The ImageNet recipe (docs/imagenet.md; `research.data.transforms`,
    `research.data.autoaugment`, `research.data.mix`):
    normalize: also 'imagenet' (torchvision's mean/std on [0, 1] pixels) or
    'auto' (the default: the dataset's own mean/std, ImageNet's when the run
    starts from torchvision weights, see `resolve_normalize`);
    augment.random_resized_crop: Szegedy et al. 2015's crop as torchvision's
    RandomResizedCrop (area fraction augment.crop_scale, log-uniform aspect
    ratio augment.crop_ratio, 10 tries then a center crop) of the image decoded
    at full resolution, resized to image_size (bilinear, antialiased);
    eval_resize: N > 0 = evaluate on the shorter side resized to N then the
    center image_size crop (He et al. 2016: 256 -> 224), from the full-size
    image; 0 = the whole image squashed to image_size;
    augment.randaugment: 'N,M' (Cubuk et al. 2020: N ops of magnitude M of 31
    bins, torchvision's RandAugment; 'N,M,bins' for other bin counts), '' = off;
    augment.autoaugment: 'imagenet' | 'cifar10' | 'svhn' (Cubuk et al. 2019's
    policies, torchvision's AutoAugment), '' = off;
    augment.mixup / augment.cutmix: Beta(alpha, alpha) of mixup (Zhang et al.
    2018) / CutMix (Yun et al. 2019), 0 = off; with both, one of them per
    batch (CutMix with probability augment.mix_switch_prob); a batch is mixed
    with probability augment.mix_prob. Applied in the jitted step to the global
    batch (`research.data.mix.mix_batch`) with the soft-target loss
    (`research.train.losses.soft_target_cross_entropy`);
    num_workers: grain worker processes decoding batches (mp_prefetch; 0 = none,
    num_threads threads in this process); the stream is the same for any count.
    """
    return ml_collections.ConfigDict(
        {
            'name': 'digits',
            'path': '',
            'data_dir': '',
            'train_split': 'train',
            'eval_split': 'test',
            'image_size': 0,
            'normalize': ml_collections.FieldReference('auto', field_type=object),
            'eval_resize': 0,
            'augment': {
                'crop_padding': 0,
                'flip': False,
                'rotation': 0.0,
                'scale': 0.0,
                'brightness': 0.0,
                'random_resized_crop': False,
                'crop_scale': (0.08, 1.0),
                'crop_ratio': (3.0 / 4.0, 4.0 / 3.0),
                'randaugment': ml_collections.FieldReference('', field_type=object),
                'autoaugment': '',
                'mixup': 0.0,
                'cutmix': 0.0,
                'mix_prob': 1.0,
                'mix_switch_prob': 0.5,
            },
            'shuffle_seed': -1,
            'num_threads': 0,
            'num_workers': 0,
            'classes': (),
            'synthetic': False,
            'on_device': False,
        }
    )


_DEFAULTS = data_config_defaults()


def field(cfg, name: str):
    """`cfg.<name>` (dotted for nested), falling back to the default."""
    value, default = cfg, _DEFAULTS
    for part in name.split('.'):
        default = default[part]
        value = getattr(value, part, None) if value is not None else None
    return default if value is None else value


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model/trainer needs to know about the batches it will get."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, C) of the batches yielded
    num_examples: dict[str, int]  # per split
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, 0..1 scale ((0,..) if not normalize)
    std: tuple[float, ...]  # per channel ((1,..) if not normalize)


# ---------------------------------------------------------------------------
# Builders.

_LOCK = threading.RLock()
_BUILDERS: dict[tuple, tfds.core.DatasetBuilder] = {}


class _DropCustomConfigWarning(logging.Filter):
    """Silences TFDS's per-construction warning about our per-path config."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith('Using custom data configuration')


logging.getLogger('absl').addFilter(_DropCustomConfigWarning())


_no_progress_bars = tfds_catalog.no_progress_bars


def resolve_data_dir(cfg) -> str:
    """``cfg.data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets`` (absolute; a remote one,
    e.g. ``gs://bucket/tfds``, as given)."""
    d = field(cfg, 'data_dir') or os.environ.get('TFDS_DATA_DIR') or ('~/tensorflow_datasets')
    return storage.absolute(d)


def _is_prepared(builder) -> bool:
    return tfds.core.dataset_info.dataset_info_path(builder.data_path).exists()


def source_path(cfg_or_name, path='') -> str:
    """The resolved ``data.path`` of a registered builder that reads one (``''`` otherwise): the
    builder's default when ``data.path`` is empty, ``$RESEARCH_DATA_DIR`` expanded, checked to exist."""
    if isinstance(cfg_or_name, str):
        name = cfg_or_name
    else:
        name, path = str(field(cfg_or_name, 'name')), str(field(cfg_or_name, 'path'))
    entry = builders_lib.lookup(name)
    if entry is None or not entry.uses_path:
        return ''
    return image_folder_lib.resolve_source(path or entry.default_path)


def make_builder(name: str, path: str, data_dir: str, params=None):
    """The builder for ``name`` *without* preparing it (``get_builder`` prepares): a registered builder
    of ``research.data.builders`` (``path``: its resolved ``data.path``; ``params``: generation settings
    of a synthetic one), else TFDS's catalog builder (prepared already: restored from its files)."""
    entry = builders_lib.lookup(name)
    if entry is not None:
        return entry.build(name, path, data_dir, params)
    builder = tfds_catalog.prepared(name, data_dir)
    return builder if builder is not None else tfds_catalog.catalog_builder(name, data_dir)


def prepare(name: str, path: str, data_dir: str, params=None):
    """The prepared builder of ``name`` (prepared now if needed; TFDS catalog names by
    ``tfds_catalog.open_dataset``, which needs the ``prepare`` extra to build)."""
    entry = builders_lib.lookup(name)
    if entry is None:
        return tfds_catalog.open_dataset(name, data_dir)
    builder = entry.build(name, path, data_dir, params)
    if not _is_prepared(builder):
        logging.info('Preparing dataset %s in %s', name, data_dir)
        try:
            with _no_progress_bars():
                builder.download_and_prepare(file_format='array_record')
        except (ValueError, FileNotFoundError, tfds_catalog.PrepareError):
            raise
        except Exception as e:  # a download or build failure: one line, the cause chained
            first = next((line for line in str(e).splitlines() if line.strip()), '')
            raise tfds_catalog.PrepareError(
                f"preparing dataset '{name}' in {data_dir} failed: {type(e).__name__}: {first}"
            ) from e
        if isinstance(builder, image_folder_lib.ImageFolder):
            image_folder_lib.remove_stale_builds(builder)
        # A fresh builder reads back what was written (and frees the scan).
        builder = entry.build(name, path, data_dir, params)
    return builder


def get_builder(cfg) -> tfds.core.DatasetBuilder:
    """The prepared builder for `cfg` (built on first use, then reused by this process: a run reads
    its image folder as it was when the run opened it; a folder changed since its last build is
    built again by the next run, see `research.data.builders.image_folder`)."""
    name = str(field(cfg, 'name'))
    data_dir = resolve_data_dir(cfg)
    path = source_path(cfg)
    key = (name, path, data_dir)
    with _LOCK:
        if key not in _BUILDERS:
            _BUILDERS[key] = prepare(name, path, data_dir)
        return _BUILDERS[key]


def clear_caches() -> None:
    """Forgets this process's opened builders and loaded splits (the next use opens them again, as a
    new run would: an image folder changed since is then built again)."""
    with _LOCK:
        _BUILDERS.clear()
        _SPLITS.clear()


def _split_names(builder) -> list[str]:
    return sorted(builder.info.splits.keys())


def num_examples(builder, split: str, key: str = 'split') -> int:
    """Examples in `split`: any split TFDS reads (``train``, ``train[:90%]``, ``train[:200]``,
    ``train+test``). A bad one raises a one-line ``ValueError`` naming ``key`` (the config key it came
    from, e.g. ``data.train_split``), the value, TFDS's reason and the dataset's splits."""
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, TypeError, AttributeError, AssertionError) as e:
        reason = [line.strip() for line in str(e).strip('\'"').splitlines() if line.strip()]
        reason = reason[-1] if reason else type(e).__name__
        reason = reason.replace('\\n', ' ').split(' Got: ')[0].rstrip('.')
        raise ValueError(
            f'{key}={split!r}: not a split of dataset {_display_name(builder)!r} ({reason}); '
            f"its splits: {', '.join(_split_names(builder))} (slices like 'train[:90%]' or 'train[:200]' work)"
        ) from e


def split_key(cfg, split: str) -> str:
    """The config key `split` came from: ``data.train_split``, ``data.eval_split`` or ``split``."""
    if split == str(field(cfg, 'train_split')):
        return 'data.train_split'
    if split == str(field(cfg, 'eval_split')):
        return 'data.eval_split'
    return 'split'


def _display_name(builder) -> str:
    cfg = builder.builder_config
    return f'{builder.name}/{cfg.name}' if cfg is not None else builder.name


def image_storage(builder) -> str:
    """How a builder stores its images: 'tfds_image' (a TFDS ``Image`` feature: encoded files, e.g.
    imagenet2012), 'bytes' (image_folder's large images: the files' bytes as a 1-D uint8 tensor)
    or 'pixels' (decoded uint8 [H, W, C] tensors)."""
    feature = builder.info.features['image']
    if isinstance(feature, tfds.features.Image):
        return 'tfds_image'
    if len(feature.shape) == 1:
        return 'bytes'
    return 'pixels'


def _native_shape(builder) -> tuple:
    """(H, W, C) of the stored images; H/W are None for varying sizes."""
    if image_storage(builder) == 'bytes':  # image_folder's encoded files (C in the metadata)
        return (None, None, int(builder.info.metadata['channels']))
    shape = tuple(builder.info.features['image'].shape)
    return shape + (1,) if len(shape) == 2 else shape


def _channels(builder) -> int:
    c = _native_shape(builder)[-1]
    return int(c) if c is not None else 3


def output_shape(cfg, builder=None) -> tuple[int, int, int]:
    """(H, W, C) of the images the pipeline yields for `cfg`."""
    builder = builder or get_builder(cfg)
    size = int(field(cfg, 'image_size'))
    if size:
        return (size, size, _channels(builder))
    shape = _native_shape(builder)
    if any(d is None for d in shape):
        raise ValueError(
            f"dataset '{_display_name(builder)}' has images of varying size "
            f'{shape}; set data.image_size to resize them to a fixed size'
        )
    return tuple(int(d) for d in shape)


# ---------------------------------------------------------------------------
# Split access.


def _as_hwc(img: np.ndarray, channels: int = 3) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 1:  # encoded file bytes (image_storage 'bytes')
        return transforms.to_array(transforms.open_image(img, channels), channels)
    if img.ndim == 2:
        img = img[..., None]
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return img


class SplitData:
    """Random access to one split: uint8 [B, H, W, C] images and int32 labels.

    Images come at the pipeline size (resized if `image_size` is set). Small
    splits are held in memory; large ones are decoded from the data source.
    """

    def __init__(self, builder, split: str, out_shape: tuple[int, int, int]):
        self.split = split
        self.shape = tuple(out_shape)
        self._n = num_examples(builder, split)
        self._source = builder.as_data_source(split)
        self.images: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        nbytes = self._n * int(np.prod(self.shape))
        if nbytes <= MAX_IN_MEMORY_BYTES:
            self.images, self.labels = self._read(np.arange(self._n))

    def __len__(self) -> int:
        return self._n

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def __getstate__(self):  # for grain's worker processes: big arrays are re-read, not copied
        state = dict(self.__dict__)
        if self.images is not None and self.images.nbytes > MAX_PICKLED_BYTES:
            state['images'] = state['labels'] = None
        return state

    def _read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w, c = self.shape
        images = np.empty((len(indices), h, w, c), np.uint8)
        labels = np.empty((len(indices),), np.int32)
        for start in range(0, len(indices), _LOAD_CHUNK):
            chunk = [int(i) for i in indices[start : start + _LOAD_CHUNK]]
            records = self._source.__getitems__(chunk)
            imgs = [_as_hwc(r['image'], c) for r in records]
            labels[start : start + len(chunk)] = [int(r['label']) for r in records]
            if all(im.shape == imgs[0].shape for im in imgs):
                batch = np.stack(imgs)
                if batch.shape[-1] != c:
                    raise ValueError(
                        f'split {self.split}: images have {batch.shape[-1]} channels, expected {c}'
                    )
                images[start : start + len(chunk)] = augment_lib.resize_uint8(batch, h, w)
            else:
                for j, im in enumerate(imgs):
                    images[start + j] = augment_lib.resize_uint8(im, h, w)
        return images, labels

    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of the given example indices."""
        indices = np.asarray(indices, np.int64)
        if self.images is not None:
            return self.images[indices], self.labels[indices]
        return self._read(indices)


class ClassSubset:
    """A view of a `SplitData` restricted to some classes, labels renumbered 0..k-1 (``data.classes``)."""

    def __init__(self, data: SplitData, class_ids: tuple[int, ...], labels: np.ndarray):
        self.split, self.shape = data.split, data.shape
        self._data = data
        remap = np.full(max(int(labels.max(initial=0)), max(class_ids)) + 1, -1, np.int32)
        remap[list(class_ids)] = np.arange(len(class_ids), dtype=np.int32)
        self._remap = remap
        self.indices = np.flatnonzero(remap[labels] >= 0)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def in_memory(self) -> bool:
        return self._data.in_memory

    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images, labels = self._data.gather(self.indices[np.asarray(indices, np.int64)])
        return images, self._remap[labels]

    # The FullResSplit interface (when the viewed split is one).
    @property
    def channels(self) -> int:
        return self._data.channels

    def records(self, indices: np.ndarray) -> tuple[list, np.ndarray]:
        refs, labels = self._data.records(self.indices[np.asarray(indices, np.int64)])
        return refs, self._remap[labels]

    def image(self, ref):
        return self._data.image(ref)


class FullResSplit:
    """Random access to one split's images at full resolution: their stored form (encoded file bytes,
    or decoded pixels for datasets stored that way) and int32 labels, for the per-example transforms
    of ``research.data.transforms`` (random-resized crop, resize-shorter-side + center crop).

    Splits whose stored images fit in ``MAX_IN_MEMORY_BYTES`` (estimated from 64 evenly spaced
    records) are held in memory as stored (ImageNet's JPEGs: 140 GB, read from disk per batch; a
    50k-image folder of JPEGs: ~1 GB, held). ``shape`` is the (H, W, C) the pipeline makes of them.
    """

    def __init__(self, builder, split: str, out_shape: tuple[int, int, int]):
        self.split = split
        self.shape = tuple(out_shape)
        self.channels = int(out_shape[-1])
        self._n = num_examples(builder, split)
        decoders = {'image': tfds.decode.SkipDecoding()} if image_storage(builder) == 'tfds_image' else None
        self._source = builder.as_data_source(split, decoders=decoders)
        self.refs: list | None = None
        self.labels: np.ndarray | None = None
        probe = np.linspace(0, self._n - 1, min(self._n, 64)).astype(int).tolist()
        sizes = [_stored_nbytes(r['image']) for r in self._source.__getitems__(probe)]
        if self._n * float(np.mean(sizes)) <= MAX_IN_MEMORY_BYTES:
            self.refs, self.labels = self._read(np.arange(self._n))

    def __len__(self) -> int:
        return self._n

    @property
    def in_memory(self) -> bool:
        return self.refs is not None

    def __getstate__(self):  # for grain's worker processes: many stored images are re-read, not copied
        state = dict(self.__dict__)
        if self.refs is not None and sum(_stored_nbytes(r) for r in self.refs) > MAX_PICKLED_BYTES:
            state['refs'] = state['labels'] = None
        return state

    def _read(self, indices: np.ndarray) -> tuple[list, np.ndarray]:
        refs, labels = [], np.empty((len(indices),), np.int32)
        for start in range(0, len(indices), _LOAD_CHUNK):
            chunk = [int(i) for i in indices[start : start + _LOAD_CHUNK]]
            records = self._source.__getitems__(chunk)
            refs.extend(r['image'] for r in records)
            labels[start : start + len(chunk)] = [int(r['label']) for r in records]
        return refs, labels

    def records(self, indices: np.ndarray) -> tuple[list, np.ndarray]:
        """The stored images (for ``image``) and labels of the given example indices."""
        indices = np.asarray(indices, np.int64)
        if self.refs is not None:
            return [self.refs[i] for i in indices.tolist()], self.labels[indices]
        return self._read(indices)

    def image(self, ref):
        """A stored image as a decoded full-size PIL image ('RGB', or 'L' for one channel)."""
        return transforms.open_image(ref, self.channels)

    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images squashed to ``shape`` (as ``SplitData.gather``) and labels: for callers that want
        fixed-size arrays of a full-resolution split."""
        refs, labels = self.records(indices)
        h, w, c = self.shape
        images = np.empty((len(refs), h, w, c), np.uint8)
        for k, ref in enumerate(refs):
            images[k] = augment_lib.resize_uint8(transforms.to_array(self.image(ref), c), h, w)
        return images, labels


def _stored_nbytes(image) -> int:
    return len(image) if isinstance(image, (bytes, bytearray)) else int(np.asarray(image).nbytes)


_SPLITS: dict[tuple, SplitData] = {}


def _cached_split(builder, split: str, shape: tuple) -> SplitData:
    key = (str(builder.data_path), split, tuple(shape))
    with _LOCK:
        if key not in _SPLITS:
            _SPLITS[key] = SplitData(builder, split, shape)
        return _SPLITS[key]


def class_ids(cfg, builder=None) -> tuple[int, ...] | None:
    """``data.classes`` as class indices (None = all classes); unknown names/indices raise."""
    wanted = tuple(field(cfg, 'classes') or ())
    if not wanted:
        return None
    builder = builder or get_builder(cfg)
    names = [str(n) for n in builder.info.features['label'].names]
    ids = []
    for c in wanted:
        if isinstance(c, (int, np.integer)) or (isinstance(c, str) and c.isdigit() and c not in names):
            i = int(c)
            if not 0 <= i < len(names):
                raise ValueError(f'data.classes: class index {i} is out of range (dataset has {len(names)})')
        elif str(c) in names:
            i = names.index(str(c))
        else:
            raise ValueError(f'data.classes: unknown class {c!r}; the dataset has: {", ".join(names)}')
        if i in ids:
            raise ValueError(f'data.classes: class {c!r} is listed twice')
        ids.append(i)
    return tuple(ids)


def _split_labels(builder, split: str, data: SplitData) -> np.ndarray:
    """All labels of a split (in memory, or read once and cached as .npy next to the dataset)."""
    if data.labels is not None:
        return data.labels
    slug = ''.join(ch if ch.isalnum() else '_' for ch in split)
    path = os.path.join(os.fspath(builder.data_path), f'labels_{slug}.npy')
    if storage.as_path(path).exists():
        return np.load(io.BytesIO(storage.as_path(path).read_bytes()) if storage.is_remote(path) else path)
    logging.info('reading the labels of %s (once, for data.classes)', split)
    source = builder.as_data_source(split)
    labels = np.asarray([int(source[i]['label']) for i in range(len(data))], np.int32)
    try:
        if storage.is_remote(path):
            buf = io.BytesIO()
            np.save(buf, labels)
            storage.write_bytes(path, buf.getvalue(), parents=False)
        else:
            np.save(path, labels)
    except OSError as e:
        logging.warning('could not cache labels at %s: %s', path, e)
    return labels


def get_split(cfg, split: str) -> SplitData | ClassSubset:
    """Cached `SplitData` for `split` of the dataset in `cfg` (a `ClassSubset` view if
    ``data.classes`` is set)."""
    builder = get_builder(cfg)
    shape = output_shape(cfg, builder)
    num_examples(builder, split, split_key(cfg, split))  # validates the split name
    data = _cached_split(builder, split, shape)
    ids = class_ids(cfg, builder)
    if ids is None:
        return data
    return ClassSubset(data, ids, _split_labels(builder, split, data))


_FULL_SPLITS: dict[tuple, FullResSplit] = {}


def get_full_split(cfg, split: str) -> FullResSplit | ClassSubset:
    """Cached `FullResSplit` for `split` (a `ClassSubset` view if ``data.classes`` is set): the
    full-resolution images behind ``data.augment.random_resized_crop`` and ``data.eval_resize``."""
    builder = get_builder(cfg)
    shape = output_shape(cfg, builder)
    num_examples(builder, split)  # validates the split name
    key = (str(builder.data_path), split, tuple(shape))
    with _LOCK:
        if key not in _FULL_SPLITS:
            _FULL_SPLITS[key] = FullResSplit(builder, split, shape)
        data = _FULL_SPLITS[key]
    ids = class_ids(cfg, builder)
    if ids is None:
        return data
    return ClassSubset(data, ids, _split_labels(builder, split, data))


def split_size(cfg, split: str) -> int:
    """Examples of `split` the pipeline uses (after ``data.classes``)."""
    if class_ids(cfg) is None:
        return num_examples(get_builder(cfg), split, split_key(cfg, split))
    return len(get_split(cfg, split))


# ---------------------------------------------------------------------------
# Normalisation statistics.


def _stats_path(builder, split: str) -> str:
    slug = ''.join(ch if ch.isalnum() else '_' for ch in split)
    return os.path.join(os.fspath(builder.data_path), f'norm_stats_{slug}.json')


def _fixed_native_shape(builder) -> tuple | None:
    shape = _native_shape(builder)
    return None if any(d is None for d in shape) else tuple(int(d) for d in shape)


def _compute_stats(builder, split: str) -> dict:
    """Per-channel mean/std (0..1 scale) of the native-size images of `split`."""
    n = num_examples(builder, split)
    shape = _fixed_native_shape(builder)
    if shape is not None and n * int(np.prod(shape)) <= MAX_IN_MEMORY_BYTES:
        # Small split: load it (cached for the pipeline) and reduce in chunks.
        images = _cached_split(builder, split, shape).images
        chunks = (images[i : i + _LOAD_CHUNK] for i in range(0, n, _LOAD_CHUNK))
        used = n
    else:  # Large split: an evenly strided sample, decoded one by one.
        source = builder.as_data_source(split)
        idx = np.linspace(0, n - 1, min(n, MAX_STATS_EXAMPLES_LAZY)).astype(int)
        used = len(idx)

        def _lazy_chunks():
            for i in range(0, used, _LOAD_CHUNK):
                for r in source.__getitems__([int(j) for j in idx[i : i + _LOAD_CHUNK]]):
                    yield _as_hwc(r['image'], _channels(builder))[None]

        chunks = _lazy_chunks()
    total = total_sq = 0.0
    count = 0
    for chunk in chunks:
        flat = chunk.reshape(-1, chunk.shape[-1]).astype(np.float64)
        total = total + flat.sum(0)
        total_sq = total_sq + np.square(flat).sum(0)
        count += flat.shape[0]
    mean = np.asarray(total) / count
    std = np.sqrt(np.maximum(np.asarray(total_sq) / count - mean**2, 0.0))
    return {
        'mean': (mean / 255.0).tolist(),
        'std': (std / 255.0).tolist(),
        'num_examples_used': int(used),
        'num_pixels': int(count),
    }


#: torchvision's ImageNet normalisation (mean, std per RGB channel, on [0, 1] pixels): what every
#: torchvision classification weight expects (``ResNet50_Weights.IMAGENET1K_V2.transforms()``).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZE_CHOICES = (True, False, 'auto', 'dataset', 'imagenet', 'none')


def normalize_mode(value) -> str:
    """``data.normalize`` as 'dataset' | 'imagenet' | 'none' (True / 'auto' = 'dataset')."""
    if isinstance(value, (bool, np.bool_)):
        return 'dataset' if value else 'none'
    v = str(value).strip().lower()
    if v in ('auto', 'dataset', 'true'):
        return 'dataset'
    if v in ('none', 'false', ''):
        return 'none'
    if v == 'imagenet':
        return 'imagenet'
    raise ValueError(
        f"data.normalize={value!r}: expected True (the dataset's mean/std), False (x / 255), "
        "'imagenet' (torchvision's constants) or 'auto'"
    )


def norm_constants(cfg, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel (0..1 scale) the pipeline normalises with, per ``cfg.normalize``:
    True / 'auto' / 'dataset': the train split's own statistics (`norm_stats`); 'imagenet':
    torchvision's ImageNet constants (3 channels; their mean for 1); False / 'none': (0, 1), x / 255.
    'auto' follows the weights only through `resolve_normalize`, which sees the whole config."""
    mode = normalize_mode(field(cfg, 'normalize'))
    if mode == 'dataset':
        return norm_stats(cfg)
    if mode == 'imagenet':
        return imagenet_constants(channels)
    return (0.0,) * channels, (1.0,) * channels


def imagenet_constants(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """torchvision's ImageNet (mean, std) for 3 channels; their means for another channel count."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (float(np.mean(IMAGENET_MEAN)),) * channels, (float(np.mean(IMAGENET_STD)),) * channels


def uses_torchvision_weights(config) -> bool:
    """Whether the run initialises from torchvision weights: ``init.checkpoint`` of the form
    'torchvision:<model>.<weights>' or a torch file (.pth/.pt/.bin, converted with ``init.torchvision``)."""
    init = getattr(config, 'init', None)
    ckpt = str(getattr(init, 'checkpoint', '') or '') if init is not None else ''
    return ckpt.startswith('torchvision:') or ckpt.lower().endswith(('.pth', '.pt', '.bin'))


def resolve_normalize(config):
    """``config.data.normalize`` with 'auto' resolved against the whole run config: 'imagenet' when
    the run starts from torchvision weights (they were trained on ImageNet-normalised inputs), else
    True (the dataset's own statistics). Any other value is returned as is (checked)."""
    value = field(config.data, 'normalize')
    normalize_mode(value)
    if isinstance(value, str) and value.strip().lower() == 'auto':
        return 'imagenet' if uses_torchvision_weights(config) else True
    return value


def resolved_data_config(config) -> ml_collections.ConfigDict:
    """A copy of ``config.data`` with ``normalize`` resolved (`resolve_normalize`): what a trainer
    passes to the data functions (``get_dataset_info``, the iterators, ``DeviceAugment``)."""
    data = ml_collections.ConfigDict(config.data.to_dict(), type_safe=False)
    data.normalize = resolve_normalize(config)
    return data


def norm_stats(cfg) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std (0..1 scale) of the train split at native size.

    Computed once and cached as json next to the prepared dataset (splits too
    big for memory use an evenly strided sample of the examples).
    """
    builder = get_builder(cfg)
    split = str(field(cfg, 'train_split'))
    num_examples(builder, split, 'data.train_split')  # validates the split name
    path = _stats_path(builder, split)
    with _LOCK:
        text = storage.read_text(path)
        if text is not None:
            stats = json.loads(text)
        elif storage.is_remote(path):
            stats = _compute_stats(builder, split)
            try:
                storage.write_text(path, json.dumps(stats, indent=1), parents=False)  # one object write
            except OSError as e:
                logging.warning('could not cache normalisation stats at %s: %s', path, e)
        else:
            stats = _compute_stats(builder, split)
            tmp = f'{path}.tmp.{os.getpid()}'
            try:
                with open(tmp, 'w') as f:
                    json.dump(stats, f, indent=1)
                os.replace(tmp, path)
            except OSError as e:  # read-only data_dir: keep the values anyway
                logging.warning('could not cache normalisation stats at %s: %s', path, e)
    std = tuple(max(float(s), 1e-6) for s in stats['std'])
    return tuple(float(m) for m in stats['mean']), std


# ---------------------------------------------------------------------------
# Info.


def get_dataset_info(cfg) -> DatasetInfo:
    """Info for `cfg` (prepares the dataset if needed; idempotent)."""
    builder = get_builder(cfg)
    shape = output_shape(cfg, builder)
    label = builder.info.features['label']
    ids = class_ids(cfg, builder)
    counts = {s: int(v.num_examples) for s, v in builder.info.splits.items()}
    for split in (field(cfg, 'train_split'), field(cfg, 'eval_split')):
        counts[str(split)] = split_size(cfg, str(split))
    mean, std = norm_constants(cfg, shape[-1])
    return DatasetInfo(
        name=_display_name(builder),
        num_classes=int(label.num_classes) if ids is None else len(ids),
        image_shape=shape,
        num_examples=counts,
        class_names=tuple(str(n) for n in label.names)
        if ids is None
        else tuple(str(label.names[i]) for i in ids),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )
