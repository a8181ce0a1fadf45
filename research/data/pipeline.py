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
uninterrupted stream bit for bit, whatever the thread or worker count.

Two kinds of train/eval batches:

- fixed-size (the default): images resized (squashed) to ``data.image_size``
  once, held as uint8 arrays, augmented with vectorised numpy
  (``augment.augment_batch``: pad-and-crop, flip, rotation/zoom, brightness);
- full-resolution (``data.augment.random_resized_crop`` for train,
  ``data.eval_resize`` for eval; the ImageNet recipe): each example is decoded
  at full size from its stored bytes and cropped one at a time with
  torchvision's semantics (``research.data.transforms``), then flipped.

Both may add RandAugment / AutoAugment (``research.data.autoaugment``, PIL, on
the uint8 crop) and normalise with the dataset's, ImageNet's or no constants.
Batches are made by grain in ``data.num_threads`` threads of this process or,
with ``data.num_workers`` > 0, in that many worker processes (grain's
``mp_prefetch``; worker w makes batches w, w + W, ...). The iterator's state
is {'next_index': batches delivered}, the same for any thread or worker count.
"""

from __future__ import annotations

import collections
import threading
import weakref

import grain
import numpy as np
from PIL import Image

from research.data import augment as augment_lib
from research.data import autoaugment as autoaugment_lib
from research.data import datasets, transforms

_SHUFFLE_TAG = 0x5348554646
_AUGMENT_TAG = 0x4155474D
_CROP_TAG = 0x5252432D  # random-resized crop draws
_POLICY_TAG = 0x52414141  # RandAugment / AutoAugment draws
# Batch numbers of the (infinite) train stream end here.
_STREAM_END = 2**62


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


def norm_constants(cfg, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel the images are normalised with (``datasets.norm_constants``): the
    train split's for True / 'auto', torchvision's for 'imagenet', (0, 1) (plain x / 255) for False."""
    return datasets.norm_constants(cfg, channels)


def augment_settings(cfg) -> dict:
    """`cfg.augment` as the keyword arguments of `augment.augment_batch` / `augment_params`."""
    return dict(
        crop_padding=int(datasets.field(cfg, 'augment.crop_padding')),
        flip=bool(datasets.field(cfg, 'augment.flip')),
        rotation=float(datasets.field(cfg, 'augment.rotation')),
        scale=float(datasets.field(cfg, 'augment.scale')),
        brightness=float(datasets.field(cfg, 'augment.brightness')),
    )


def _pair(cfg, name: str) -> tuple[float, float]:
    value = datasets.field(cfg, name)
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f'data.{name}={value!r}: expected (low, high)') from None
    if not 0 < lo <= hi:
        raise ValueError(f'data.{name}={value!r}: expected 0 < low <= high')
    return lo, hi


def random_resized_crop(cfg) -> dict | None:
    """``data.augment.random_resized_crop``'s settings ({'scale', 'ratio'}), None when off."""
    if not datasets.field(cfg, 'augment.random_resized_crop'):
        return None
    return {'scale': _pair(cfg, 'augment.crop_scale'), 'ratio': _pair(cfg, 'augment.crop_ratio')}


def eval_resize(cfg) -> int:
    """``data.eval_resize`` (0 = off), checked."""
    n = int(datasets.field(cfg, 'eval_resize'))
    if n < 0:
        raise ValueError(f'data.eval_resize={n}: expected 0 (off) or the shorter side in pixels')
    return n


def host_policy(cfg):
    """RandAugment / AutoAugment of ``data.augment`` (None when both are off)."""
    return autoaugment_lib.make_policy(
        datasets.field(cfg, 'augment.randaugment'), datasets.field(cfg, 'augment.autoaugment')
    )


