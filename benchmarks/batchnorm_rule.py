"""BatchNorm + ReLU in train mode with torch's running-variance rule (the default) against Flax's
(``unbiased_running_var=False``), forward + backward with the updated statistics returned, jitted:
the two alternate call by call (so that a loaded machine slows both alike); min and median ms.

    python benchmarks/batchnorm_rule.py            # batch 128: 32x32x16, 16x16x32, 8x8x64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from layers import BatchNormReLU, _jax_case  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--iters', type=int, default=200)
    args = p.parse_args(argv)
    for c, s in ((16, 32), (32, 16), (64, 8)):
        x = jax.random.normal(jax.random.key(0), (args.batch, s, s, c))
        runs = {
            'torch rule': _jax_case(BatchNormReLU(unbiased_running_var=True), x),
            'flax rule': _jax_case(BatchNormReLU(unbiased_running_var=False), x),
        }
        times = {k: [] for k in runs}
        for f in runs.values():
            f()
            f()
        for _ in range(args.iters):
            for k, f in runs.items():
                t0 = time.perf_counter()
                f()
                times[k].append(1e3 * (time.perf_counter() - t0))
        cells = ', '.join(
            f'{k} min {min(v):.2f} / median {statistics.median(v):.2f} ms' for k, v in times.items()
        )
        print(f'{args.batch}x{s}x{s}x{c}: {cells}', flush=True)


if __name__ == '__main__':
    main()
