"""The CIFAR-10 speed run (``config.task = 'speedrun'``): airbench94's training loop (Keller Jordan 2024,
"94% on CIFAR-10 in 3.29 Seconds on a Single GPU", arXiv:2404.00498; ``airbench94.py`` of
github.com/KellerJordan/cifar10-airbench) written as one jitted function.

- The whole train split lives on the device as one uint8 array (plus labels, the per-epoch permutations
  and airbench's per-image flip bits); nothing crosses the host between steps.
- :func:`run_steps` runs ``speedrun.steps_per_call`` (K) steps per call with ``lax.scan`` (unrolled on
  CPU: ``speedrun.unroll``, :func:`resolve_unroll`). Each step takes
  its batch from the epoch's permutation (``drop_last``, as airbench), augments it inside the jitted code
  (:func:`crop_flip`: reflect-pad by ``speedrun.translate`` px and crop back at a random offset;
  horizontal flip ``'alternating'`` as airbench -- every image has a random flip bit drawn once and is
  flipped on the epochs where ``bit XOR (epoch odd)`` -- or ``'random'`` / ``'none'``), normalises it
  and calls the codebase's ``train_step`` (label smoothing ``train.label_smoothing``).
- Optimizer (:func:`make_speedrun_optimizer`): ``optimizer.*`` (SGD Nesterov) on a ``schedule.*`` learning
  rate (airbench's triangle = ``linear`` with a warm-up), coupled weight decay as PyTorch; BatchNorm
  biases get ``speedrun.bias_lr_scale`` x the learning rate and 1/that x the weight decay (airbench's
  ``bias_scaler``: the same decay per step); the whitening kernel is frozen and its bias trains for
  ``speedrun.whiten_bias_epochs`` epochs only.
- Lookahead (airbench's ``LookaheadState``), from epoch ``speedrun.ema_start_epochs``, every
  ``speedrun.ema_every`` steps: ``ema = rho * ema + (1 - rho) * net`` over parameters and BatchNorm
  statistics, then ``net = ema``, with ``rho = ema_decay_base^every * (step / total)^ema_decay_pow``;
  at the end of each epoch ``net = ema``.
- The whitening kernel is set before training from ``speedrun.whiten_samples`` normalised train images
  (:func:`research.models.airbench.whitening_kernel`; any model with a ``whiten`` module).
- Evaluation: test-time augmentation ``speedrun.tta_level`` 0 (plain), 1 (mean of the image and its
  mirror), 2 (airbench: 0.5 * mirror + 0.25 * mirror of the image translated 1 px up-left (reflect) +
  0.25 * mirror of it translated 1 px down-right). ``train.eval_every`` adds plain evaluations during
  training (untimed).

Times (``summary.json``): ``compile_time_s`` (ahead-of-time compilation of every jitted function),
``train_time_s`` (the train calls only, synchronised), ``whiten_time_s``, ``eval_time_s`` (final TTA
evaluation), ``airbench_time_s`` = whiten + train + final eval (what airbench reports), ``images_per_sec``
(trained images / train_time_s). A speed run writes no checkpoints: an interrupted one starts over.
One device (the first).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from research import data as data_lib
from research.configlib import ConfigError, parse_duration
from research.models.airbench import whitening_kernel
from research.tasks.base import DataInfo, Task, eval_totals
from research.train import mesh as mesh_lib
from research.train.optim import make_optimizer
from research.train.state import TrainState, cross_entropy, train_step
from research.train.transfer import leaf_path

PyTree = Any
FLIP_MODES = ('alternating', 'random', 'none')
#: Parameters that get ``speedrun.bias_lr_scale``: those of BatchNorm modules (airbench: 'norm' in the name).
NORM_PARAM = re.compile(r'(^|/)(norm|bn|batchnorm)[^/]*/[^/]+$', re.IGNORECASE)


# --------------------------------------------------------------------------- state and static settings


@flax.struct.dataclass
class SpeedrunState:
    """The train state plus the lookahead (EMA) copy of parameters and BatchNorm statistics."""

    train: TrainState
    ema_params: PyTree
    ema_stats: PyTree
    ema_ready: jax.Array  # bool: the EMA has been initialised
    aug_rng: jax.Array  # augmentation key (folded with the step)

    @property
    def params(self) -> PyTree:
        return self.train.params

    def arrays(self) -> dict[str, PyTree]:
        """The checkpointed part (no functions)."""
        return dict(
            train=self.train.arrays(),
            ema_params=self.ema_params,
            ema_stats=self.ema_stats,
            ema_ready=self.ema_ready,
            aug_rng=self.aug_rng,
        )

    def replace_arrays(self, arrays: dict[str, PyTree]) -> 'SpeedrunState':
        return self.replace(
            train=self.train.replace_arrays(arrays['train']),
            **{k: v for k, v in arrays.items() if k != 'train'},
        )


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The static settings of a step (hashable: part of the compiled function)."""

    batch_size: int
    steps_per_epoch: int
    total_steps: int
    translate: int = 2
    flip: str = 'alternating'
    label_smoothing: float = 0.2
    ema_start_step: int = 0
    ema_every: int = 0  # 0 = no lookahead
    ema_decay_base: float = 0.95
    ema_decay_pow: float = 3.0


