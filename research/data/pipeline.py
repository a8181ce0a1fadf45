"""grain input pipelines: infinite shuffled+augmented train, exact padded eval.

Both are grain `MapDataset`s over *batch numbers* mapped to vectorised numpy
batch functions, then turned into a (checkpointable) `DatasetIterator`. Every
global batch b covers stream positions [b*G, (b+1)*G); host p gets the
contiguous slice [p*L, (p+1)*L) of it (L = G // process_count), so the
process-ordered concatenation of host batches is the single-process batch.

Train stream position i lives in epoch i // M (M = N // G * G; the last partial
batch of each epoch is dropped) at slot i % M of that epoch's permutation of
the split. Permutations and augmentation draws are pure functions of
(seed, epoch) and (seed, i): restoring the iterator state reproduces the
uninterrupted stream bit for bit, whatever the thread count.
"""

from __future__ import annotations

import collections
import threading

import grain
import numpy as np

from research.data import augment as augment_lib
from research.data import datasets

_SHUFFLE_TAG = 0x5348554646
_AUGMENT_TAG = 0x4155474D


def _check_hosts(global_batch_size: int, process_index: int, process_count: int) -> int:
    if global_batch_size < 1:
        raise ValueError(f'global_batch_size must be >= 1, got {global_batch_size}')
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f'process_index {process_index} is out of range for process_count {process_count}')
    if global_batch_size % process_count:
        raise ValueError(
            f'global_batch_size {global_batch_size} is not divisible by process_count {process_count}'
        )
    return global_batch_size // process_count


def _read_options(cfg) -> grain.ReadOptions:
    n = int(datasets.field(cfg, 'num_threads'))
    return grain.ReadOptions(num_threads=n, prefetch_buffer_size=2 * n)


