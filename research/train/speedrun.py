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
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from research.config import parse_duration, to_dict, validate_config
from research.kernels import onednn
from research.train.optim import make_optimizer, make_schedule
from research.train.reporting import MetricWriter, Progress, format_seconds
from research.train.state import TrainState, create_train_state, cross_entropy, train_step
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
    return SpeedrunState(
        train=train,
        ema_params=jax.tree.map(jnp.copy, train.params),  # own buffers: the state is donated
        ema_stats=jax.tree.map(jnp.copy, train.batch_stats),
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


# --------------------------------------------------------------------------- the run


def _check_augment_unused(config: ConfigDict) -> None:
    aug = config.data.augment
    used = [k for k, v in aug.items() if v]
    if used:
        raise ValueError(
            f"task 'speedrun' augments on the device (speedrun.translate, speedrun.flip); "
            f"data.augment.{used[0]} is not used: set it to 0/False"
        )


def _load_split(data_cfg: ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
    from research.data import datasets

    data = datasets.get_split(data_cfg, split)
    return data.gather(np.arange(len(data)))


def train_speedrun(
    config: ConfigDict,
    workdir: str | Path,
    *,
    show_progress: bool = True,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Runs the speed run of ``config`` in ``workdir`` (``config.json``, ``metrics.jsonl``, ``summary.json``);
    returns the summary. ``stop_after_steps``: stop early (the run is then incomplete; no resume)."""
    from research import data as data_lib
    from research import models
    from research.train.loop import NonFiniteLossError, build_model

    validate_config(config)
    _check_augment_unused(config)
    wall0 = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sc, tc, dc = config.speedrun, config.train, config.data
    if sc.flip not in FLIP_MODES:
        raise ValueError(f"unknown speedrun.flip {sc.flip!r}; expected one of {', '.join(FLIP_MODES)}")
    if sc.tta_level not in (0, 1, 2):
        raise ValueError(f'speedrun.tta_level must be 0, 1 or 2; got {sc.tta_level}')
    if sc.steps_per_call < 1:
        raise ValueError(f'speedrun.steps_per_call must be >= 1; got {sc.steps_per_call}')
    log = print if show_progress else (lambda *a, **k: None)
    device = jax.devices()[0]

    # -- data (host -> device once)
    t0 = time.perf_counter()
    info = data_lib.get_dataset_info(dc)
    train_x, train_y = _load_split(dc, str(dc.train_split))
    test_x, test_y = _load_split(dc, str(dc.eval_split))
    n = len(train_x)
    batch = int(tc.batch_size)
    spe = n // batch
    if spe < 1:
        raise ValueError(f'train.batch_size={batch} is larger than the train split ({n} examples)')
    total = parse_duration(tc.duration, spe, name='train.duration')
    eval_every = parse_duration(tc.eval_every or 0, spe, name='train.eval_every')
    stop_at = total if stop_after_steps is None else min(stop_after_steps, total)
    epochs = max(math.ceil(total / spe), 1)
    seed = int(config.seed)
    shuffle_seed = seed if dc.shuffle_seed < 0 else int(dc.shuffle_seed)
    rng = np.random.default_rng(shuffle_seed)
    perms = np.stack([rng.permutation(n) for _ in range(epochs)]).astype(np.int32)
    flip_bits = rng.random(n) < 0.5
    mean = np.asarray(info.mean, np.float32)
    std = np.asarray(info.std, np.float32)
    data = jax.device_put(
        {
            'images': train_x,
            'labels': train_y.astype(np.int32),
            'perms': perms,
            'flip_bits': flip_bits,
            'mean': mean,
            'std': std,
        },
        device,
    )
    data_load_s = time.perf_counter() - t0

    # -- model, optimizer, state
    model = build_model(config, info.num_classes)
    schedule = make_schedule(config.schedule, config.optimizer.lr, total, spe)
    freeze = not getattr(model, 'whiten_trainable', False)
    tx = make_speedrun_optimizer(config, schedule, spe, freeze_whiten_kernel=freeze)
    sample = jnp.zeros((1, *info.image_shape), jnp.float32)
    on = onednn.resolve(str(tc.cpu_conv), 1) == 'onednn'  # one device; train.cpu_conv on CPU
    init = onednn.scoped(jax.jit(functools.partial(create_train_state, model, tx, sample_input=sample)), on)
    train_state = init(jax.random.key_data(jax.random.key(seed)))
    num_params = models.count_params(train_state.params, collection=None)
    whiten_s = 0.0
    if 'whiten' in train_state.params and sc.whiten_samples:
        from research.models.airbench import whitening_kernel

        t0 = time.perf_counter()
        k = int(train_state.params['whiten']['kernel'].shape[0])
        sub = (train_x[: int(sc.whiten_samples)].astype(np.float32) / 255.0 - mean) / std
        kernel = jnp.asarray(whitening_kernel(sub, k, float(sc.whiten_eps)))
        params = dict(train_state.params)
        params['whiten'] = {**params['whiten'], 'kernel': jax.device_put(kernel, device)}
        train_state = train_state.replace(params=params)
        jax.block_until_ready(train_state.params)
        whiten_s = time.perf_counter() - t0
    state = init_speedrun_state(train_state, seed)
    recipe = Recipe(
        batch_size=batch,
        steps_per_epoch=spe,
        total_steps=total,
        translate=int(sc.translate),
        flip=str(sc.flip),
        label_smoothing=float(tc.label_smoothing),
        ema_start_step=int(round(sc.ema_start_epochs * spe)),
        ema_every=int(sc.ema_every),
        ema_decay_base=float(sc.ema_decay_base),
        ema_decay_pow=float(sc.ema_decay_pow),
    )

    # -- ahead-of-time compilation (timed separately)
    t0 = time.perf_counter()
    k_steps = int(sc.steps_per_call)
    unroll = resolve_unroll(int(sc.unroll), device.platform)
    compiled: dict[int, Any] = {}

    def runner(num: int):
        if num not in compiled:
            fn = onednn.scoped(
                jax.jit(functools.partial(run_steps, recipe=recipe, num_steps=num, unroll=unroll), donate_argnums=(0,)),
                on,
            )
            compiled[num] = fn.lower(state, data).compile()
        return compiled[num]

    runner(min(k_steps, stop_at) or 1)
    if stop_at % k_steps and stop_at > k_steps:
        runner(stop_at % k_steps)
    eval_bs = int(tc.eval_batch_size or batch)
    eval_shapes = (
        jax.ShapeDtypeStruct((eval_bs, *test_x.shape[1:]), test_x.dtype),
        jax.ShapeDtypeStruct((eval_bs,), np.int32),
        jax.ShapeDtypeStruct((eval_bs,), bool),
    )
    evaluators = {}
    for level in {int(sc.tta_level)} | ({0} if eval_every else set()):
        fn = onednn.scoped(jax.jit(functools.partial(eval_batch, level=level)), on)
        evaluators[level] = fn.lower(state, *eval_shapes, data['mean'], data['std']).compile()
    compile_s = time.perf_counter() - t0

    test_batches = jax.device_put(list(_padded_batches(test_x, test_y.astype(np.int32), eval_bs)), device)

    def evaluate(level: int) -> dict[str, float]:
        totals = None
        for x, y, mask in test_batches:
            out = evaluators[level](state, x, y, mask, data['mean'], data['std'])
            totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
        totals = {k: float(v) for k, v in jax.device_get(totals).items()}
        c = totals['count']
        return {
            'top1': totals['top1'] / c,
            'top1_plain': totals['top1_plain'] / c,
            'loss': totals['loss'] / c,
            'count': int(c),
            'tta_level': level,
        }

    resolved = to_dict(config)
    resolved['_resolved'] = dict(
        steps_per_epoch=spe,
        total_steps=total,
        num_params=num_params,
        devices=1,
        processes=1,
        dataset=info.name,
        num_classes=info.num_classes,
        image_shape=list(info.image_shape),
        train_examples=n,
        test_examples=len(test_x),
    )
    (workdir / 'config.json').write_text(json.dumps(resolved, indent=2, default=str))
    log(
        f'speedrun {config.model.name}: {num_params:,} params | data {info.name} train {n} test {len(test_x)} | '
        f'batch {batch}, {spe} steps/epoch, {total} steps, {k_steps} per call | {device.platform}'
        f'{" (oneDNN convolutions)" if on else ""} | '
        f'compile {compile_s:.1f}s, whitening {whiten_s:.2f}s, data {data_load_s:.1f}s | workdir {workdir}'
    )

    # -- train
    writer = MetricWriter(workdir)
    progress = Progress(stop_at, 0, batch, enabled=show_progress)
    log_every = max(int(tc.log_every_steps), 1)
    step, train_s, history = 0, 0.0, []
    try:
        while step < stop_at:
            num = min(k_steps, stop_at - step)
            t0 = time.perf_counter()
            state, metrics = runner(num)(state, data)
            metrics = jax.device_get(metrics)
            train_s += time.perf_counter() - t0
            prev, step = step, step + num
            loss = float(np.mean(metrics['loss']))
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f'loss is {loss} at step {step} (epoch {step / spe:.2f}); stopping (a speed run keeps no '
                    f'checkpoint). Try a lower optimizer.lr (now {config.optimizer.lr}).'
                )
            if step // log_every > prev // log_every or step == stop_at:
                row = {
                    'loss': loss,
                    'top1': float(np.mean(metrics['top1'])),
                    'lr': float(schedule(step - 1)),
                    'epoch': step / spe,
                    'images_per_sec': num * batch / max(time.perf_counter() - t0, 1e-9),
                }
                writer.write('train', step, row)
                progress.update(step, {'loss': row['loss'], 'top1': row['top1'], 'lr': row['lr']})
            if eval_every and step // eval_every > prev // eval_every and step < total:
                res = evaluate(0)
                res['epoch'] = step / spe
                writer.write(str(dc.eval_split), step, res)
                history.append({'step': step, **res})
                progress.message(
                    f"eval @ step {step} (epoch {res['epoch']:.2f}): loss {res['loss']:.4f} "
                    f"top1 {100 * res['top1']:.2f}%"
                )
                progress.reset_clock(step)
    finally:
        progress.close()

    summary: dict[str, Any] = {
        'task': 'speedrun',
        'model': config.model.name,
        'dataset': info.name,
        'num_params': num_params,
        'step': step,
        'total_steps': total,
        'epoch': step / spe,
        'complete': step >= total,
        'batch_size': batch,
        'steps_per_call': k_steps,
        'devices': 1,
        'platform': device.platform,
        'cpu_conv': 'onednn' if on else 'xla',
        'device': str(getattr(device, 'device_kind', device.platform)),
        'jax': jax.__version__,
        'train_time_s': train_s,
        'compile_time_s': compile_s,
        'whiten_time_s': whiten_s,
        'data_load_s': data_load_s,
        'images_per_sec': step * batch / train_s if train_s > 0 else None,
    }
    t0 = time.perf_counter()
    res = evaluate(int(sc.tta_level))
    eval_s = time.perf_counter() - t0
    res['epoch'] = step / spe
    writer.write(str(dc.eval_split), step, res)
    writer.close()
    summary.update(
        eval_time_s=eval_s,
        airbench_time_s=whiten_s + train_s + eval_s,
        test_accuracy=res['top1'],
        test_accuracy_plain=res['top1_plain'],
        tta_level=int(sc.tta_level),
        final={str(dc.eval_split): res},
        history=history,
        wall_time_s=time.perf_counter() - wall0,
        workdir=str(workdir),
    )
    (workdir / 'summary.json').write_text(json.dumps(summary, indent=2))
    log(
        f"done: speedrun {config.model.name} on {info.name} | {step} steps ({step / spe:.2f} epochs) | "
        f"{dc.eval_split} top1 {100 * res['top1']:.2f}% (TTA {sc.tta_level}; plain {100 * res['top1_plain']:.2f}%) | "
        f"train {format_seconds(train_s)} ({train_s:.2f}s, {summary['images_per_sec'] or 0:.0f} img/s), "
        f"compile {compile_s:.1f}s, eval {eval_s:.1f}s, wall {format_seconds(summary['wall_time_s'])} | "
        f"workdir {workdir}"
    )
    return summary
