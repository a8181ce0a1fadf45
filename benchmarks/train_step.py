"""Training-step throughput, JAX vs PyTorch, same model, batch and data on device, in one run.

    python benchmarks/train_step.py                    # lenet5_modern and resnet20 on this machine
    python benchmarks/train_step.py --models=resnet20 --batch=128 --steps=10
    python benchmarks/train_step.py --models=resnet50 --resnet50_batch=32 --steps=3 --no_compile_times
    python benchmarks/train_step.py --models=resnet20,resnet56 --no_compile_times --without_research_xla_flags
    python benchmarks/train_step.py --steps=20 --no_compile_times --repeats=5   # median of 5 ratios
    python benchmarks/train_step.py --models=airbench94_cifar --batch=1024 --steps=3 --no_compile_times
    # GPU (the issue's ResNet-50 goal): bf16 compute (JAX: float32 params, bf16 activations; torch: AMP
    # autocast), torch.compile + channels_last; the CPU-only rows (oneDNN, one device per core) are skipped
    python benchmarks/train_step.py --models=resnet50 --resnet50_batch=256 --precision=bfloat16 --torch_compile \
        --steps=20 --no_compile_times

Prints images/s for the project's jitted train step (research.train.state.train_step: SGD
momentum, softmax cross-entropy, BatchNorm in train mode) and for the equivalent PyTorch model
and step (eager, channels_last where it helps, torch.compile optionally), and the ratio
jax/torch (>1 means JAX is faster). Also prints the JAX compile time, cold and with the
persistent compilation cache warm (a second process). JAX runs on one CPU device and, data parallel
(``research.train.distributed.set_cpu_devices``, ``launch.py --cpu_devices``), on one device per core,
each in its own process. ``--precision=bfloat16``: JAX with the model's ``dtype`` bfloat16 (what
``train.precision`` sets), torch under ``torch.autocast(dtype=bfloat16)``. Torch runs on CUDA when
there is one (``--torch_device``), JAX on its default backend. Needs `pip install -e '.[torch]'`.
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

#: name -> (image size, channels, classes)
MODELS = {
    'lenet5_modern': (32, 1, 10),
    'resnet20': (32, 3, 10),
    'resnet56': (32, 3, 10),
    'resnet50': (224, 3, 1000),
    'airbench94_cifar': (32, 3, 10),  # the speed run's net (Jordan 2024); batch 1024 in its recipe
}


def jax_step_time(
    name: str, batch: int, steps: int, cpu_devices: int = 1, cpu_conv: str = 'xla', precision: str = 'float32'
) -> tuple[float, float]:
    """Seconds per training step and compile seconds; ``cpu_devices`` > 1: data parallel over that many
    CPU devices (must be set before JAX starts: see :func:`jax_step_time_subprocess`); ``cpu_conv``:
    'onednn' computes the convolutions with oneDNN (research.kernels.onednn)."""
    import jax
    import jax.numpy as jnp
    import optax

    from research import models
    from research.kernels import onednn
    from research.train.mesh import batch_sharding, make_mesh, replicate
    from research.train.state import create_train_state, train_step

    onednn.set_enabled(cpu_conv == 'onednn')
    size, ch, classes = MODELS[name]
    model = models.create(
        name, num_classes=classes, **({'dtype': jnp.bfloat16} if precision == 'bfloat16' else {})
    )
    tx = optax.sgd(0.1, momentum=0.9)
    init = jax.jit(
        functools.partial(create_train_state, model, tx, sample_input=jnp.zeros((1, size, size, ch)))
    )
    state = init(jax.random.key_data(jax.random.key(0)))
    rng = np.random.default_rng(0)
    data = {
        'image': rng.standard_normal((batch, size, size, ch), np.float32),
        'label': rng.integers(0, classes, batch).astype(np.int32),
    }
    if cpu_devices > 1:  # the trainer's path: batch split on 'data', state replicated, global-batch BN
        assert jax.device_count() == cpu_devices, (jax.devices(), cpu_devices)
        mesh = make_mesh()
        state, data = replicate(state, mesh), jax.device_put(data, batch_sharding(mesh))
    else:
        data = jax.device_put(data)
    step = jax.jit(train_step, donate_argnums=0)
    t0 = time.perf_counter()
    state, m = step(state, data)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    for _ in range(2):
        state, m = step(state, data)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, data)
    jax.block_until_ready(m)
    return (time.perf_counter() - t0) / steps, compile_s


def jax_step_time_subprocess(
    name: str,
    batch: int,
    steps: int,
    cpu_devices: int,
    research_xla_flags: bool = True,
    cpu_conv: str = 'xla',
    precision: str = 'float32',
) -> float:
    """``jax_step_time`` in a fresh process whose CPU is split into ``cpu_devices`` devices;
    ``research_xla_flags=False``: without the flags ``research.xla_flags`` sets (RESEARCH_XLA_FLAGS=0)."""
    code = (
        'import sys; from research import xla_flags; xla_flags.apply();'
        'from research.train.distributed import set_cpu_devices; set_cpu_devices(int(sys.argv[1]));'
        'sys.path.insert(0, sys.argv[2]); from train_step import jax_step_time;'
        f'print(jax_step_time({name!r}, {batch}, {steps}, int(sys.argv[1]), {cpu_conv!r}, {precision!r})[0])'
    )
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, **({} if research_xla_flags else {'RESEARCH_XLA_FLAGS': '0'}))
    r = subprocess.run(
        [sys.executable, '-c', code, str(cpu_devices), here],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if r.returncode:
        raise RuntimeError(f'jax step with {cpu_devices} CPU devices failed:\n{r.stderr[-3000:]}')
    return float(r.stdout.strip().splitlines()[-1])


def torch_model(name: str):
    import torch
    import torch.nn.functional as F
    from torch import nn

    if name == 'resnet50':
        import torchvision

        return torchvision.models.resnet50()
    if name == 'airbench94_cifar':  # airbench94.py's layers: BN weight frozen at 1, exact GELU

        def group(cin, cout):
            bn1, bn2 = nn.BatchNorm2d(cout, eps=1e-12), nn.BatchNorm2d(cout, eps=1e-12)
            for bn in (bn1, bn2):
                bn.weight.requires_grad = False
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.MaxPool2d(2),
                bn1,
                nn.GELU(),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                bn2,
                nn.GELU(),
            )

        whiten = nn.Conv2d(3, 24, 2)
        whiten.weight.requires_grad = False
        return nn.Sequential(
            whiten,
            nn.GELU(),
            group(24, 64),
            group(64, 256),
            group(256, 256),
            nn.MaxPool2d(3),
            nn.Flatten(),
            nn.Linear(256, 10, bias=False),
        )
    if name == 'lenet5_modern':
        return nn.Sequential(
            nn.Conv2d(1, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(400, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, 10),
        )

    class Block(nn.Module):  # He et al. 2015 CIFAR basic block, option-A shortcut
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.pad = cout - cin
            self.stride = stride

        def forward(self, x):
            y = F.relu(self.b1(self.c1(x)))
            y = self.b2(self.c2(y))
            r = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
            if self.pad:
                r = F.pad(r, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
            return F.relu(y + r)

    layers, cin = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()], 16
    n = (int(name.removeprefix('resnet')) - 2) // 6  # resnet20, resnet56: 6n + 2
    for i, cout in enumerate((16, 32, 64)):
        for j in range(n):
            layers.append(Block(cin, cout, 2 if (i > 0 and j == 0) else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return torch.nn.Sequential(*layers)


def torch_step_time(
    name: str,
    batch: int,
    steps: int,
    channels_last: bool,
    compile_: bool,
    precision: str = 'float32',
    device: str = 'cpu',
) -> float:
    import contextlib

    import torch

    size, ch, classes = MODELS[name]
    model = torch_model(name).to(device)
    x = torch.randn(batch, ch, size, size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    amp = (
        (lambda: torch.autocast(device_type=device.split(':')[0], dtype=torch.bfloat16))
        if precision == 'bfloat16'
        else contextlib.nullcontext
    )
    sync = torch.cuda.synchronize if device.startswith('cuda') else (lambda: None)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with amp():
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    if compile_:
        step = torch.compile(step)
    for _ in range(2):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


def compile_times(name: str, batch: int) -> tuple[float, float]:
    """Cold compile, then a second process with the persistent cache warm."""
    cache = tempfile.mkdtemp(prefix='jax_cache_')
    code = (
        "import jax, sys; jax.config.update('jax_compilation_cache_dir', sys.argv[1]);"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0);"
        'sys.path.insert(0, sys.argv[2]); from train_step import jax_step_time;'
        f'print(jax_step_time({name!r}, {batch}, 1)[1])'
    )
    here = os.path.dirname(os.path.abspath(__file__))
    out = []
    for _ in range(2):
        r = subprocess.run(
            [sys.executable, '-c', code, cache, here], capture_output=True, text=True, check=True
        )
        out.append(float(r.stdout.strip().splitlines()[-1]))
    return out[0], out[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', default='lenet5_modern,resnet20')
    p.add_argument('--batch', type=int, default=128, help='global batch (resnet50: --resnet50_batch)')
    p.add_argument('--resnet50_batch', type=int, default=32)
    p.add_argument('--steps', type=int, default=10)
    p.add_argument(
        '--cpu_devices',
        type=int,
        default=-1,
        help='also time JAX data parallel over this many CPU devices (-1: one per core; 0/1: skip)',
    )
    p.add_argument('--torch_compile', action='store_true', help='also time torch.compile')
    p.add_argument('--no_compile_times', action='store_true', help='skip the cold/cached compile timing')
    p.add_argument(
        '--without_research_xla_flags',
        action='store_true',
        help='also time JAX on 1 device without research.xla_flags (RESEARCH_XLA_FLAGS=0)',
    )
    p.add_argument(
        '--onednn',
        action=argparse.BooleanOptionalAction,
        default=True,
        help='also time JAX on 1 device with oneDNN convolutions (research.kernels.onednn), if installed',
    )
    p.add_argument(
        '--repeats',
        type=int,
        default=1,
        help='N > 1: also N alternating rounds of JAX+oneDNN and torch channels_last; median ratio and range',
    )
    p.add_argument(
        '--hugepages',
        action=argparse.BooleanOptionalAction,
        default=True,
        help="restart with glibc malloc's huge pages (research/hugepages.py; JAX and torch both run with them)",
    )
    p.add_argument(
        '--precision',
        choices=('float32', 'bfloat16'),
        default='float32',
        help='bfloat16: JAX model dtype bfloat16 (float32 params), torch AMP autocast',
    )
    p.add_argument('--torch_device', default='', help="torch device ('' = cuda if available, else cpu)")
    args = p.parse_args()
    if args.hugepages:
        from research.hugepages import reexec_with_hugepages

        reexec_with_hugepages()
    import torch

    from research.kernels import onednn

    tdev = args.torch_device or ('cuda' if torch.cuda.is_available() else 'cpu')
    jax_platform = subprocess.run(  # in a child: importing JAX here would take the GPU's memory
        [sys.executable, '-c', 'import jax; print(jax.default_backend())'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    if jax_platform != 'cpu':  # oneDNN convolutions and one device per core are CPU rows
        args.onednn, args.cpu_devices = False, 0
    prec = args.precision
    tstep = functools.partial(torch_step_time, precision=prec, device=tdev)
    jstep = functools.partial(jax_step_time_subprocess, precision=prec)
    if args.onednn and not onednn.available():
        print(f'oneDNN convolutions skipped: {onednn.unavailable_reason()}')
        args.onednn = False

    ndev = len(os.sched_getaffinity(0)) if args.cpu_devices == -1 else args.cpu_devices
    tunables = os.environ.get('GLIBC_TUNABLES', '')
    print(
        f'GLIBC_TUNABLES={tunables!r}; torch {torch.__version__} on {tdev} threads={torch.get_num_threads()}; '
        f'JAX on {jax_platform}; batch {args.batch} (resnet50 {args.resnet50_batch}); precision {prec}; '
        f'JAX on 1 device and on {ndev} CPU devices (data parallel)'
    )
    print(
        f'{"model":<15}{"jax img/s":>11}{f"jax {ndev}dev":>11}{"torch img/s":>13}{"torch CL":>10}'
        f'{"jax/torch":>11}{f"{ndev}dev/torch":>12}{"compile cold s":>16}{"cached s":>10}'
    )
    for name in args.models.split(','):
        batch = args.resnet50_batch if name == 'resnet50' else args.batch
        jt = jstep(name, batch, args.steps, 1)
        jn = jstep(name, batch, args.steps, ndev) if ndev > 1 else float('nan')
        tt = tstep(name, batch, args.steps, channels_last=False, compile_=False)
        tcl = tstep(name, batch, args.steps, channels_last=True, compile_=False)
        best = min(tt, tcl)
        cold, warm = (float('nan'),) * 2 if args.no_compile_times else compile_times(name, batch)
        f = '.1f' if batch / tt < 100 else '.0f'
        print(
            f'{name:<15}{batch / jt:>11{f}}{batch / jn:>11{f}}{batch / tt:>13{f}}{batch / tcl:>10{f}}'
            f'{best / jt:>11.2f}{best / jn:>12.2f}{cold:>16.2f}{warm:>10.2f}',
            flush=True,
        )
        if args.without_research_xla_flags:
            jo = jstep(name, batch, args.steps, 1, research_xla_flags=False)
            print(
                f'{"":<15}without research.xla_flags: jax {batch / jo:{f}} img/s, jax/torch {best / jo:.2f}'
            )
        if args.onednn:
            jd = jstep(name, batch, args.steps, 1, cpu_conv='onednn')
            print(f'{"":<15}with oneDNN convolutions: jax {batch / jd:{f}} img/s, jax/torch {best / jd:.2f}')
            if args.repeats > 1:  # alternate the two, one ratio per round: robust to shared-core drift
                rounds = [(jd, tcl)]
                for _ in range(args.repeats - 1):
                    rounds.append(
                        (
                            jstep(name, batch, args.steps, 1, cpu_conv='onednn'),
                            tstep(name, batch, args.steps, channels_last=True, compile_=False),
                        )
                    )
                ratios = sorted(t / j for j, t in rounds)
                print(
                    f'{"":<15}oneDNN vs torch channels_last, {len(rounds)} alternating rounds: jax '
                    f'{np.median([batch / j for j, _ in rounds]):{f}} img/s, torch '
                    f'{np.median([batch / t for _, t in rounds]):{f}} img/s (medians); jax/torch median '
                    f'{np.median(ratios):.2f}, range {ratios[0]:.2f}-{ratios[-1]:.2f}',
                    flush=True,
                )
        if args.torch_compile:
            tc = tstep(name, batch, args.steps, channels_last=True, compile_=True)
            print(
                f'{"":<15}torch.compile channels_last: {batch / tc:.0f} img/s, jax/torch {tc / jt:.2f}, '
                f'{ndev}dev/torch {tc / jn:.2f}'
            )


if __name__ == '__main__':
    from research import xla_flags

    xla_flags.apply()  # the project's XLA flags before JAX starts, as launch.py
    main()