def norm_constants(cfg, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel the images are normalised with: the train split's if
    `cfg.normalize`, else (0, 1), i.e. plain x / 255."""
    if datasets.field(cfg, 'normalize'):
        return datasets.norm_stats(cfg)
    return (0.0,) * channels, (1.0,) * channels


def augment_settings(cfg) -> dict:
    """`cfg.augment` as the keyword arguments of `augment.augment_batch` / `augment_params`."""
    return dict(
        crop_padding=int(datasets.field(cfg, 'augment.crop_padding')),
        flip=bool(datasets.field(cfg, 'augment.flip')),
        rotation=float(datasets.field(cfg, 'augment.rotation')),
        scale=float(datasets.field(cfg, 'augment.scale')),
        brightness=float(datasets.field(cfg, 'augment.brightness')),
    )


def _normalizer(cfg, shape) -> augment_lib.Normalizer:
    mean, std = norm_constants(cfg, shape[-1])
    return augment_lib.Normalizer(mean, std, shape[1])


def data_seed(cfg, seed: int) -> int:
    """The seed of the data stream: cfg.shuffle_seed, or the run seed if -1."""
    s = int(datasets.field(cfg, 'shuffle_seed'))
    return int(seed) if s < 0 else s


def steps_per_epoch(cfg, global_batch_size: int) -> int:
    """Full global batches per epoch of the train split."""
    split = str(datasets.field(cfg, 'train_split'))
    return datasets.split_size(cfg, split) // int(global_batch_size)


class _Permutations:
    """Per-epoch permutations of range(n), cached (thread-safe)."""

    def __init__(self, n: int, seed: int, cache_size: int = 3):
        self._n, self._seed, self._size = n, seed, cache_size
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, epoch: int) -> np.ndarray:
        with self._lock:
            perm = self._cache.get(epoch)
            if perm is None:
                ss = np.random.SeedSequence([self._seed % 2**64, _SHUFFLE_TAG, int(epoch)])
                perm = np.random.default_rng(ss).permutation(self._n)
                self._cache[epoch] = perm
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
            return perm


class _TrainBatch:
    """Batch number -> this host's augmented, normalised slice of that batch."""

    def __init__(
        self, data, cfg, seed: int, global_batch: int, lo: int, hi: int, normalize: augment_lib.Normalizer
    ):
        self._data = data
        self._epoch_len = len(data) // global_batch * global_batch
        self._perm = _Permutations(len(data), seed)
        self._aug_seed = (int(seed) % 2**64) ^ _AUGMENT_TAG
        self._global_batch, self._lo, self._hi = global_batch, lo, hi
        self._aug = augment_settings(cfg)
        self._normalize = normalize
        self._on_device = bool(datasets.field(cfg, 'on_device'))

    def positions(self, step: int) -> np.ndarray:
        """Global stream positions of this host's examples in batch `step`."""
        start = step * self._global_batch
        return np.arange(start + self._lo, start + self._hi, dtype=np.int64)

    def source_indices(self, positions: np.ndarray) -> np.ndarray:
        epochs, slots = np.divmod(positions, self._epoch_len)
        out = np.empty_like(positions)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm(int(e))[slots[sel]]
        return out

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        pos = self.positions(int(step))
        images, labels = self._data.gather(self.source_indices(pos))
        u = augment_lib.uniform_hash(self._aug_seed, pos, augment_lib.NUM_UNIFORMS)
        if self._on_device:  # uint8 + the draws; research.data.device_augment applies them in the step
            aug = augment_lib.augment_params(u, **self._aug)
            return {'image': images, 'aug': aug, 'label': labels.astype(np.int32)}
        x = self._normalize(augment_lib.augment_batch(images, u, **self._aug))
        return {'image': x, 'label': labels.astype(np.int32)}


def make_train_iterator(
    cfg, *, seed: int, global_batch_size: int, process_index: int = 0, process_count: int = 1
):
    """Infinite, shuffled, augmented train batches (grain `DatasetIterator`).

    Yields {'image': float32 [L, H, W, C], 'label': int32 [L]} with
    L = global_batch_size // process_count. `get_state()` is JSON-serialisable.
    With `data.on_device`: {'image': uint8 [L, H, W, C], 'aug': the augmentation
    parameters (`augment.augment_params`), 'label'}, for `device_augment.prepare_batch`.
    """
    local = _check_hosts(global_batch_size, process_index, process_count)
    split = str(datasets.field(cfg, 'train_split'))
    data = datasets.get_split(cfg, split)
    if len(data) < global_batch_size:
        raise ValueError(
            f"global_batch_size {global_batch_size} exceeds the {len(data)} examples of split '{split}'"
        )
    fn = _TrainBatch(
        data,
        cfg,
        data_seed(cfg, seed),
        global_batch_size,
        process_index * local,
        (process_index + 1) * local,
        _normalizer(cfg, data.shape),
    )
    steps = len(data) // global_batch_size
    ds = grain.MapDataset.range(steps).repeat().map_with_index(lambda step, _: fn(step))
    return iter(ds.to_iter_dataset(_read_options(cfg)))


class _EvalBatch:
    """Batch number -> this host's slice, zero-padded past the split's end."""

    def __init__(
        self, data, global_batch: int, lo: int, hi: int, normalize: augment_lib.Normalizer, on_device: bool
    ):
        self._data, self._global_batch, self._lo, self._hi = (data, global_batch, lo, hi)
        self._normalize = normalize
        self._on_device = on_device

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        start = int(step) * self._global_batch
        pos = np.arange(start + self._lo, start + self._hi, dtype=np.int64)
        mask = pos < len(self._data)
        images = np.zeros((len(pos),) + tuple(self._data.shape), np.uint8)
        labels = np.zeros((len(pos),), np.int32)
        if mask.any():
            images[mask], labels[mask] = self._data.gather(pos[mask])
        if self._on_device:
            return {'image': images, 'label': labels, 'mask': mask}
        x = self._normalize(images.astype(np.float32) * np.float32(1.0 / 255.0))
        x[~mask] = 0.0
        return {'image': x, 'label': labels, 'mask': mask}


def make_eval_iterator(
    cfg, split: str, *, global_batch_size: int, process_index: int = 0, process_count: int = 1
):
    """One pass over the whole `split`, in order, no augmentation.

    Yields {'image': float32 [L, H, W, C], 'label': int32 [L], 'mask': bool [L]};
    the last global batch is padded (mask False), so masked sums over all
    batches and hosts count every example exactly once. With `data.on_device`
    the images are uint8 (normalised in the step).
    """
    local = _check_hosts(global_batch_size, process_index, process_count)
    data = datasets.get_split(cfg, str(split))
    steps = -(-len(data) // global_batch_size)
    fn = _EvalBatch(
        data,
        global_batch_size,
        process_index * local,
        (process_index + 1) * local,
        _normalizer(cfg, data.shape),
        bool(datasets.field(cfg, 'on_device')),
    )
    ds = grain.MapDataset.range(steps).map(fn)
    return iter(ds.to_iter_dataset(_read_options(cfg)))
