"""Input-pipeline throughput against synthetic data, in one run, through the trainer's own loop.

    python benchmarks/input_pipeline.py                                  # ResNet-20, CIFAR-10 folder, batch 128
    python benchmarks/input_pipeline.py --steps=40 --repeats=3 --num_threads=0,2
    python benchmarks/input_pipeline.py --cpu_devices=-1                 # data parallel over one device per core
    python benchmarks/input_pipeline.py --host_only --num_threads=0,2 --host_batches=4 \\
        --config=experiments/classification/resnet_imagenet.py:model=resnet50,quick --set=data.image_size=224 \\
        --set=data.augment.crop_padding=28 --set=data.augment.scale=0.25 --set=train.batch_size=256
    # GPU: ResNet-50 at 224 px (the CIFAR-10 folder upsampled; ImageNet-style zoom + crop + flip), bf16
    python benchmarks/input_pipeline.py --config=experiments/classification/resnet_imagenet.py:model=resnet50,quick \\
        --set=data.image_size=224 --set=data.augment.crop_padding=28 --set=data.augment.scale=0.25 \\
        --set=train.batch_size=256 --set=train.precision=bfloat16 --steps=40 --num_threads=8,16 --on_device

Each measurement is ``research.tasks.train_and_evaluate`` (what ``launch.py`` runs) for ``--steps`` timed
steps after the untimed compiling one, in a scratch workdir: once with ``data.synthetic=True`` (one
random batch made on the devices once: no decoding, augmentation, normalisation or host-to-device copy)
and once per ``--num_threads`` value with the real grain pipeline of the config (``data.num_threads``
worker threads, 0 = the main thread between steps). The images/s are the trainer's own figure
(``summary.json``'s ``images_per_sec``: synchronised windows, compile excluded). Also printed: the host
pipeline alone (``make_train_iterator``, batches/s without training). The issue's goal: real >= 90% of
synthetic. ``--repeats`` N alternates synthetic and real N times and prints the median ratio.
``--on_device`` adds rows with ``data.on_device=True``: the pipeline ships uint8 images and the
augmentation draws, and the jitted step augments and normalises (``research.data.device_augment``).

``--vs_torch`` instead compares the ImageNet recipe's host side with PyTorch's, on the same JPEGs
(``--images`` CIFAR-10 photos upscaled to ImageNet sizes of several aspect ratios, ~500 x 375, with
noise; written once to ``--jpeg_dir``): this package's train pipeline (``data.augment.random_resized_crop``
+ flip + ``data.normalize='imagenet'``, 224 px; decode, crop, resize, flip, normalise, batch) against a
``torch.utils.data.DataLoader`` over ``torchvision.datasets.ImageFolder`` with ``RandomResizedCrop(224)``,
``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize`` (Pillow, as torchvision's reference recipe),
alternating, ``--rounds`` times, for each ``--workers`` count W (grain ``data.num_workers`` = DataLoader
``num_workers`` = W; W = 0: both in the main process, torch limited to one thread). Images/s per core
= images/s / max(W, 1); the ratio is ours / torch's (goal >= 1.0)::

    python benchmarks/input_pipeline.py --vs_torch --workers=0,2 --rounds=3
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = 'experiments/classification/resnet_cifar.py:depth=20,folder'


def parse_set(items: list[str]) -> dict[str, object]:
    """``key=value`` strings to overrides (values read as Python literals, else kept as strings)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition('=')
        if not sep:
            raise SystemExit(f'--set expects key=value, got {item!r}')
        try:
            out[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key.strip()] = raw
    return out


def load_config(spec: str, overrides: dict[str, object]):
    from research.experiments.sweep import apply_overrides, load_config_module

    path, _, arg = spec.partition(':')
    config = load_config_module(REPO / path if not os.path.isabs(path) else path).get_config(arg or None)
    return apply_overrides(config, overrides)


