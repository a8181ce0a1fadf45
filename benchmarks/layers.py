"""Forward + backward timings of the conv variants in ``research.layers``, JAX vs PyTorch (if importable).

Each op: ``grad`` of ``sum(layer(x))`` w.r.t. params and input, jitted (JAX) / ``loss.backward()``
(PyTorch, channels_last, same threads), warm-up first, then the median of ``--iters`` runs. Ops
with several JAX formulations print one row each ``[impl]``: 1x1 as matmul vs conv; grouped as
per-group dense convs vs ``feature_group_count``; depthwise as ``feature_group_count`` vs explicit
shifted multiply-add; transposed as sub-pixel phases vs lhs dilation vs ``lax.conv_transpose``
(4x4 stride 2, and FCN-32s' 64x64 stride 32 on a batch/8, size/8 input);
'full' padding as an explicit pad before a 'valid' conv vs the conv's own padding. 'batchnorm + relu'
is ``research.layers.common.BatchNorm`` in train mode against ``BatchNorm2d`` + ``ReLU`` in train mode.
The library's ``impl='auto'`` picks the fastest one on CPU (see the docstrings in
``research/layers/conv.py``). 'separable' uses the defaults.

    python benchmarks/layers.py                      # batch 32, 32x32, 64 channels
    python benchmarks/layers.py --iters 5 --only depthwise,transposed
    python benchmarks/layers.py --only batchnorm --batch 128 --channels 16   # ResNet-20's first stage
    python benchmarks/layers.py --only transposed --cpu_conv=onednn   # as the trainers run them on CPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from research import layers as L
from research.kernels import onednn
from research.layers.common import BatchNorm

try:
    import torch
except ImportError:  # the JAX column still prints
    torch = None


def _median_ms(fn, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _jax_case(module, x, cpu_conv: str = 'xla'):
    variables = module.init(jax.random.key(0), x)
    mutable = ['batch_stats'] if 'batch_stats' in variables else False  # BatchNorm in train mode

    def loss(v, x):
        out = module.apply(v, x, mutable=mutable)
        # the updated statistics are returned (has_aux), so the running averages are computed too
        return (jnp.sum(out[0]), out[1]) if mutable else (jnp.sum(out), None)

    # traced with the convolutions the trainers would use (train.cpu_conv resolved)
    step = onednn.scoped(
        jax.jit(lambda v, x: jax.grad(loss, argnums=(0, 1), has_aux=True)(v, x)), cpu_conv == 'onednn'
    )
    return lambda: jax.block_until_ready(step(variables, x))


def _torch_case(module, shape_nhwc):
    x = torch.randn(shape_nhwc[0], shape_nhwc[-1], *shape_nhwc[1:-1])
    fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
    x = x.contiguous(memory_format=fmt).requires_grad_(True)
    module = module.to(memory_format=fmt)

    def run():
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).sum().backward()

    return run


class BatchNormReLU(linen.Module):
    """The project's BatchNorm in train mode (batch statistics, running averages updated), then ReLU;
    ``unbiased_running_var=False``: Flax's running-variance rule (the biased batch variance)."""

    unbiased_running_var: bool = True

    @linen.compact
    def __call__(self, x):
        return linen.relu(
            BatchNorm(use_running_average=False, unbiased_running_var=self.unbiased_running_var)(x)
        )


