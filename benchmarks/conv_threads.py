"""Where ResNet-20's CPU time goes: one 3x3 convolution's forward, input gradient and filter gradient,
JAX (XLA:CPU) vs PyTorch, on all cores and pinned to one core, in one run.

    python benchmarks/conv_threads.py                # ResNet-20's three stage shapes, batch 128
    python benchmarks/conv_threads.py --batch=64

Each measurement runs in a fresh process pinned with ``os.sched_setaffinity`` (XLA and PyTorch size
their thread pools by it). The finding this script documents (benchmarks/RESULTS.md): XLA:CPU runs
these convolutions on one thread (the 1-core and all-core times are the same), PyTorch uses every
core; hence ``launch.py --cpu_devices=-1`` (one XLA device per core, data parallel).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

#: (spatial size, channels) of ResNet-20's three stages
SHAPES = ((32, 16), (16, 32), (8, 64))

_JAX = r"""
import json, sys, time
import numpy as np, jax, jax.numpy as jnp
from jax import lax
batch, hw, c, n = map(int, sys.argv[1:5])
dn = ('NHWC', 'HWIO', 'NHWC')
conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((batch, hw, hw, c), np.float32))
w = jnp.asarray(rng.standard_normal((3, 3, c, c), np.float32) * 0.1)
g = jnp.asarray(rng.standard_normal((batch, hw, hw, c), np.float32))
loss = lambda x, w: jnp.sum(conv(x, w) * g)
def ms(f, *a):
    f = jax.jit(f); jax.block_until_ready(f(*a)); jax.block_until_ready(f(*a))
    t = time.perf_counter()
    for _ in range(n): r = f(*a)
    jax.block_until_ready(r)
    return (time.perf_counter() - t) / n * 1e3
print(json.dumps({'fwd': ms(conv, x, w), 'dx': ms(jax.grad(loss, 0), x, w), 'dw': ms(jax.grad(loss, 1), x, w)}))
"""

_TORCH = r"""
import json, sys, time
import torch
batch, hw, c, n = map(int, sys.argv[1:5])
torch.set_num_threads(len(__import__('os').sched_getaffinity(0)))
conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
x = torch.randn(batch, c, hw, hw).contiguous(memory_format=torch.channels_last)
g = torch.randn(batch, c, hw, hw).contiguous(memory_format=torch.channels_last)
def ms(f):
    f(); f(); t = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - t) / n * 1e3
fwd = ms(lambda: conv(x))
xr = x.clone().requires_grad_(True)
def fb():
    xr.grad = None; conv.weight.grad = None
    conv(xr).backward(g)
both = ms(fb)
print(json.dumps({'fwd': fwd, 'bwd': both - fwd}))
"""


def run(code: str, cores: set[int], *args) -> dict:
    def pin():
        os.sched_setaffinity(0, cores)

    r = subprocess.run(
        [sys.executable, '-c', code, *map(str, args)],
        capture_output=True,
        text=True,
        preexec_fn=pin,
        check=False,
    )
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--iters', type=int, default=10)
    args = p.parse_args()
    all_cores = os.sched_getaffinity(0)
    one = {min(all_cores)}
    print(
        f'batch {args.batch}, 3x3 conv, stride 1, NHWC / channels_last; ms per call; {len(all_cores)} cores vs 1'
    )
    print(
        f'{"shape":<10}{"":>6}{"JAX fwd":>9}{"JAX dx":>8}{"JAX dw":>8}{"JAX sum":>9}'
        f'{"torch fwd":>11}{"torch bwd":>11}{"torch sum":>11}{"torch/JAX":>11}'
    )
    for hw, c in SHAPES:
        for label, cores in ((f'{len(all_cores)} cores', all_cores), ('1 core', one)):
            j = run(_JAX, cores, args.batch, hw, c, args.iters)
            t = run(_TORCH, cores, args.batch, hw, c, args.iters)
            js, ts = j['fwd'] + j['dx'] + j['dw'], t['fwd'] + t['bwd']
            print(
                f'{f"{hw}x{hw}x{c}":<10}{label:>8}{j["fwd"]:>7.1f}{j["dx"]:>8.1f}{j["dw"]:>8.1f}{js:>9.1f}'
                f'{t["fwd"]:>11.1f}{t["bwd"]:>11.1f}{ts:>11.1f}{ts / js:>11.2f}',
                flush=True,
            )


if __name__ == '__main__':
    from research import xla_flags

    xla_flags.apply()  # the project's XLA flags before JAX starts, as launch.py
    main()
