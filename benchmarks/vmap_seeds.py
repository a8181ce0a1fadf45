"""S seeds trained one after another vs as one vmapped program (research/experiments/vmap_seeds.py).

  python benchmarks/vmap_seeds.py                       # LeNet-5 (modern) on digits, 8 seeds x 100 steps
  python benchmarks/vmap_seeds.py --seeds=4 --steps=200 --batch_size=32

Both sides run the same train step (``research.train.state.train_step``) on the same batches
(each seed its own data order), data loading included, compilation excluded (one warm-up step
each, reported separately). Prints the wall time of each and the speed-up.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
from absl import app, flags

from research.experiments.vmap_seeds import SeedPrograms, seed_key

_SEEDS = flags.DEFINE_integer('seeds', 8, 'Number of seeds S.')
_STEPS = flags.DEFINE_integer('steps', 100, 'Train steps per seed.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Batch size per seed.')
_CONFIG = flags.DEFINE_string('config', 'lenet5_digits', 'lenet5_digits (modern LeNet-5 on digits).')


def main(argv):
    del argv
    from experiments.classification import lenet5_digits

    config = lenet5_digits.get_config()
    config.train.batch_size = _BATCH.value
    S, N = _SEEDS.value, _STEPS.value
    config.train.duration = f'{N} steps'
    progs = SeedPrograms(config)
    seeds = list(range(S))

    # warm-up (compilation) on throwaway states
    t = time.perf_counter()
    st = progs.init_one(seed_key(0))
    st, _ = progs.step_one(st, next(progs.train_iterators([0])[0]))
    jax.block_until_ready(st)
    compile_one = time.perf_counter() - t
    t = time.perf_counter()
    sts = progs.init_many(jnp.stack([seed_key(s) for s in seeds]))
    sts, _ = progs.step_many(sts, progs.stack([next(it) for it in progs.train_iterators(seeds)]))
    jax.block_until_ready(sts)
    compile_many = time.perf_counter() - t

    # S sequential runs
    t = time.perf_counter()
    for s in seeds:
        state = progs.init_one(seed_key(s))
        it = progs.train_iterators([s])[0]
        for _ in range(N):
            state, metrics = progs.step_one(state, next(it))
        jax.block_until_ready((state, metrics))
    sequential = time.perf_counter() - t

    # one vmapped run of S copies
    t = time.perf_counter()
    states = progs.init_many(jnp.stack([seed_key(s) for s in seeds]))
    iters = progs.train_iterators(seeds)
    for _ in range(N):
        states, metrics = progs.step_many(states, progs.stack([next(i) for i in iters]))
    jax.block_until_ready((states, metrics))
    vmapped = time.perf_counter() - t

    images = S * N * config.train.batch_size
    dev = jax.devices()[0]
    print(
        f'{config.model.name} on {config.data.name}, batch {config.train.batch_size}, {S} seeds x {N} steps, '
        f'{jax.device_count()} {dev.platform} device(s) ({dev.device_kind})'
    )
    print(f'  compile: single step {compile_one:.1f} s, vmapped step {compile_many:.1f} s')
    print(f'  sequential: {sequential:7.2f} s  {images / sequential:8.0f} img/s')
    print(f'  vmapped:    {vmapped:7.2f} s  {images / vmapped:8.0f} img/s')
    print(f'  speed-up: {sequential / vmapped:.2f}x')


if __name__ == '__main__':
    from research import xla_flags

    xla_flags.apply()  # the project's XLA flags before JAX starts, as launch.py
    app.run(main)