def cases(c: int):
    """(name, JAX module, torch module factory or None, input kind '2d'/'3d'). Torch factories are
    only called when torch imported."""
    nn = torch.nn if torch is not None else None

    def conv(**kw):
        return lambda: nn.Conv2d(c, c, kw.pop('k', 3), **kw)

    transposed = lambda: nn.ConvTranspose2d(c, c, 4, stride=2, padding=1)
    fcn32 = lambda: nn.ConvTranspose2d(c, c, 64, stride=32, padding=16, bias=False)
    sep = lambda: nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.Conv2d(c, c, 1))
    rows = [
        ('conv 3x3', L.ConvND(c, (3, 3), padding='same'), conv(padding=1), '2d'),
        ('conv 1x1 [matmul]', L.ConvND(c, (1, 1), impl='matmul'), conv(k=1), '2d'),
        ('conv 1x1 [xla]', L.ConvND(c, (1, 1), impl='xla'), conv(k=1), '2d'),
        (
            'grouped 3x3 g=4 [split]',
            L.ConvND(c, 3, padding='same', groups=4, impl='split'),
            conv(padding=1, groups=4),
            '2d',
        ),
        (
            'grouped 3x3 g=4 [xla]',
            L.ConvND(c, 3, padding='same', groups=4, impl='xla'),
            conv(padding=1, groups=4),
            '2d',
        ),
        ('depthwise 3x3 [grouped]', L.DepthwiseConv((3, 3), impl='grouped'), conv(padding=1, groups=c), '2d'),
        ('depthwise 3x3 [shift]', L.DepthwiseConv((3, 3), impl='shift'), conv(padding=1, groups=c), '2d'),
        ('separable 3x3', L.SeparableConv(c, (3, 3)), sep, '2d'),
        ('conv 3x3 full [pre-pad]', L.ConvND(c, 3, padding='full'), conv(padding=2), '2d'),
        ('conv 3x3 full [xla]', L.ConvND(c, 3, padding='full', impl='xla'), conv(padding=2), '2d'),
        (
            'dilated 3x3 d=2',
            L.ConvND(c, (3, 3), padding='same', dilation=2),
            conv(padding=2, dilation=2),
            '2d',
        ),
        ('transposed 4x4 s2 [subpixel]', L.ConvTranspose(c, (4, 4), 2, 1, impl='subpixel'), transposed, '2d'),
        (
            'transposed 4x4 s2 [lhs_dilation]',
            L.ConvTranspose(c, (4, 4), 2, 1, impl='lhs_dilation'),
            transposed,
            '2d',
        ),
        ('transposed 4x4 s2 [lax]', L.ConvTranspose(c, (4, 4), 2, 1, impl='lax'), transposed, '2d'),
        (  # FCN-32s' upsampling (on a 1/32 map: batch/8, size/8)
            'transposed 64x64 s32 [subpixel]',
            L.ConvTranspose(c, 64, 32, 16, use_bias=False, impl='subpixel'),
            fcn32,
            'fcn32',
        ),
        (
            'transposed 64x64 s32 [lhs_dilation]',
            L.ConvTranspose(c, 64, 32, 16, use_bias=False, impl='lhs_dilation'),
            fcn32,
            'fcn32',
        ),
        (
            'batchnorm + relu (train)',
            BatchNormReLU(),
            lambda: nn.Sequential(nn.BatchNorm2d(c), nn.ReLU()),
            '2d',
        ),
        (  # the same with Flax's running-variance rule (the project's before issue 27)
            'batchnorm + relu (train) [biased var]',
            BatchNormReLU(unbiased_running_var=False),
            lambda: nn.Sequential(nn.BatchNorm2d(c), nn.ReLU()),
            '2d',
        ),
        (
            'conv3d 3x3x3',
            L.ConvND(c // 2, (3, 3, 3), padding='same'),
            lambda: nn.Conv3d(c // 2, c // 2, 3, padding=1),
            '3d',
        ),
    ]
    return [(name, m, f if nn is not None else None, kind) for name, m, f, kind in rows]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--size', type=int, default=32, help='2D spatial size; 3D uses size/2 per dim, batch/4')
    p.add_argument('--channels', type=int, default=64, help='2D channels; 3D uses half')
    p.add_argument('--iters', type=int, default=10)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--only', default='', help='comma-separated substrings of op names')
    p.add_argument('--threads', type=int, default=0, help='torch intra-op threads (0: torch default)')
    p.add_argument(
        '--cpu_conv',
        default='xla',
        choices=onednn.CHOICES,
        help="JAX's convolutions, as train.cpu_conv: xla (the layers alone), onednn or auto (the trainers' default)",
    )
    args = p.parse_args(argv)
    cpu_conv = onednn.resolve(args.cpu_conv, 1)
    if torch is not None and args.threads:
        torch.set_num_threads(args.threads)

    shapes = {
        '2d': (args.batch, args.size, args.size, args.channels),
        '3d': (max(args.batch // 4, 1),) + (args.size // 2,) * 3 + (args.channels // 2,),
        'fcn32': (max(args.batch // 8, 1),) + (max(args.size // 8, 1),) * 2 + (args.channels,),
    }
    rng = np.random.default_rng(0)
    inputs = {k: jnp.asarray(rng.standard_normal(s).astype(np.float32)) for k, s in shapes.items()}
    print(
        f'jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__ if torch else "-"}'
        f' ({torch.get_num_threads() if torch else 0} threads), cpus {os.cpu_count()},'
        f' JAX convolutions: {"oneDNN" if cpu_conv == "onednn" else "XLA"}'
    )
    print(
        f'2d input {shapes["2d"]} NHWC, 3d input {shapes["3d"]}; forward+backward, median of {args.iters}\n'
    )
    header = f'{"op":<34} {"jax ms":>9} {"torch ms":>9} {"torch/jax":>9}'
    print(header)
    print('-' * len(header))
    only = [s for s in args.only.split(',') if s]
    for name, module, torch_factory, kind in cases(args.channels):
        if only and not any(s in name for s in only):
            continue
        jax_ms = _median_ms(_jax_case(module, inputs[kind], cpu_conv), args.iters, args.warmup)
        torch_ms = float('nan')
        if torch_factory is not None:
            torch_ms = _median_ms(_torch_case(torch_factory(), shapes[kind]), args.iters, args.warmup)
        print(f'{name:<34} {jax_ms:9.2f} {torch_ms:9.2f} {torch_ms / jax_ms:9.2f}', flush=True)


if __name__ == '__main__':
    from research import xla_flags

    xla_flags.apply()  # the project's XLA flags before JAX starts, as launch.py
    main()
