"""Builds the CIFAR-10 and MNIST class folders the experiment configs read, from TFDS.

    python -m research.data.make_folders --dataset=cifar10     # -> $RESEARCH_DATA_DIR/cifar10-jpg.tgz
    python -m research.data.make_folders --dataset=mnist10k    # -> $RESEARCH_DATA_DIR/mnist10k-png.tgz
    python -m research.data.make_folders --dataset=mnist --out=~/data/mnist   # a folder tree

Needs network once (TFDS downloads and prepares the dataset in ``--data_dir``, default
``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``) and the ``prepare`` extra
(``pip install -e '.[prepare]'``). Writes the ``<split>/<class>/<NNNN>.<ext>`` layout of the offline
copies this project was developed with (``research.data.builders.image_folder`` reads it):

- ``cifar10``: all 60,000 images (train 50,000 / test 10,000), class folders by name (``airplane``,
  ...), JPEG at quality 75 (a lossy re-encoding, as the offline copy: accuracies trained on it sit a
  little below those on TFDS's lossless ``cifar10``);
- ``mnist``: all 70,000 digits (train 60,000 / test 10,000), folders ``0``-``9``, grayscale PNG;
- ``mnist10k``: 1,000 digits per class (the first of TFDS's train then test split), split 80/20
  stratified with a fixed seed (train 8,000 / test 2,000), grayscale PNG. Built the way the offline
  copy was, from other source files: not the same images.

``--out`` ending in ``.tgz`` / ``.tar.gz`` writes a gzipped tarball, anything else a folder; an
existing ``--out`` is kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tarfile
import tempfile

import numpy as np
from PIL import Image

from research.data import roots, tfds_catalog

#: --dataset -> (TFDS name, default file name, image format, examples per class (None = all)).
DATASETS = {
    'cifar10': ('cifar10', 'cifar10-jpg.tgz', 'jpg', None),
    'mnist': ('mnist', 'mnist-png.tgz', 'png', None),
    'mnist10k': ('mnist', 'mnist10k-png.tgz', 'png', 1000),
}
JPEG_QUALITY = 75
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def _encode(image: np.ndarray, fmt: str) -> bytes:
    image = np.asarray(image, np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    buf = io.BytesIO()
    if fmt == 'jpg':
        Image.fromarray(image).save(buf, format='JPEG', quality=JPEG_QUALITY)
    else:
        Image.fromarray(image).save(buf, format='PNG')
    return buf.getvalue()


def _records(builder, split: str):
    source = builder.as_data_source(split)
    for i in range(len(source)):
        rec = source[i]
        yield np.asarray(rec['image']), int(rec['label'])


def examples(dataset: str, data_dir: str) -> dict[str, list[tuple[np.ndarray, int]]]:
    """``{split: [(image, label), ...]}`` of ``dataset`` (the TFDS dataset prepared first if needed)."""
    tfds_name, _, _, per_class = DATASETS[dataset]
    builder = tfds_catalog.open_dataset(tfds_name, data_dir)
    if per_class is None:
        return {split: list(_records(builder, split)) for split in ('train', 'test')}
    from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top

    kept: dict[int, list] = {}
    for split in ('train', 'test'):
        for image, label in _records(builder, split):
            if len(kept.setdefault(label, [])) < per_class:
                kept[label].append(image)
    pool = [(im, lab) for lab in sorted(kept) for im in kept[lab]]
    labels = [lab for _, lab in pool]
    train, test = train_test_split(
        np.arange(len(pool)), test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    return {'train': [pool[i] for i in sorted(train)], 'test': [pool[i] for i in sorted(test)]}


def class_names(dataset: str, data_dir: str) -> list[str]:
    builder = tfds_catalog.open_dataset(DATASETS[dataset][0], data_dir)
    return [str(n) for n in builder.info.features['label'].names]


def write(dataset: str, out: str, data_dir: str) -> dict[str, int]:
    """Writes ``dataset``'s class folders to ``out`` (a .tgz or a folder); returns images per split."""
    fmt = DATASETS[dataset][2]
    names = class_names(dataset, data_dir)
    data = examples(dataset, data_dir)
    as_tar = out.endswith(('.tgz', '.tar.gz'))
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.make_folders_', dir=parent)
    try:
        target = os.path.join(tmp, 'out.tgz' if as_tar else 'out')
        files = {}
        for split, items in data.items():
            counters: dict[int, int] = {}
            for image, label in items:
                k = counters[label] = counters.get(label, -1) + 1
                files[f'{split}/{names[label]}/{k:04d}.{fmt}'] = _encode(image, fmt)
        if as_tar:
            with tarfile.open(target, 'w:gz') as tar:
                for d in sorted({os.path.dirname(p) for p in files} | {p.split('/')[0] for p in files}):
                    info = tarfile.TarInfo(d + '/')
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                for name in sorted(files):
                    info = tarfile.TarInfo(name)
                    info.size, info.mode = len(files[name]), 0o644
                    tar.addfile(info, io.BytesIO(files[name]))
        else:
            for name, blob in files.items():
                path = os.path.join(target, *name.split('/'))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, 'wb') as f:
                    f.write(blob)
        if os.path.isdir(out):
            shutil.rmtree(out)
        elif os.path.exists(out):
            os.remove(out)
        os.replace(target, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {split: len(items) for split, items in data.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog='python -m research.data.make_folders', description=__doc__.split('\n\n')[0]
    )
    p.add_argument('--dataset', required=True, choices=sorted(DATASETS))
    p.add_argument(
        '--out',
        default='',
        help=f'a .tgz or a folder (default: ${roots.DATA_ROOT_ENV}/<cifar10-jpg.tgz | mnist-png.tgz | '
        f'mnist10k-png.tgz>, the paths the configs read; ${roots.DATA_ROOT_ENV} defaults to '
        f'{roots.DEFAULT_DATA_ROOT})',
    )
    p.add_argument(
        '--data_dir', default='', help='TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)'
    )
    p.add_argument('--force', action='store_true', help='replace an existing --out')
    args = p.parse_args(argv)
    out = os.path.abspath(
        roots.expand(args.out or os.path.join(roots.data_root(), DATASETS[args.dataset][1]))
    )
    if os.path.exists(out) and not args.force:
        print(f'make_folders: {out} exists (use --force to replace it)', file=sys.stderr)
        return 2
    data_dir = os.path.abspath(
        os.path.expanduser(args.data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')
    )
    try:
        counts = write(args.dataset, out, data_dir)
    except (tfds_catalog.PrepareError, ValueError, OSError) as e:
        print(f'make_folders: {type(e).__name__}: {e}', file=sys.stderr)
        return 1
    print(f'wrote {out}: ' + ', '.join(f'{s} {n:,}' for s, n in counts.items()) + ' images')
    return 0


if __name__ == '__main__':
    sys.exit(main())