def check_settings(cfg) -> None:
    """Refuses knob combinations the pipeline does not implement, naming them."""
    rrc = random_resized_crop(cfg)
    eval_resize(cfg)
    policy = host_policy(cfg)
    aug = augment_settings(cfg)
    if rrc is not None:
        for key in ('crop_padding', 'rotation', 'scale', 'brightness'):
            if aug[key]:
                raise ValueError(
                    f'data.augment.{key}={aug[key]} is an op of the fixed-size path; with '
                    'data.augment.random_resized_crop the crop is the random-resized one (set it to 0)'
                )
    if policy is not None and rrc is None and bool(datasets.field(cfg, 'on_device')):
        raise ValueError(
            'data.augment.randaugment / autoaugment run on the host after the crop: with data.on_device '
            'only together with data.augment.random_resized_crop (the host then crops, flips and augments)'
        )
    workers = int(datasets.field(cfg, 'num_workers'))
    if workers < 0:
        raise ValueError(f'data.num_workers={workers}: expected >= 0')


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

    def __getstate__(self):  # picklable for grain's worker processes (no lock, no cache)
        return {'n': self._n, 'seed': self._seed, 'size': self._size}

    def __setstate__(self, state):
        self.__init__(state['n'], state['seed'], state['size'])

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


def _apply_policy(policy, images: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """RandAugment / AutoAugment on each uint8 [H, W, C] image of the batch (PIL, in place)."""
    for k in range(len(images)):
        img = transforms.open_image(images[k], images.shape[-1])
        images[k] = transforms.to_array(policy(img, uniforms[k]), images.shape[-1])
    return images


class _TrainBatch:
    """Batch number -> this host's augmented, normalised slice of that batch."""

    def __init__(
        self, data, cfg, seed: int, global_batch: int, lo: int, hi: int, normalize: augment_lib.Normalizer
    ):
        self._data = data
        self._epoch_len = len(data) // global_batch * global_batch
        self._perm = _Permutations(len(data), seed)
        self._seed = int(seed) % 2**64
        self._aug_seed = self._seed ^ _AUGMENT_TAG
        self._global_batch, self._lo, self._hi = global_batch, lo, hi
        self._aug = augment_settings(cfg)
        self._policy = host_policy(cfg)
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

    def policy_uniforms(self, pos: np.ndarray) -> np.ndarray:
        n = self._policy.uniforms_needed if self._policy is not None else 0
        return augment_lib.uniform_hash(self._seed ^ _POLICY_TAG, pos, max(n, 1))

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        pos = self.positions(int(step))
        images, labels = self._data.gather(self.source_indices(pos))
        u = augment_lib.uniform_hash(self._aug_seed, pos, augment_lib.NUM_UNIFORMS)
        if self._on_device:  # uint8 + the draws; research.data.device_augment applies them in the step
            aug = augment_lib.augment_params(u, **self._aug)
            return {'image': images, 'aug': aug, 'label': labels.astype(np.int32)}
        aug = self._aug
        if self._policy is not None:  # on the uint8 crop (before the warp, which gives floats)
            if not (aug['rotation'] or aug['scale']):
                params = augment_lib.augment_params(u, **aug)
                if 'flip' in params:
                    images = augment_lib.pad_crop_flip(
                        images, params['offset_y'], params['offset_x'], params['flip'], aug['crop_padding']
                    )
                aug = dict(aug, crop_padding=0, flip=False)
            images = _apply_policy(self._policy, np.array(images), self.policy_uniforms(pos))
        x = self._normalize(augment_lib.augment_batch(images, u, **aug))
        return {'image': x, 'label': labels.astype(np.int32)}


class _FullResTrainBatch(_TrainBatch):
    """Batch number -> this host's slice, each example decoded at full size, cropped with
    torchvision's RandomResizedCrop (``transforms.rrc_box`` on counter-based draws), resized to
    ``image_size`` (bilinear, antialiased), flipped, optionally RandAugment'ed, then normalised
    (or shipped as uint8 with ``data.on_device``: the step normalises)."""

    def __init__(self, data, cfg, seed, global_batch, lo, hi, normalize, crop: dict):
        super().__init__(data, cfg, seed, global_batch, lo, hi, normalize)
        self._crop = crop
        self._flip = bool(self._aug['flip'])

    def crop_boxes(self, step: int, sizes) -> list[tuple[int, int, int, int]]:
        """(top, left, height, width) of each example's crop, for full-size (height, width) ``sizes``."""
        u = augment_lib.uniform_hash(
            self._seed ^ _CROP_TAG, self.positions(int(step)), transforms.RRC_UNIFORMS
        )
        return [transforms.rrc_box(h, w, u[k], **self._crop) for k, (h, w) in enumerate(sizes)]

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        step = int(step)
        pos = self.positions(step)
        refs, labels = self._data.records(self.source_indices(pos))
        h, w, c = self._data.shape
        images = np.empty((len(refs), h, w, c), np.uint8)
        u_crop = augment_lib.uniform_hash(self._seed ^ _CROP_TAG, pos, transforms.RRC_UNIFORMS)
        flips = augment_lib.uniform_hash(self._aug_seed, pos, augment_lib.NUM_UNIFORMS)[:, 2] < 0.5
        u_policy = self.policy_uniforms(pos)
        for k, ref in enumerate(refs):
            img = self._data.image(ref)
            box = transforms.rrc_box(img.height, img.width, u_crop[k], **self._crop)
            img = transforms.resized_crop(img, box, (h, w))
            if self._flip and flips[k]:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            if self._policy is not None:
                img = self._policy(img, u_policy[k])
            images[k] = transforms.to_array(img, c)
        if self._on_device:
            return {'image': images, 'label': labels.astype(np.int32)}
        return {'image': _to_float(images, self._normalize), 'label': labels.astype(np.int32)}


def _to_float(images: np.ndarray, normalize: augment_lib.Normalizer) -> np.ndarray:
    """uint8 -> float32 x / 255, normalised in place."""
    x = images.astype(np.float32)
    x *= np.float32(1.0 / 255.0)
    return normalize(x)


class StreamIterator:
    """Batches ``fn(i)`` for i = start, start + 1, ... (< ``length``, or endless), made by grain in
    ``num_threads`` threads or ``num_workers`` processes; ``get_state()`` is ``{'next_index': i}``
    (JSON; the format of grain's own map-dataset iterators, so older checkpoints restore), and
    ``set_state`` restarts the stream there, whatever the thread or worker count."""

    def __init__(self, fn, length: int | None, *, num_threads: int = 0, num_workers: int = 0):
        self._fn, self._length = fn, length
        self._threads, self._workers = int(num_threads), int(num_workers)
        self._next = 0
        self._it = None
        self._finalizer = None

    def _open(self):
        stop = self._length if self._length is not None else _STREAM_END
        ds = grain.MapDataset.range(self._next, max(stop, self._next)).map(self._fn)
        read = grain.ReadOptions(num_threads=self._threads, prefetch_buffer_size=2 * self._threads)
        it_ds = ds.to_iter_dataset(read)
        if self._workers:
            from absl import flags  # pylint: disable=g-import-not-at-top

            if not flags.FLAGS.is_parsed():  # grain reads its flags (defaults) outside absl.app too
                flags.FLAGS.mark_as_parsed()
            it_ds = it_ds.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=self._workers, per_worker_buffer_size=2)
            )
        self._it = iter(it_ds)
        # Closed when this iterator is collected or, at the latest, at interpreter exit (before
        # modules are torn down): stops grain's workers and unlinks their unread shared memory.
        self._finalizer = weakref.finalize(self, _close_quietly, self._it)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._open()
        batch = next(self._it)
        self._next += 1
        return batch

    def get_state(self) -> dict[str, int]:
        return {'next_index': self._next}

    def set_state(self, state: dict) -> None:
        self.close()
        self._next = int(state['next_index'])

    def close(self) -> None:
        """Stops the prefetching threads / worker processes (reopened by the next ``next``)."""
        self._it = None
        finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            finalizer()


