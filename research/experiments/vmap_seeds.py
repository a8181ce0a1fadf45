"""Several seeds of a small model as one program: ``jax.vmap`` of the ordinary train step.

Seed ``s`` gets what ``train_and_evaluate`` would give it: the initialisation from
``jax.random.key(s)``, its own data order and augmentation (``make_train_iterator(seed=s)``)
and the same optimizer/schedule, so copy ``s`` of a vmapped run matches the single run of
seed ``s`` (to float rounding; ``tests/test_sweep.py`` checks 1e-5 after a few steps). The
S copies' batches are stacked on a leading axis and :func:`research.train.state.train_step`
is vmapped over (state, batch). Worth it where one model leaves the device idle (LeNet-sized
nets, small batches); one device only (no mesh), no checkpoints: a tool for seed studies and
the benchmark in ``benchmarks/vmap_seeds.py``, not a replacement for the run loop.

Measured on the 2 shared CPU cores (LeNet-5, batch 32, 2-8 seeds): the vmapped program is
*slower* (0.45-0.9x of S sequential runs): vmapping a conv over per-seed kernels makes it a
grouped convolution (``feature_group_count=S``), which XLA:CPU runs far below its plain-conv
speed. The gain is expected on GPU (small nets leave it idle; cuDNN has grouped convs); measure
there with the benchmark before relying on it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from research import data as data_lib
from research import tasks
from research.train.state import TrainState, create_train_state, eval_step, train_step


def seed_key(seed: int) -> jax.Array:
    """The init key of seed ``seed``, as :meth:`research.train.loop.Trainer.init_state` makes it."""
    return jax.random.key_data(jax.random.key(seed))


class SeedPrograms:
    """The compiled pieces for one config: single-seed and vmapped init / train step / eval step."""

    def __init__(self, config: ConfigDict):
        if config.data.get('on_device', False):
            raise ValueError(
                'data.on_device=True is not supported by the vmapped seeds (set data.on_device=False)'
            )
        self.config = config
        self.trainer = tasks.trainer(config, show_progress=False)  # resolves model, data, optimizer
        t = self.trainer
        sample = jnp.zeros((1, *t.info.image_shape), jnp.float32)
        init = functools.partial(create_train_state, t.model, t.tx, sample_input=sample)
        step = functools.partial(train_step, label_smoothing=config.train.label_smoothing)
        self.init_one = jax.jit(init)
        self.step_one = jax.jit(step, donate_argnums=(0,))
        self.init_many = jax.jit(jax.vmap(init))
        self.step_many = jax.jit(jax.vmap(step), donate_argnums=(0,))
        self.eval_many = jax.jit(jax.vmap(eval_step, in_axes=(0, None)))

    @property
    def total_steps(self) -> int:
        return self.trainer.total_steps

    def train_iterators(self, seeds: Sequence[int]) -> list:
        return [
            data_lib.make_train_iterator(self.config.data, seed=s, global_batch_size=self.trainer.batch_size)
            for s in seeds
        ]

    @staticmethod
    def stack(batches: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {k: np.stack([b[k] for b in batches]) for k in batches[0]}

    def evaluate(self, states: TrainState) -> list[dict[str, float]]:
        """Exact metrics of each copy over the eval split (same batches for all copies)."""
        it = data_lib.make_eval_iterator(
            self.config.data, self.config.data.eval_split, global_batch_size=self.trainer.eval_batch_size
        )
        totals = None
        for batch in it:
            out = self.eval_many(states, {k: jnp.asarray(v) for k, v in batch.items()})
            totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
        totals = jax.device_get(totals)
        n = totals['count']
        return [
            {
                'loss': float(totals['loss'][i] / n[i]),
                'top1': float(totals['top1'][i] / n[i]),
                'top5': float(totals['top5'][i] / n[i]),
                'count': int(n[i]),
            }
            for i in range(len(n))
        ]


def unstack(tree: Any, i: int) -> Any:
    """Copy ``i`` of a stacked (vmapped) pytree."""
    return jax.tree.map(lambda x: x[i], tree)


def train_seeds(
    config: ConfigDict,
    seeds: Sequence[int],
    *,
    stop_after_steps: int | None = None,
    evaluate: bool = True,
    programs: SeedPrograms | None = None,
) -> dict[str, Any]:
    """Trains one copy of ``config`` per seed in one vmapped program (``config.seed`` is ignored).

    Returns ``{'states': stacked TrainState, 'seeds', 'steps', 'train': [{'step', 'loss': [S], ...}],
    'final': [per-seed eval metrics] (if ``evaluate``)}``. ``stop_after_steps`` stops early on the
    full run's schedule, like :func:`research.train.train_and_evaluate`'s.
    """
    seeds = [int(s) for s in seeds]
    progs = programs or SeedPrograms(config)
    steps = progs.total_steps if stop_after_steps is None else min(stop_after_steps, progs.total_steps)
    states = progs.init_many(jnp.stack([seed_key(s) for s in seeds]))
    iters = progs.train_iterators(seeds)
    pending = []
    for _ in range(steps):
        batch = progs.stack([next(it) for it in iters])
        states, metrics = progs.step_many(states, batch)
        pending.append(metrics)  # fetched at the end: no host sync per step
    history = [
        {'step': i + 1, **{k: np.asarray(v) for k, v in m.items()}}
        for i, m in enumerate(jax.device_get(pending))
    ]
    out: dict[str, Any] = {'states': states, 'seeds': seeds, 'steps': steps, 'train': history}
    if evaluate:
        out['final'] = progs.evaluate(states)
    return out
