"""Real JPEGs for the ImageNet-recipe tests: CIFAR-10 photos upscaled to ImageNet sizes.

``make_jpeg_tree(root)`` writes ``<split>/<class>/*.jpg`` with images of several aspect ratios
(4:3, 3:4, square, 2:1 and 1:3 panoramas that exercise the random-resized crop's fallback, one
smaller than the 224 crop) from the shared CIFAR-10 JPEG folder when it is present, else from
generated smooth images with noise (so the tests also run in a clone without ``../shared``).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'
CIFAR_TGZ = SHARED_DATA / 'cifar10-jpg.tgz'

# (width, height) of the generated images, cycled.
SIZES = ((500, 375), (375, 500), (320, 320), (640, 320), (200, 600), (180, 150), (333, 500), (512, 384))


def cifar_photos(n: int) -> list[np.ndarray]:
    """The first ``n`` training images of the CIFAR-10 folder (uint8 32x32x3), or generated ones."""
    out = []
    if CIFAR_TGZ.exists():
        with tarfile.open(CIFAR_TGZ, 'r|gz') as tar:
            for m in tar:
                if m.isfile() and m.name.lower().endswith('.jpg'):
                    out.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())).convert('RGB')))
                    if len(out) == n:
                        return out
    rng = np.random.default_rng(1)
    while len(out) < n:
        base = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
        out.append(np.asarray(Image.fromarray(base).resize((32, 32), Image.BICUBIC)))
    return out


def large_jpeg(photo: np.ndarray, size: tuple[int, int], seed: int, quality: int = 90) -> bytes:
    """``photo`` upscaled (bicubic) to ``size`` = (width, height), with a little noise so the image
    has detail at every scale (the antialiased resize has something to filter), as JPEG bytes."""
    img = np.asarray(Image.fromarray(photo).resize(size, Image.BICUBIC)).astype(np.int16)
    noise = np.random.default_rng(seed).integers(-12, 13, img.shape)
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format='JPEG', quality=quality)
    return buf.getvalue()


def make_jpeg_tree(root: Path, per_class: dict[str, int] | None = None, classes=('cat', 'dog')) -> list[Path]:
    """Writes the tree; returns the files in (split, class, name) order."""
    per_class = per_class or {'train': 4, 'val': 3}
    total = sum(per_class.values()) * len(classes)
    photos = cifar_photos(total)
    files, k = [], 0
    for split, n in per_class.items():
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                path = d / f'{cls}_{i}.jpg'
                path.write_bytes(large_jpeg(photos[k], SIZES[k % len(SIZES)], seed=k))
                files.append(path)
                k += 1
    return files