def init_speedrun_state(train: TrainState, seed: int) -> SpeedrunState:
    """The speed-run state around ``train`` (the EMA starts as a copy; jitted by the loop, which gives
    every output its own buffer)."""
    return SpeedrunState(
        train=train,
        ema_params=train.params,
        ema_stats=train.batch_stats,
        ema_ready=jnp.asarray(False),
        aug_rng=jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 0x5EED)),
    )


# --------------------------------------------------------------------------- augmentation (in jit)


def crop_flip(images: jax.Array, dy: jax.Array, dx: jax.Array, flip: jax.Array, pad: int) -> jax.Array:
    """``images`` [B, H, W, C] reflect-padded by ``pad`` and cropped back to H x W at offsets ``dy``, ``dx``
    in [0, 2 * pad] (a translation by ``pad - d``), then mirrored left-right where ``flip``."""
    b, h, w, c = images.shape
    if pad:
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')
        crop = lambda img, y, x: jax.lax.dynamic_slice(img, (y, x, 0), (h, w, c))  # noqa: E731
        images = jax.vmap(crop)(padded, dy, dx)
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def draw_augmentation(key: jax.Array, n: int, pad: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-image crop offsets (uniform in 0..2*pad, airbench's ``randint(-r, r + 1)``) and a random flip."""
    ky, kx, kf = jax.random.split(key, 3)
    dy = jax.random.randint(ky, (n,), 0, 2 * pad + 1)
    dx = jax.random.randint(kx, (n,), 0, 2 * pad + 1)
    return dy, dx, jax.random.bernoulli(kf, 0.5, (n,))


def normalize(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def train_batch(data: dict[str, jax.Array], step: jax.Array, aug_key: jax.Array, recipe: Recipe):
    """The augmented, normalised batch of global step ``step`` (pure: a function of step and key)."""
    b, spe = recipe.batch_size, recipe.steps_per_epoch
    epoch, pos = step // spe, step % spe
    perm = jax.lax.dynamic_index_in_dim(data['perms'], epoch % data['perms'].shape[0], keepdims=False)
    idx = jax.lax.dynamic_slice_in_dim(perm, pos * b, b)
    key = jax.random.fold_in(aug_key, step)
    dy, dx, flip = draw_augmentation(key, b, recipe.translate)
    if recipe.flip == 'alternating':
        flip = data['flip_bits'][idx] ^ (epoch % 2 == 1)
    elif recipe.flip == 'none':
        flip = jnp.zeros_like(flip)
    images = crop_flip(data['images'][idx], dy, dx, flip, recipe.translate)
    return {'image': normalize(images, data['mean'], data['std']), 'label': data['labels'][idx]}


# --------------------------------------------------------------------------- the step


def _where(c, a, b):
    return jax.tree.map(lambda x, y: jnp.where(c, x, y), a, b)


def speedrun_step(
    state: SpeedrunState, data: dict[str, jax.Array], recipe: Recipe
) -> tuple[SpeedrunState, dict[str, jax.Array]]:
    """One train step (batch, augmentation, SGD, lookahead) on the device-resident data."""
    step = state.train.step
    batch = train_batch(data, step, state.aug_rng, recipe)
    train, m = train_step(state.train, batch, label_smoothing=recipe.label_smoothing)
    metrics = {'loss': m['loss'], 'top1': m['top1']}
    ema_params, ema_stats, ready = state.ema_params, state.ema_stats, state.ema_ready
    if recipe.ema_every:
        t = step + 1  # airbench's current_steps (counted after the step)
        net = (train.params, train.batch_stats)
        do = (step >= recipe.ema_start_step) & (t % recipe.ema_every == 0)
        rho = recipe.ema_decay_base**recipe.ema_every * (t / recipe.total_steps) ** recipe.ema_decay_pow
        lerped = jax.tree.map(lambda e, p: e + (1.0 - rho) * (p - e), (ema_params, ema_stats), net)  # lerp_
        ema = _where(do, _where(ready, lerped, net), (ema_params, ema_stats))
        ready = ready | do
        end_of_epoch = (t % recipe.steps_per_epoch == 0) | (t == recipe.total_steps)
        params, stats = _where(do | (end_of_epoch & ready), ema, net)
        train = train.replace(params=params, batch_stats=stats)
        ema_params, ema_stats = ema
    new = state.replace(train=train, ema_params=ema_params, ema_stats=ema_stats, ema_ready=ready)
    return new, metrics


def run_steps(
    state: SpeedrunState,
    data: dict[str, jax.Array],
    *,
    recipe: Recipe,
    num_steps: int,
    unroll: int | bool = 1,
) -> tuple[SpeedrunState, dict[str, jax.Array]]:
    """``num_steps`` steps with ``lax.scan`` (``unroll`` as there); metrics stacked ([num_steps] each)."""

    def body(s, _):
        return speedrun_step(s, data, recipe)

    return jax.lax.scan(body, state, None, length=num_steps, unroll=unroll)


def resolve_unroll(unroll: int, platform: str) -> int | bool:
    """``speedrun.unroll``: N > 0 as given; 0 = automatic: fully unrolled on CPU (XLA:CPU runs the
    convolutions of a rolled loop body ~20x slower: 20 s against 0.9 s per airbench94 step of batch 64,
    measured on 2 cores), rolled (1) on GPU / TPU."""
    if unroll < 0:
        raise ValueError(f'speedrun.unroll must be >= 0; got {unroll}')
    if unroll:
        return int(unroll)
    return True if platform == 'cpu' else 1


# --------------------------------------------------------------------------- optimizer


def param_groups(params: PyTree, *, freeze_whiten_kernel: bool = True) -> PyTree:
    """Label per parameter: 'frozen' (the whitening kernel), 'whiten_bias', 'norm' (BatchNorm), 'other'."""

    def label(path, _):
        key = leaf_path(path)
        if key.startswith('whiten/'):
            return 'frozen' if key.endswith('kernel') and freeze_whiten_kernel else 'whiten_bias'
        return 'norm' if NORM_PARAM.search(key) else 'other'

    return jax.tree_util.tree_map_with_path(label, params)


def make_speedrun_optimizer(
    config: ConfigDict,
    schedule: optax.Schedule,
    steps_per_epoch: int,
    *,
    freeze_whiten_kernel: bool = True,
) -> optax.GradientTransformation:
    """``optax.multi_transform`` of :func:`research.train.optim.make_optimizer` per parameter group."""
    sc = config.speedrun
    oc = config.optimizer
    scale = float(sc.bias_lr_scale)
    norm_oc = ConfigDict(oc.to_dict())
    norm_oc.weight_decay = oc.weight_decay / scale
    whiten_steps = int(round(sc.whiten_bias_epochs * steps_per_epoch))
    transforms = {
        'frozen': optax.set_to_zero(),
        'other': make_optimizer(oc, schedule),
        'norm': make_optimizer(norm_oc, lambda s: scale * schedule(s)),
        'whiten_bias': optax.chain(
            make_optimizer(oc, schedule),
            optax.scale_by_schedule(lambda count: (count < whiten_steps).astype(jnp.float32)),
        ),
    }
    labels = functools.partial(param_groups, freeze_whiten_kernel=freeze_whiten_kernel)
    return optax.multi_transform(transforms, labels)


# --------------------------------------------------------------------------- evaluation


def tta_logits(apply_fn, variables: PyTree, images: jax.Array, level: int) -> tuple[jax.Array, jax.Array]:
    """(plain logits, TTA logits) of normalised NHWC ``images``; all views go through one forward pass."""
    b, h, w, _ = images.shape
    mirror = lambda x: x[:, :, ::-1, :]  # noqa: E731
    views = [images]
    if level >= 1:
        views.append(mirror(images))
    if level >= 2:
        padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
        up_left, down_right = padded[:, :h, :w], padded[:, 2 : h + 2, 2 : w + 2]
        views += [up_left, mirror(up_left), down_right, mirror(down_right)]
    logits = apply_fn(variables, jnp.concatenate(views), train=False).reshape(len(views), b, -1)
    if level == 0:
        tta = logits[0]
    elif level == 1:
        tta = 0.5 * (logits[0] + logits[1])
    else:
        tta = 0.25 * (logits[0] + logits[1]) + 0.125 * (logits[2] + logits[3] + logits[4] + logits[5])
    return logits[0], tta


def eval_batch(state: SpeedrunState, images, labels, mask, mean, std, *, level: int) -> dict[str, jax.Array]:
    """Sums over the real examples (``mask``) of a padded uint8 batch."""
    x = normalize(images, mean, std)
    plain, tta = tta_logits(state.train.apply_fn, state.train.variables(), x, level)
    mask = mask.astype(jnp.float32)
    correct = lambda logits: jnp.sum((jnp.argmax(logits, -1) == labels) * mask)  # noqa: E731
    return {
        'top1': correct(tta),
        'top1_plain': correct(plain),
        'loss': jnp.sum(cross_entropy(tta, labels) * mask),
        'count': jnp.sum(mask),
    }


def _padded_batches(images: np.ndarray, labels: np.ndarray, size: int):
    for s in range(0, len(images), size):
        x, y = images[s : s + size], labels[s : s + size]
        n = len(x)
        mask = np.zeros(size, bool)
        mask[:n] = True
        if n < size:
            x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros(size - n, y.dtype)])
        yield x, y, mask


# --------------------------------------------------------------------------- the task


class _DeviceData:
    """The speed run's "iterator": the device-resident train split, the same arrays at every call (the
    step index in the state picks the batch), so its state is a marker."""

    STATE = {'speedrun': True}

    def __init__(self, data: dict[str, jax.Array]):
        self.data = data

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, jax.Array]:
        return self.data

    def get_state(self) -> dict[str, bool]:
        return dict(self.STATE)

    def set_state(self, state) -> None:
        if state != self.STATE:
            raise ValueError(f'a speed run cannot resume the data-iterator state {state!r} of another task')


