"""Learning-rate schedules and optimizers (optax), built from ``config.optimizer``/``config.schedule``.

Weight decay follows the papers' recipes as PyTorch implements them: for SGD
and Adam it is coupled L2 (``wd * w`` added to the gradient before momentum,
as ``torch.optim.SGD(weight_decay=...)``); AdamW decays decoupled (Loshchilov &
Hutter 2019).

RMSProp (``name='rmsprop'``, the MobileNet / MnasNet / EfficientNet recipes) follows TF1's
``RMSPropOptimizer`` as those papers' code used it: decay ``b2`` (the squared-gradient average's
decay, Adam's b2), ``momentum``, ``eps`` inside the square root, mean square initialised to 1,
coupled L2 weight decay.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from research.configlib import ConfigError, parse_duration
from research.train import transfer

SCHEDULES = ('constant', 'step', 'cosine', 'linear')
OPTIMIZERS = ('sgd', 'momentum', 'nesterov', 'adam', 'adamw', 'rmsprop')


def make_schedule(sched_cfg, base_lr: float, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
    """A step -> learning-rate function; durations resolved against ``steps_per_epoch``."""
    name = sched_cfg.name
    warmup = parse_duration(sched_cfg.warmup, steps_per_epoch, name='schedule.warmup')
    rest = max(total_steps - warmup, 1)
    if name == 'constant':
        main = optax.constant_schedule(base_lr)
    elif name == 'step':
        bounds = [
            parse_duration(b, steps_per_epoch, name='schedule.boundaries') - warmup
            for b in sched_cfg.boundaries
        ]
        main = optax.piecewise_constant_schedule(base_lr, {b: sched_cfg.decay_factor for b in bounds})
    elif name == 'cosine':
        main = optax.cosine_decay_schedule(base_lr, rest, alpha=sched_cfg.end_factor)
    elif name == 'linear':
        main = optax.linear_schedule(base_lr, base_lr * sched_cfg.end_factor, rest)
    else:
        raise ValueError(f"unknown schedule.name '{name}' (known: {', '.join(SCHEDULES)})")
    if warmup <= 0:
        return main
    ramp = optax.linear_schedule(base_lr * sched_cfg.warmup_init_factor, base_lr, warmup)
    return optax.join_schedules([ramp, main], [warmup])


def _decay_mask(decay_all: bool):
    if decay_all:
        return None
    return lambda params: jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(
    opt_cfg, schedule: optax.Schedule, *, init_exclude: str = '', init_into: str = ''
) -> optax.GradientTransformation:
    """SGD / Nesterov / Adam / AdamW with weight decay and optional gradient clipping; with
    ``optimizer.freeze`` / ``optimizer.lr_multipliers`` set, one such optimizer per parameter group
    (``research.train.transfer``; ``init_exclude`` / ``init_into`` are ``init.exclude`` / ``init.into``
    for ``freeze='pretrained'``)."""
    if float(opt_cfg.lr) < 0:
        raise ConfigError(f'optimizer.lr={opt_cfg.lr} is negative')
    freeze = opt_cfg.get('freeze', '')
    multipliers = tuple(opt_cfg.get('lr_multipliers', ()) or ())
    if not freeze and not multipliers:
        return _make_base(opt_cfg, schedule)
    factors = {f for _, f in transfer.parse_multipliers(multipliers)}
    labels = functools.partial(
        transfer.param_labels, freeze=freeze, multipliers=multipliers, exclude=init_exclude, into=init_into
    )
    return transfer.grouped_optimizer(functools.partial(_make_base, opt_cfg), schedule, labels, factors)


def _make_base(opt_cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    name = opt_cfg.name
    wd = opt_cfg.weight_decay
    mask = _decay_mask(opt_cfg.decay_all)
    parts: list[Any] = []
    if opt_cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(opt_cfg.grad_clip_norm))
    if name in ('sgd', 'momentum', 'nesterov'):
        if wd:
            parts.append(optax.add_decayed_weights(wd, mask))
        nesterov = opt_cfg.nesterov or name == 'nesterov'
        momentum = opt_cfg.momentum if (name != 'sgd' or opt_cfg.momentum) else None
        parts.append(optax.sgd(schedule, momentum=momentum or None, nesterov=nesterov))
    elif name == 'adam':
        if wd:
            parts.append(optax.add_decayed_weights(wd, mask))
        parts.append(optax.adam(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps))
    elif name == 'adamw':
        parts.append(
            optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps, weight_decay=wd, mask=mask)
        )
    elif name == 'rmsprop':
        if wd:
            parts.append(optax.add_decayed_weights(wd, mask))
        parts.append(
            optax.rmsprop(
                schedule,
                decay=opt_cfg.b2,
                eps=opt_cfg.eps,
                initial_scale=1.0,
                eps_in_sqrt=True,
                momentum=opt_cfg.momentum or None,
            )
        )
    else:
        raise ValueError(f"unknown optimizer.name '{name}' (known: {', '.join(OPTIMIZERS)})")
    return optax.chain(*parts)