def _close_quietly(it) -> None:
    if hasattr(it, 'close'):
        it.close()


def _stream(cfg, fn, length: int | None) -> StreamIterator:
    return StreamIterator(
        fn,
        length,
        num_threads=int(datasets.field(cfg, 'num_threads')),
        num_workers=int(datasets.field(cfg, 'num_workers')),
    )


def make_train_iterator(
    cfg,
    *,
    seed: int,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    step_mixes: bool = False,
):
    """Infinite, shuffled, augmented train batches (a `StreamIterator`).

    Yields {'image': float32 [L, H, W, C], 'label': int32 [L]} with
    L = global_batch_size // process_count. `get_state()` is JSON-serialisable.
    With `data.on_device`: {'image': uint8 [L, H, W, C], 'aug': the augmentation
    parameters (`augment.augment_params`), 'label'}, for `device_augment.prepare_batch`
    (with `data.augment.random_resized_crop` no 'aug': the host crops and flips).

    `data.augment.mixup` / `cutmix` are applied by the train step (`research.data.mix.mix_batch`),
    not here: a caller whose step does so passes ``step_mixes=True``; otherwise they are refused
    rather than silently ignored.
    """
    local = _check_hosts(global_batch_size, process_index, process_count)
    check_settings(cfg)
    for key in ('mixup', 'cutmix'):
        alpha = float(datasets.field(cfg, f'augment.{key}'))
        if alpha and not step_mixes:
            raise ValueError(
                f'data.augment.{key}={alpha:g} is applied in the train step (research.data.mix.mix_batch '
                'with research.train.losses.soft_target_cross_entropy); this trainer does not apply it'
            )
    split = str(datasets.field(cfg, 'train_split'))
    crop = random_resized_crop(cfg)
    data = datasets.get_full_split(cfg, split) if crop else datasets.get_split(cfg, split)
    if len(data) < global_batch_size:
        raise ValueError(
            f"global_batch_size {global_batch_size} exceeds the {len(data)} examples of split '{split}'"
        )
    args = (
        data,
        cfg,
        data_seed(cfg, seed),
        global_batch_size,
        process_index * local,
        (process_index + 1) * local,
        _normalizer(cfg, data.shape),
    )
    fn = _FullResTrainBatch(*args, crop=crop) if crop else _TrainBatch(*args)
    return _stream(cfg, fn, None)


