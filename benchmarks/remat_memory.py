"""Activation memory and step time of the training step with and without ``model.remat``.

    python benchmarks/remat_memory.py                                   # resnet56 at batch 128, memory only
    python benchmarks/remat_memory.py --models=resnet20 --batch=128 --steps=5 --rounds=7
    python benchmarks/remat_memory.py --models=resnet50 --batch=32      # 224 px
    RESEARCH_XLA_FLAGS=0 python benchmarks/remat_memory.py              # XLA:CPU without the project's flag

For each model, the project's jitted train step (``research.train.state.train_step``: SGD momentum,
softmax cross-entropy, BatchNorm in train mode, the state donated) is compiled twice, ``remat=False``
and ``remat=True``, for the same batch, and XLA's buffer assignment is read from
``compiled.memory_analysis()``: ``temp`` is the step's scratch memory (the activations kept for the
backward pass and the gradients' intermediates), ``args`` the state and batch. The parameter trees
are checked equal. ``--steps`` > 0 also times the two steps on random data, alternating (``--rounds``
rounds of ``--steps`` steps each, after 2 warm-up steps): the median step time of each and the ratio
per round (a machine shared with other jobs slows both alike).

On XLA:CPU the saving needs the project's flag (``research/xla_flags.py``,
``--xla_disable_hlo_passes=cse_barrier_expander``): without it XLA:CPU removes the barriers that keep the
recomputation in the backward pass, merges it with the forward, and remat costs memory instead. The
script prints whether the flag is in effect. GPUs and TPUs keep the barriers.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

#: name -> (image size, channels, classes, default batch)
MODELS = {
    'resnet20': (32, 3, 10, 128),
    'resnet56': (32, 3, 10, 128),
    'resnet110': (32, 3, 10, 128),
    'resnet50': (224, 3, 1000, 32),
    'densenet_bc_100_12': (32, 3, 10, 64),
    'efficientnet_b0': (224, 3, 1000, 32),
}


def measure(name: str, remat: bool, batch: int) -> dict:
    """Compiles the model's train step; its memory analysis, and what :func:`time_steps` needs."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from research import models
    from research.train.state import create_train_state, train_step

    size, ch, classes, _ = MODELS[name]
    model = models.create(name, num_classes=classes, remat=remat)
    tx = optax.sgd(0.1, momentum=0.9)
    init = jax.jit(
        functools.partial(create_train_state, model, tx, sample_input=jnp.zeros((1, size, size, ch)))
    )
    state = init(jax.random.key_data(jax.random.key(0)))
    rng = np.random.default_rng(0)
    data = {
        'image': jnp.asarray(rng.standard_normal((batch, size, size, ch), np.float32)),
        'label': jnp.asarray(rng.integers(0, classes, batch).astype(np.int32)),
    }
    t0 = time.perf_counter()
    compiled = jax.jit(train_step, donate_argnums=0).lower(state, data).compile()
    out = {
        'compile_s': time.perf_counter() - t0,
        'tree': jax.tree.map(lambda a: (a.shape, a.dtype), state.params),
    }
    mem = compiled.memory_analysis()
    out['temp'] = mem.temp_size_in_bytes
    out['args'] = mem.argument_size_in_bytes
    out['run'] = {'step': compiled, 'state': state, 'data': data}
    return out


def time_steps(run: dict, steps: int) -> float:
    """Seconds per step over ``steps`` steps (the state carried over in ``run``)."""
    import jax

    t0 = time.perf_counter()
    for _ in range(steps):
        run['state'], m = run['step'](run['state'], run['data'])
    jax.block_until_ready(m)
    return (time.perf_counter() - t0) / steps


def step_times(a: dict, b: dict, steps: int, rounds: int) -> tuple[float, float, list[float]]:
    """Median seconds per step of ``a`` and ``b`` and the per-round ratios b / a: the two programs
    alternate, ``steps`` steps each per round, so a machine shared with other jobs slows both alike."""
    import statistics

    for run in (a['run'], b['run']):
        time_steps(run, 2)  # warm-up
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(time_steps(a['run'], steps))
        tb.append(time_steps(b['run'], steps))
    return statistics.median(ta), statistics.median(tb), [y / x for x, y in zip(ta, tb)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', default='resnet56', help=f'comma-separated, from {", ".join(MODELS)}')
    p.add_argument('--batch', type=int, default=0, help="0 = the model's default (see MODELS)")
    p.add_argument('--steps', type=int, default=0, help='time this many steps per round (0 = memory only)')
    p.add_argument('--rounds', type=int, default=5, help='alternating timing rounds (with --steps)')
    args = p.parse_args(argv)
    import jax

    flag = 'cse_barrier_expander' in os.environ.get('XLA_FLAGS', '')
    print(
        f'backend {jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}; '
        f'research.xla_flags in effect: {"yes" if flag else "no"}'
    )
    mib = 2.0**20
    for name in args.models.split(','):
        if name not in MODELS:
            raise SystemExit(f'unknown model {name!r}; known: {", ".join(MODELS)}')
        batch = args.batch or MODELS[name][3]
        a, b = measure(name, False, batch), measure(name, True, batch)
        assert a['tree'] == b['tree'], 'parameter trees differ'
        print(
            f'{name} batch {batch} at {MODELS[name][0]} px: XLA temp {a["temp"] / mib:,.1f} MiB -> '
            f'{b["temp"] / mib:,.1f} MiB with remat ({b["temp"] / a["temp"]:.2f}x); '
            f'state + batch {a["args"] / mib:,.1f} MiB; compile {a["compile_s"]:.1f} s -> {b["compile_s"]:.1f} s'
        )
        if args.steps:
            ta, tb, ratios = step_times(a, b, args.steps, args.rounds)
            print(
                f'{"":<4}step {ta * 1e3:,.0f} ms -> {tb * 1e3:,.0f} ms with remat (median of {args.rounds} '
                f'alternating rounds of {args.steps} steps; ratio per round '
                f'{", ".join(f"{r:.2f}" for r in sorted(ratios))})'
            )
        del a, b


if __name__ == '__main__':
    from research import xla_flags

    xla_flags.apply()  # the project's XLA flags before JAX starts, as launch.py
    main()
