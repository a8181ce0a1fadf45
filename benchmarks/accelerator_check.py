"""Accelerator check: is this GPU / TPU giving the speed it should? One run, three figures, one results block.

    # a GPU or TPU machine, with the project installed (pip install -e '.[cuda12,torch]' or '.[tpu]'):
    python benchmarks/accelerator_check.py --cifar10=/data/cifar10            # a CIFAR-10 folder or .tgz
    # any machine, tiny sizes (what tests/test_benchmarks.py runs on CPU):
    python benchmarks/accelerator_check.py --smoke --cifar10=/tmp/tiny_cifar --results=/tmp/results.md

1. **ResNet-50 bf16 training step** (batch 256): the project's jitted ``train_step`` (float32 parameters,
   bfloat16 compute) against PyTorch with ``torch.compile``, AMP bfloat16 autocast and channels_last, on
   the same device kind (``benchmarks/train_step.py``'s two steps). Goal on an H100/H200: >= 1.15x PyTorch
   and >= 3,500 img/s. Without a CUDA device for PyTorch (TPU) only JAX's img/s is given.
2. **Input pipeline at 224 px** (ResNet-50, bf16, batch 256): the trainer's loop on the real grain pipeline
   (the CIFAR-10 images upsampled to 224 px, ImageNet-style zoom + crop + flip) against
   ``data.synthetic`` (``benchmarks/input_pipeline.py``). Goal: >= 0.90 of synthetic.
3. **airbench94 speed run** on CIFAR-10 (``experiments/classification/airbench_cifar.py``, bf16): the
   time airbench reports (whitening + training + TTA evaluation) against its published 3.09 s on an
   A100. Goal: within 1.25x.

Each runs in its own process (JAX and PyTorch never share a GPU's memory), with a time limit; a failure
is recorded with its cause instead of stopping the others. The block (date, device, versions, command,
the three rows) is printed and appended to ``--results`` (default: this repository's
``benchmarks/RESULTS.md``; ``--results=`` to skip). Nothing here assumes a particular machine or path:
the data comes from ``--cifar10``, and without it the two data checks are skipped with a note.
``--smoke``: ResNet-20 at batch 8, the pipeline at 32 px, airbench's ``quick`` recipe on a width-4 net:
seconds on a CPU, to check the script itself, not the hardware.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
AIRBENCH_PUBLISHED_S = 3.09  # airbench94, A100 (Jordan 2024)
GOALS = {'train_step': (1.15, 3500.0), 'pipeline': 0.90, 'airbench': 1.25}


def _python(code: str, *args: str, timeout: int, env: dict | None = None) -> str:
    """Runs ``code`` in a fresh Python (the benchmarks directory importable); its stdout, or RuntimeError."""
    e = dict(os.environ if env is None else env)
    e['PYTHONPATH'] = os.pathsep.join([str(HERE), str(REPO), e.get('PYTHONPATH', '')])
    r = subprocess.run(
        [sys.executable, '-c', code, *args], capture_output=True, text=True, timeout=timeout, env=e, cwd=REPO
    )
    if r.returncode:
        tail = (r.stderr or r.stdout).strip().splitlines()
        raise RuntimeError(f'exit {r.returncode}: {tail[-1] if tail else "no output"}')
    return r.stdout


def devices(timeout: int = 300) -> dict:
    """JAX's devices, and PyTorch's CUDA device if any, each asked in a child process."""
    out = json.loads(
        _python(
            'import json, jax; d = jax.devices(); print(json.dumps(dict(platform=d[0].platform, '
            'kind=d[0].device_kind, count=len(d), jax=jax.__version__)))',
            timeout=timeout,
        )
        .strip()
        .splitlines()[-1]
    )
    try:
        t = (
            _python(
                'import torch; print(torch.__version__); '
                "print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')",
                timeout=timeout,
            )
            .strip()
            .splitlines()
        )
        out['torch'], out['torch_cuda'] = t[0], (t[1] if len(t) > 1 else '')
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        out['torch'], out['torch_cuda'] = f'unavailable ({e})', ''
    return out


def train_step_check(
    model: str, batch: int, steps: int, torch_compile: bool, dev: dict, timeout: int
) -> dict:
    """img/s of JAX's bf16 train step and of PyTorch's (compile + AMP + channels_last) on one device."""
    jax_s = float(
        _python(
            'import sys; from train_step import jax_step_time_subprocess as f; '
            "print(f(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), 0, precision='bfloat16'))",
            model,
            str(batch),
            str(steps),
            timeout=timeout,
        ).split()[-1]
    )
    row = {'jax_img_s': batch / jax_s}
    torch_device = 'cuda' if dev.get('torch_cuda') else ('cpu' if dev['platform'] == 'cpu' else '')
    if not torch_device:
        row['torch_note'] = f"no CUDA device for PyTorch beside JAX's {dev['platform']}"
        return row
    torch_s = float(
        _python(
            'import sys; from train_step import torch_step_time as f; '
            "print(f(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), True, sys.argv[4] == '1', "
            "precision='bfloat16', device=sys.argv[5]))",
            model,
            str(batch),
            str(steps),
            '1' if torch_compile else '0',
            torch_device,
            timeout=timeout,
        ).split()[-1]
    )
    row.update(torch_img_s=batch / torch_s, ratio=torch_s / jax_s, torch_device=torch_device)
    return row


_PIPELINE_ROW = re.compile(r'^(synthetic|pipeline, \d+ threads)\s+([\d,]+)\s+([\d.]+)', re.M)


def pipeline_check(config: str, sets: list[str], steps: int, threads: int, timeout: int) -> dict:
    """``benchmarks/input_pipeline.py``: the trainer on the real pipeline vs data.synthetic."""
    cmd = [
        sys.executable,
        str(HERE / 'input_pipeline.py'),
        f'--config={config}',
        f'--steps={steps}',
        f'--num_threads={threads}',
        *(f'--set={s}' for s in sets),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if r.returncode:
        tail = r.stderr.strip().splitlines()
        raise RuntimeError(f'input_pipeline.py exit {r.returncode}: {tail[-1] if tail else ""}')
    rows = {name: float(rate.replace(',', '')) for name, rate, _ in _PIPELINE_ROW.findall(r.stdout)}
    real = rows.get(f'pipeline, {threads} threads')
    if 'synthetic' not in rows or real is None:
        raise RuntimeError(f'input_pipeline.py printed no rates:\n{r.stdout[-1000:]}')
    return {'real_img_s': real, 'synthetic_img_s': rows['synthetic'], 'ratio': real / rows['synthetic']}


def airbench_check(config: str, sets: list[str], timeout: int) -> dict:
    """The airbench94 speed run through launch.py; airbench's time and TTA accuracy from summary.json."""
    with tempfile.TemporaryDirectory(prefix='airbench_check_') as workdir:
        cmd = [
            sys.executable,
            str(REPO / 'launch.py'),
            f'--config={config}',
            f'--workdir={workdir}',
            '--config.train.precision=bfloat16',
            '--noprogress',
            *(f'--config.{s}' for s in sets),
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        summary = Path(workdir) / 'summary.json'
        if r.returncode or not summary.exists():
            tail = (r.stderr or r.stdout).strip().splitlines()
            raise RuntimeError(f'launch.py exit {r.returncode}: {tail[-1] if tail else ""}')
        s = json.loads(summary.read_text())
    t = float(s['airbench_time_s'])
    return {
        'seconds': t,
        'accuracy': float(s['test_accuracy']),
        'train_s': float(s['train_time_s']),
        'ratio': t / AIRBENCH_PUBLISHED_S,
    }


def _fmt(x: float) -> str:
    return f'{x:,.0f}' if x >= 100 else f'{x:.1f}'


def format_block(results: dict, dev: dict, command: str, args) -> str:
    """The dated Markdown block for RESULTS.md (also printed)."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    device = f'{dev["count"]} x {dev["kind"]} ({dev["platform"]})'
    lines = [
        f'### Accelerator check, {when}: {device}{" [smoke]" if args.smoke else ""}',
        '',
        f'`{command}`; jax {dev["jax"]}, torch {dev.get("torch", "-")}'
        + (f' on {dev["torch_cuda"]}' if dev.get('torch_cuda') else ''),
        '',
        '| check | JAX | reference | ratio | goal (H100/H200) |',
        '|---|---|---|---|---|',
    ]
    r = results.get('train_step')
    what = f'{args.model} bf16 training step, batch {args.batch}'
    if isinstance(r, str):
        lines.append(f'| {what} | failed: {r} | | | >= {GOALS["train_step"][0]}x torch, >= 3,500 img/s |')
    elif r is not None:
        torch_desc = (
            'torch.compile + AMP bf16 + channels_last'
            if args.torch_compile
            else 'torch AMP bf16 + channels_last'
        )
        ref = (
            f'{torch_desc} on {r["torch_device"]}: {_fmt(r["torch_img_s"])} img/s'
            if 'ratio' in r
            else r['torch_note']
        )
        ratio = f'{r["ratio"]:.2f}x' if 'ratio' in r else '-'
        lines.append(
            f'| {what} | {_fmt(r["jax_img_s"])} img/s | {ref} | {ratio} | >= 1.15x, >= 3,500 img/s |'
        )
    r = results.get('pipeline')
    what = f'input pipeline ({args.pipeline_desc})'
    if isinstance(r, str):
        lines.append(f'| {what} | {r} | | | >= 0.90 of synthetic |')
    elif r is not None:
        lines.append(
            f'| {what} | {_fmt(r["real_img_s"])} img/s | data.synthetic {_fmt(r["synthetic_img_s"])} img/s | '
            f'{r["ratio"]:.2f} | >= 0.90 |'
        )
    r = results.get('airbench')
    what = 'airbench94 speed run, CIFAR-10, bf16' + (' (smoke settings)' if args.smoke else '')
    if isinstance(r, str):
        lines.append(f'| {what} | {r} | | | <= 1.25x of 3.09 s |')
    elif r is not None:
        lines.append(
            f'| {what} | {r["seconds"]:.2f} s ({r["accuracy"]:.2%} TTA top-1; '
            f'training {r["train_s"]:.2f} s) | '
            f'airbench94 published {AIRBENCH_PUBLISHED_S} s (A100) | {r["ratio"]:.2f}x | <= 1.25x |'
        )
    return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        '--cifar10', default='', help='CIFAR-10 as a <split>/<class>/<image> folder or a .tgz of one'
    )
    p.add_argument('--smoke', action='store_true', help='tiny sizes: check the script, not the hardware')
    p.add_argument('--only', default='train_step,pipeline,airbench', help='comma-separated checks to run')
    p.add_argument('--model', default=None, help='train-step model (default resnet50; smoke resnet20)')
    p.add_argument('--batch', type=int, default=None, help='train-step batch (default 256; smoke 8)')
    p.add_argument('--steps', type=int, default=None, help='timed train steps (default 20; smoke 2)')
    p.add_argument(
        '--torch_compile',
        action=argparse.BooleanOptionalAction,
        default=True,
        help="PyTorch with torch.compile (the goal's reference)",
    )
    p.add_argument(
        '--pipeline_steps', type=int, default=None, help='timed steps per pipeline run (30; smoke 2)'
    )
    p.add_argument('--num_threads', type=int, default=None, help='data.num_threads (default 16; smoke 0)')
    p.add_argument('--airbench_set', action='append', default=[], help='extra speed-run override key=value')
    p.add_argument('--timeout', type=int, default=900, help='seconds allowed per check')
    p.add_argument(
        '--results', default=str(HERE / 'RESULTS.md'), help="file the block is appended to ('' = none)"
    )
    args = p.parse_args(argv)
    smoke = args.smoke
    args.model = args.model or ('resnet20' if smoke else 'resnet50')
    args.batch = args.batch or (8 if smoke else 256)
    args.steps = args.steps or (2 if smoke else 20)
    args.pipeline_steps = args.pipeline_steps or (2 if smoke else 30)
    threads = args.num_threads if args.num_threads is not None else (0 if smoke else 16)
    size, pbatch = (32, 16) if smoke else (224, 256)
    args.pipeline_desc = (
        f'{"ResNet-20" if smoke else "ResNet-50"} bf16, {size} px, batch {pbatch}, {threads} threads'
    )
    only = set(args.only.split(','))
    command = 'python benchmarks/accelerator_check.py ' + ' '.join(
        shlex.quote(a) for a in (argv or sys.argv[1:])
    )

    dev = devices()
    on = f' on {dev["torch_cuda"]}' if dev['torch_cuda'] else ''
    print(
        f'devices: {dev["count"]} x {dev["kind"]} ({dev["platform"]}), jax {dev["jax"]};',
        f'torch {dev["torch"]}{on}',
    )
    results: dict = {}
    if 'train_step' in only:
        try:
            results['train_step'] = train_step_check(
                args.model, args.batch, args.steps, args.torch_compile, dev, args.timeout
            )
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
            results['train_step'] = str(e)[:300]
        print('train step:', results['train_step'], flush=True)
    data = args.cifar10
    if data and not Path(data).exists():
        raise SystemExit(
            f'--cifar10={data!r} does not exist (a CIFAR-10 <split>/<class>/<image> folder or .tgz)'
        )
    for name in ('pipeline', 'airbench'):
        if name in only and not data:
            results[name] = 'skipped: no --cifar10 data given'
    if 'pipeline' in only and data:
        model = 'resnet_cifar.py:depth=20,folder' if smoke else 'resnet_imagenet.py:model=resnet50,quick'
        sets = [
            f'data.path={data}',
            f'data.image_size={size}',
            f'train.batch_size={pbatch}',
            'train.precision=bfloat16',
        ]
        if not smoke:
            sets += ['data.augment.crop_padding=28', 'data.augment.scale=0.25']
        try:
            results['pipeline'] = pipeline_check(
                f'experiments/classification/{model}', sets, args.pipeline_steps, threads, args.timeout
            )
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            results['pipeline'] = f'failed: {str(e)[:300]}'
        print('input pipeline:', results['pipeline'], flush=True)
    if 'airbench' in only and data:
        spec = f'experiments/classification/airbench_cifar.py:path={data}'
        sets = list(args.airbench_set)
        if smoke:
            spec += ',quick,width=4,tta=0,batch=32,epochs=1'
            sets += ['speedrun.whiten_samples=64', 'data.train_split=train', 'data.eval_split=test']
        try:
            results['airbench'] = airbench_check(spec, sets, args.timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            results['airbench'] = f'failed: {str(e)[:300]}'
        print('airbench94:', results['airbench'], flush=True)
    block = format_block(results, dev, command, args)
    print('\n' + block, flush=True)
    if args.results:
        path = Path(args.results)
        with path.open('a') as f:
            f.write(('\n' if path.exists() and path.stat().st_size else '') + block)
        print(f'appended to {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