class Speedrun(Task):
    """airbench94's loop as a task (see the module docstring): one device, K steps per jitted call."""

    name = 'speedrun'
    section = 'speedrun'
    supports = frozenset({'train.precision', 'train.label_smoothing', 'data.image_size', 'data.classes'})
    custom_step = True
    single_device = True
    classifier = True
    best_metric = 'top1'
    progress_keys = ('loss', 'top1')

    @classmethod
    def defaults(cls) -> ConfigDict:
        # The train split on the device, K steps per jitted call (lax.scan), augmentation inside the step.
        return ConfigDict(
            dict(
                steps_per_call=8,  # K: train steps per jitted call
                unroll=0,  # lax.scan unroll; 0 = auto: full on CPU (XLA:CPU is slow in loop bodies), 1 on GPU
                translate=2,  # random crop: reflect-pad by this many pixels, crop back (0 = off)
                flip='alternating',  # alternating (airbench: per-image bit XOR odd epoch) | random | none
                bias_lr_scale=64.0,  # BatchNorm params: lr x this, weight decay / this (airbench's bias_scaler)
                whiten_bias_epochs=3.0,  # the whitening conv's bias trains for this many epochs, then freezes
                whiten_samples=5000,  # train images whose 2x2-patch covariance sets the whitening kernel (0 = off)
                whiten_eps=5e-4,  # kernel = eigenvectors / sqrt(eigenvalue + eps)
                ema_start_epochs=3.0,  # lookahead: from this epoch on, every ema_every steps
                ema_every=5,  # 0 = no lookahead
                ema_decay_base=0.95,  # rho = ema_decay_base^ema_every * (step / total_steps)^ema_decay_pow
                ema_decay_pow=3.0,
                tta_level=2,  # final evaluation: 0 plain, 1 + mirror, 2 + mirror of 1-px translations (airbench)
            )
        )

    def check(self) -> None:
        sc = self.config.speedrun
        if sc.flip not in FLIP_MODES:
            raise ConfigError(f'unknown speedrun.flip {sc.flip!r}; expected one of {", ".join(FLIP_MODES)}')
        if sc.tta_level not in (0, 1, 2):
            raise ConfigError(f'speedrun.tta_level must be 0, 1 or 2; got {sc.tta_level}')
        if sc.steps_per_call < 1:
            raise ConfigError(f'speedrun.steps_per_call must be >= 1; got {sc.steps_per_call}')
        if sc.unroll < 0:
            raise ConfigError(f'speedrun.unroll must be >= 0; got {sc.unroll}')

    # -- data ------------------------------------------------------------------------------------
    def setup(self) -> DataInfo:
        c = self.config
        sc, tc, dc = c.speedrun, c.train, c.data
        t0 = time.perf_counter()
        info = data_lib.get_dataset_info(dc)
        train = data_lib.datasets.get_split(dc, str(dc.train_split))
        test = data_lib.datasets.get_split(dc, str(dc.eval_split))
        self.train_x, train_y = train.gather(np.arange(len(train)))
        self.test_x, self.test_y = test.gather(np.arange(len(test)))
        n = len(self.train_x)
        batch = int(tc.batch_size)
        self.spe = max(n // batch, 1)
        total = parse_duration(tc.duration, self.spe, name='train.duration')
        seed = int(c.seed)
        rng = np.random.default_rng(seed if dc.shuffle_seed < 0 else int(dc.shuffle_seed))
        epochs = max(-(-total // self.spe), 1)
        perms = np.stack([rng.permutation(n) for _ in range(epochs)]).astype(np.int32)
        self.mean = np.asarray(info.mean, np.float32)
        self.std = np.asarray(info.std, np.float32)
        self.host_data = {
            'images': self.train_x,
            'labels': train_y.astype(np.int32),
            'perms': perms,
            'flip_bits': rng.random(n) < 0.5,
            'mean': self.mean,
            'std': self.std,
        }
        self.steps_per_call = int(sc.steps_per_call)
        self.recipe = Recipe(
            batch_size=batch,
            steps_per_epoch=self.spe,
            total_steps=total,
            translate=int(sc.translate),
            flip=str(sc.flip),
            label_smoothing=float(tc.label_smoothing),
            ema_start_step=int(round(sc.ema_start_epochs * self.spe)),
            ema_every=int(sc.ema_every),
            ema_decay_base=float(sc.ema_decay_base),
            ema_decay_pow=float(sc.ema_decay_pow),
        )
        self.data_load_s = time.perf_counter() - t0
        self.whiten_s, self.eval_s, self.final = 0.0, 0.0, {}
        self.info = DataInfo(
            name=info.name,
            num_train=n,
            num_examples={str(dc.train_split): n, str(dc.eval_split): len(self.test_x)},
            image_shape=tuple(info.image_shape),
            num_classes=info.num_classes,
            extra={'train_examples': n, 'test_examples': len(self.test_x)},
        )
        return self.info

    def train_iterator(self, *, seed, global_batch_size, process_index, process_count):
        return _DeviceData(jax.device_put(self.host_data, mesh_lib.batch_sharding(self.mesh)))

    def eval_iterator(self, split, *, global_batch_size, process_index, process_count):
        x, y = (self.test_x, self.test_y) if split == str(self.config.data.eval_split) else self._split(split)
        for images, labels, mask in _padded_batches(x, y.astype(np.int32), global_batch_size):
            yield {'image': images, 'label': labels, 'mask': mask}

    def _split(self, split: str):
        data = data_lib.datasets.get_split(self.config.data, split)
        return data.gather(np.arange(len(data)))

    # -- model and state -------------------------------------------------------------------------
    def build_model(self, dtype=None):
        model = super().build_model(dtype)
        self.whiten_trainable = bool(getattr(model, 'whiten_trainable', False))
        self.whiten_kernel = None
        sc = self.config.speedrun
        abstract = jax.eval_shape(
            functools.partial(self.init_variables, model), jax.random.key_data(jax.random.key(0))
        )
        if 'whiten' in abstract['params'] and sc.whiten_samples:
            t0 = time.perf_counter()
            k = int(abstract['params']['whiten']['kernel'].shape[0])
            sub = (self.train_x[: int(sc.whiten_samples)].astype(np.float32) / 255.0 - self.mean) / self.std
            self.whiten_kernel = np.asarray(whitening_kernel(sub, k, float(sc.whiten_eps)), np.float32)
            self.whiten_s = time.perf_counter() - t0
        return model

    def make_tx(self, schedule):
        return make_speedrun_optimizer(
            self.config, schedule, self.spe, freeze_whiten_kernel=not self.whiten_trainable
        )

    def create_state(self, model, tx, rng):
        train = super().create_state(model, tx, rng)
        if self.whiten_kernel is not None:
            params = dict(train.params)
            params['whiten'] = {**params['whiten'], 'kernel': jnp.asarray(self.whiten_kernel)}
            train = train.replace(params=params, opt_state=tx.init(params))
        return init_speedrun_state(train, int(self.config.seed))

    # -- steps -----------------------------------------------------------------------------------
    def train_step(self, state, data, num_steps: int = 1):
        unroll = resolve_unroll(int(self.config.speedrun.unroll), self.mesh.devices.flat[0].platform)
        return run_steps(state, data, recipe=self.recipe, num_steps=num_steps, unroll=unroll)

    def eval_step(self, state, batch):
        return eval_batch(state, batch['image'], batch['label'], batch['mask'], self.mean, self.std, level=0)

    def eval_step_tta(self, state, batch):
        level = int(self.config.speedrun.tta_level)
        return eval_batch(
            state, batch['image'], batch['label'], batch['mask'], self.mean, self.std, level=level
        )

    def evaluate(self, state, split, batches, run, *, final):
        """Plain evaluation during training; test-time augmentation (``speedrun.tta_level``) at the end
        (timed: ``eval_time_s``, part of airbench's time)."""
        level = int(self.config.speedrun.tta_level) if final else 0
        t0 = time.perf_counter()
        totals = eval_totals(batches, functools.partial(run, fn=self.eval_step_tta) if final else run)
        c = float(totals['count'])
        res = {
            'top1': float(totals['top1']) / c,
            'top1_plain': float(totals['top1_plain']) / c,
            'loss': float(totals['loss']) / c,
            'count': int(c),
            'tta_level': level,
        }
        if final:
            self.eval_s = time.perf_counter() - t0
            self.final = res
        return res, None

    def eval_message(self, res):
        return f'loss {res["loss"]:.4f} top1 {100 * res["top1"]:.2f}% (TTA {res["tta_level"]})'

    def done_message(self, res):
        sc = self.config.speedrun
        return (
            f'{self.config.data.eval_split} top1 {100 * res["top1"]:.2f}% (TTA {sc.tta_level}; plain '
            f'{100 * res["top1_plain"]:.2f}%) | whitening {self.whiten_s:.2f}s, eval {self.eval_s:.1f}s'
        )

    def describe(self) -> str:
        return (
            f'data {self.info.name} train {self.info.num_train} test {len(self.test_x)} | '
            f'batch {self.recipe.batch_size}, {self.steps_per_call} steps per call | data load {self.data_load_s:.1f}s'
        )

    def summary(self, state, summary) -> dict[str, Any]:
        train_s = float(summary.get('train_time_s') or 0.0)
        out = {
            'steps_per_call': self.steps_per_call,
            'device': str(
                getattr(self.mesh.devices.flat[0], 'device_kind', self.mesh.devices.flat[0].platform)
            ),
            'whiten_time_s': self.whiten_s,
            'data_load_s': self.data_load_s,
        }
        if self.final:
            out.update(
                eval_time_s=self.eval_s,
                airbench_time_s=self.whiten_s + train_s + self.eval_s,
                test_accuracy=self.final['top1'],
                test_accuracy_plain=self.final['top1_plain'],
                tta_level=int(self.config.speedrun.tta_level),
            )
        return out
