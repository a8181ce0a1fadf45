"""What the checkpoint checksums cost: save, verify and restore times with a ResNet-20-sized state.

  python benchmarks/checkpoint_checksums.py [--model=resnet20] [--optimizer=momentum] [--repeats=5]

Builds the model's real train state (params, BatchNorm statistics, optimizer state) on one CPU device,
then times, median of ``--repeats``: a synchronous save (orbax + the sha256 record written before the
commit), the record alone (``file_digests`` over the step's files), verification (``verify_dir``) and
a restore (which verifies first). Writes to a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from research import models  # noqa: E402
from research.config import base_config  # noqa: E402
from research.train import checkpoint as ckpt_lib  # noqa: E402
from research.train.optim import make_optimizer, make_schedule  # noqa: E402
from research.train.state import create_train_state  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--model', default='resnet20')
    ap.add_argument('--optimizer', default='momentum')
    ap.add_argument('--image', default='32,32,3')
    ap.add_argument('--repeats', type=int, default=5)
    args = ap.parse_args()

    c = base_config()
    c.optimizer.name = args.optimizer
    model = models.create(args.model, num_classes=10)
    tx = make_optimizer(c.optimizer, make_schedule(c.schedule, 0.1, 1000, 100))
    shape = tuple(int(d) for d in args.image.split(','))
    state = jax.jit(lambda r: create_train_state(model, tx, r, jnp.zeros((1, *shape))))(
        jax.random.key_data(jax.random.key(0))
    )
    arrays = state.arrays()
    nbytes = sum(x.nbytes for x in jax.tree.leaves(arrays))
    n_params = models.count_params(state.params, collection=None)
    abstract = ckpt_lib.abstract_like(arrays)
    times: dict[str, list[float]] = {'save': [], 'record': [], 'verify': [], 'restore': []}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = ckpt_lib.Checkpointer(tmp, keep=2, async_save=False)
        for i in range(args.repeats + 1):
            t0 = time.perf_counter()
            ckpt.save(i, arrays, {'position': i}, {'step': i})
            t1 = time.perf_counter()
            ckpt_lib.file_digests(ckpt.step_dir(i))
            t2 = time.perf_counter()
            assert ckpt.verify(i) is None
            t3 = time.perf_counter()
            ckpt.restore(i, abstract)
            t4 = time.perf_counter()
            if i:  # the first round warms up orbax and TensorStore
                for k, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    times[k].append(1000 * dt)
        files = ckpt_lib.file_digests(ckpt.step_dir(args.repeats))
        on_disk = sum(size for size, _ in files.values())
        ckpt.close()
    print(
        f'{args.model} + {args.optimizer}: {n_params:,} params, state {nbytes / 1e6:.2f} MB in memory, '
        f'{len(files)} files / {on_disk / 1e6:.2f} MB on disk; median of {args.repeats} (ms):'
    )
    for k, v in times.items():
        print(f'  {k:8s} {statistics.median(v):8.1f}   (min {min(v):.1f}, max {max(v):.1f})')


if __name__ == '__main__':
    main()