def timed_run(config, steps: int, *, synthetic: bool, num_threads: int, on_device: bool = False) -> float:
    """Images/s of ``steps`` timed training steps (the trainer's figure), in a scratch workdir."""
    from research.experiments.sweep import apply_overrides
    from research.tasks import train_and_evaluate

    c = apply_overrides(
        config,
        {
            'data.synthetic': synthetic,
            'data.num_threads': num_threads,
            'data.on_device': on_device,
            'train.duration': f'{steps + 2} steps',  # stopped one step earlier: no final evaluation
            'train.log_every_steps': steps + 1,
            'train.eval_every': '',
            'train.checkpoint_every': '',
        },
    )
    with (
        tempfile.TemporaryDirectory(prefix='pipeline_bench_') as workdir,
        contextlib.redirect_stdout(io.StringIO()),
    ):
        summary = train_and_evaluate(c, workdir, stop_after_steps=steps + 1, show_progress=False)
    return float(summary['images_per_sec'])


def host_rate(config, batches: int, num_threads: int, on_device: bool = False) -> float:
    """Images/s of the host pipeline alone (no training): ``batches`` batches after the first."""
    from research import data as data_lib
    from research.experiments.sweep import apply_overrides

    c = apply_overrides(config, {'data.num_threads': num_threads, 'data.on_device': on_device})
    it = data_lib.make_train_iterator(c.data, seed=c.seed, global_batch_size=int(c.train.batch_size))
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * int(c.train.batch_size) / (time.perf_counter() - t0)


def device_prepare_rate(config, repeats: int = 3) -> float:
    """Images/s of ``data.on_device``'s in-step work alone (augment + normalise, jitted, on the default
    device): the best of ``repeats`` runs on one pipeline batch."""
    import jax

    from research import data as data_lib
    from research.data import device_augment
    from research.experiments.sweep import apply_overrides

    c = apply_overrides(config, {'data.on_device': True, 'data.num_threads': 0})
    batch = jax.device_put(
        next(data_lib.make_train_iterator(c.data, seed=c.seed, global_batch_size=int(c.train.batch_size)))
    )
    aug = device_augment.DeviceAugment.from_config(c.data, batch['image'].shape[-1])
    prepare = jax.jit(lambda b: device_augment.prepare_batch(b, aug)['image'])
    prepare(batch).block_until_ready()
    best = float('inf')
    for _ in range(repeats):
        t0 = time.perf_counter()
        prepare(batch).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return int(c.train.batch_size) / best


SIZES = ((500, 375), (375, 500), (500, 333), (333, 500), (640, 480), (480, 640), (500, 500), (800, 400))


def make_jpegs(root: Path, count: int, classes: int = 10) -> Path:
    """``count`` large JPEGs under ``root/train/<class>/`` (kept if already there): CIFAR-10 photos from
    ../shared/data upscaled (bicubic) to ``SIZES`` with noise, or generated images without it."""
    import tarfile

    from PIL import Image

    train = root / 'train'
    if train.exists() and sum(1 for _ in train.rglob('*.jpg')) == count:
        return root
    photos, tgz = [], REPO.parent / 'shared' / 'data' / 'cifar10-jpg.tgz'
    if tgz.exists():
        with tarfile.open(tgz, 'r|gz') as tar:
            for m in tar:
                if m.isfile() and m.name.endswith('.jpg'):
                    photos.append(
                        np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())).convert('RGB'))
                    )
                    if len(photos) == count:
                        break
    rng = np.random.default_rng(0)
    while len(photos) < count:
        photos.append(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8))
    for i, photo in enumerate(photos):
        w, h = SIZES[i % len(SIZES)]
        img = np.asarray(Image.fromarray(photo).resize((w, h), Image.BICUBIC)).astype(np.int16)
        img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
        d = train / f'c{i % classes}'
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f'{i:05d}.jpg', quality=90)
    (root / 'test').mkdir(exist_ok=True)
    for c in range(classes):  # the folder builder wants the same classes in every split
        (root / 'test' / f'c{c}').mkdir(exist_ok=True)
        src = next((train / f'c{c}').glob('*.jpg'))
        (root / 'test' / f'c{c}' / '0.jpg').write_bytes(src.read_bytes())
    return root