class _EvalBatch:
    """Batch number -> this host's slice, zero-padded past the split's end."""

    def __init__(
        self, data, global_batch: int, lo: int, hi: int, normalize: augment_lib.Normalizer, on_device: bool
    ):
        self._data, self._global_batch, self._lo, self._hi = (data, global_batch, lo, hi)
        self._normalize = normalize
        self._on_device = on_device

    def _images(self, pos: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.zeros((len(pos),) + tuple(self._data.shape), np.uint8)
        labels = np.zeros((len(pos),), np.int32)
        if mask.any():
            images[mask], labels[mask] = self._data.gather(pos[mask])
        return images, labels

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        start = int(step) * self._global_batch
        pos = np.arange(start + self._lo, start + self._hi, dtype=np.int64)
        mask = pos < len(self._data)
        images, labels = self._images(pos, mask)
        if self._on_device:
            return {'image': images, 'label': labels, 'mask': mask}
        x = _to_float(images, self._normalize)
        x[~mask] = 0.0
        return {'image': x, 'label': labels, 'mask': mask}


class _FullResEvalBatch(_EvalBatch):
    """``_EvalBatch`` of full-size images: shorter side resized to ``data.eval_resize``, then the
    center ``image_size`` crop (torchvision's ``Resize`` + ``CenterCrop``)."""

    def __init__(self, *args, resize: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._resize = resize

    def _images(self, pos, mask):
        h, w, c = self._data.shape
        images = np.zeros((len(pos), h, w, c), np.uint8)
        labels = np.zeros((len(pos),), np.int32)
        if mask.any():
            refs, labels[mask] = self._data.records(pos[mask])
            for k, ref in zip(np.flatnonzero(mask).tolist(), refs):
                img = transforms.eval_transform(self._data.image(ref), self._resize, (h, w))
                images[k] = transforms.to_array(img, c)
        return images, labels


def make_eval_iterator(
    cfg, split: str, *, global_batch_size: int, process_index: int = 0, process_count: int = 1
):
    """One pass over the whole `split`, in order, no augmentation.

    Yields {'image': float32 [L, H, W, C], 'label': int32 [L], 'mask': bool [L]};
    the last global batch is padded (mask False), so masked sums over all
    batches and hosts count every example exactly once. With `data.on_device`
    the images are uint8 (normalised in the step). With `data.eval_resize` N,
    each image is the center `image_size` crop of the full-size image with its
    shorter side resized to N.
    """
    local = _check_hosts(global_batch_size, process_index, process_count)
    check_settings(cfg)
    resize = eval_resize(cfg)
    data = datasets.get_full_split(cfg, str(split)) if resize else datasets.get_split(cfg, str(split))
    steps = -(-len(data) // global_batch_size)
    args = (
        data,
        global_batch_size,
        process_index * local,
        (process_index + 1) * local,
        _normalizer(cfg, data.shape),
        bool(datasets.field(cfg, 'on_device')),
    )
    fn = _FullResEvalBatch(*args, resize=resize) if resize else _EvalBatch(*args)
    return _stream(cfg, fn, steps)