def _rate(it, batch: int, batches: int) -> float:
    next(it)  # workers started, first batch made
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t0)


def ours_rate(root: Path, data_dir: Path, batch: int, batches: int, workers: int) -> float:
    from research import data as data_lib

    cfg = data_lib.data_config_defaults()
    cfg.name, cfg.path, cfg.data_dir, cfg.image_size = 'image_folder', str(root), str(data_dir), 224
    cfg.augment.random_resized_crop, cfg.augment.flip, cfg.normalize = True, True, 'imagenet'
    cfg.num_workers = workers
    it = data_lib.make_train_iterator(cfg, seed=0, global_batch_size=batch)
    try:
        return _rate(it, batch, batches)
    finally:
        it.close()


def torch_rate(root: Path, batch: int, batches: int, workers: int) -> float:
    import torch
    import torchvision
    from torchvision import transforms as T

    torch.set_num_threads(1)  # workers use one thread each; the main process too when W = 0
    tf = T.Compose(
        [
            T.RandomResizedCrop(224),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    ds = torchvision.datasets.ImageFolder(str(root / 'train'), transform=tf)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers else None,
    )

    def endless():
        while True:
            yield from loader

    return _rate(endless(), batch, batches)


def vs_torch(args) -> None:
    import platform

    import PIL
    import torch
    import torchvision

    root = make_jpegs(Path(args.jpeg_dir), args.images)
    data_dir = Path(args.jpeg_dir) / 'tfds'
    ours_rate(root, data_dir, args.batch, 1, 0)  # prepares the folder (not timed)
    print(
        f'{args.images} JPEGs ({", ".join(f"{w}x{h}" for w, h in SIZES)}) in {root} | batch {args.batch}, '
        f'{args.batches} timed batches after the first | {os.cpu_count()} cores, {platform.processor() or platform.machine()}'
        f' | Pillow {PIL.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}',
        flush=True,
    )
    print(
        f'{"workers":>8}{"ours img/s":>12}{"torch img/s":>13}{"ours/core":>11}{"torch/core":>12}{"ratio":>8}{"range":>13}'
    )
    for w in [int(x) for x in args.workers.split(',')]:
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(ours_rate(root, data_dir, args.batch, args.batches, w))
            theirs.append(torch_rate(root, args.batch, args.batches, w))
        ratios = sorted(a / b for a, b in zip(ours, theirs))
        cores = max(w, 1)
        o, t = float(np.median(ours)), float(np.median(theirs))
        rng = f'{ratios[0]:.2f}-{ratios[-1]:.2f}' if len(ratios) > 1 else ''
        print(
            f'{w:>8}{o:>12,.0f}{t:>13,.0f}{o / cores:>11,.0f}{t / cores:>12,.0f}{np.median(ratios):>8.2f}{rng:>13}',
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        '--config', default=DEFAULT_CONFIG, help='experiment config file[:arguments], as launch.py'
    )
    p.add_argument('--set', action='append', default=[], help='config override key=value (repeatable)')
    p.add_argument('--steps', type=int, default=30, help='timed training steps per measurement')
    p.add_argument('--num_threads', default='0', help='comma-separated data.num_threads values to measure')
    p.add_argument('--repeats', type=int, default=1, help='alternating synthetic/real rounds (median ratio)')
    p.add_argument('--cpu_devices', type=int, default=0, help='as launch.py --cpu_devices (CPU only)')
    p.add_argument('--host_only', action='store_true', help="only the host pipeline's rate (no training)")
    p.add_argument('--host_batches', type=int, default=10, help="batches timed for the host pipeline's rate")
    p.add_argument(
        '--on_device',
        action='store_true',
        help='also measure data.on_device=True (uint8 batches, augmentation in the step) per --num_threads',
    )
    p.add_argument(
        '--hugepages',
        action=argparse.BooleanOptionalAction,
        default=True,
        help="restart with glibc malloc's huge pages, as launch.py (research/hugepages.py)",
    )
    p.add_argument(
        '--vs_torch', action='store_true', help="the 224-px recipe's host side vs torch's DataLoader"
    )
    p.add_argument('--workers', default='0', help='--vs_torch: comma-separated worker counts')
    p.add_argument('--rounds', type=int, default=3, help='--vs_torch: alternating rounds (median)')
    p.add_argument('--images', type=int, default=512, help='--vs_torch: JPEGs to make')
    p.add_argument('--batch', type=int, default=64, help='--vs_torch: batch size')
    p.add_argument('--batches', type=int, default=6, help='--vs_torch: timed batches per measurement')
    p.add_argument(
        '--jpeg_dir',
        default=os.path.join(tempfile.gettempdir(), 'input_pipeline_jpegs'),
        help='--vs_torch: where the JPEGs (and the prepared folder) go',
    )
    args = p.parse_args()
    if args.vs_torch:
        vs_torch(args)
        return
    if args.hugepages:
        from research.hugepages import reexec_with_hugepages

        reexec_with_hugepages()
    from research.train import distributed

    distributed.set_cpu_devices(args.cpu_devices)
    import jax

    from research.cli import _enable_compilation_cache

    _enable_compilation_cache()
    config = load_config(args.config, parse_set(args.set))
    threads = [int(t) for t in args.num_threads.split(',')]
    batch = int(config.train.batch_size)
    dev = jax.devices()
    print(
        f'{args.config} {" ".join("--set=" + s for s in args.set)} | model {config.model.name}, data '
        f'{config.data.name} {config.data.path or ""}, batch {batch}, precision {config.train.precision} | '
        f'{len(dev)} {dev[0].platform} device(s) ({dev[0].device_kind}), {os.cpu_count()} host cores | '
        f'{args.steps} timed steps, {args.repeats} round(s)',
        flush=True,
    )
    modes = [False, True] if args.on_device else [False]
    for od in modes:
        for n in threads:
            rate = host_rate(config, args.host_batches, n, on_device=od)
            what = ', data.on_device' if od else ''
            print(f'host pipeline alone, data.num_threads={n}{what}: {rate:,.0f} img/s', flush=True)
    if args.on_device:
        rate = device_prepare_rate(config)
        print(
            f"data.on_device's augmentation in the step alone ({dev[0].platform}): {rate:,.0f} img/s",
            flush=True,
        )
    if args.host_only:
        return
    print(f'{"data":<28}{"img/s (median)":>16}{"ratio to synthetic":>20}{"range":>14}', flush=True)
    names = {(od, n): f'{"on device" if od else "pipeline"}, {n} threads' for od in modes for n in threads}
    rounds: dict[str, list[float]] = {'synthetic': []} | {name: [] for name in names.values()}
    for _ in range(args.repeats):
        rounds['synthetic'].append(timed_run(config, args.steps, synthetic=True, num_threads=0))
        for (od, n), name in names.items():
            rounds[name].append(timed_run(config, args.steps, synthetic=False, num_threads=n, on_device=od))
    syn = rounds['synthetic']
    for name, rates in rounds.items():
        ratios = sorted(r / s for r, s in zip(rates, syn))
        rng = f'{ratios[0]:.2f}-{ratios[-1]:.2f}' if len(ratios) > 1 else ''
        print(f'{name:<28}{np.median(rates):>16,.0f}{np.median(ratios):>20.2f}{rng:>14}', flush=True)


if __name__ == '__main__':
    sys.path.insert(0, str(REPO))
    from research import xla_flags

    xla_flags.apply()  # the project's XLA flags before JAX starts, as launch.py
    main()
