"""Image helpers shared by the visual tools and the generative models: grids, PNG files, loading."""

from __future__ import annotations

import math
import os

import numpy as np

from research import storage


def make_grid(images, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tiles ``images`` [N, H, W, C] (floats in [0, 1]) into one [H', W', C] image, ``nrow`` per row
    (default: a square-ish grid), ``padding`` pixels of ``pad_value`` between and around tiles."""
    x = np.asarray(images, np.float32)
    if x.ndim == 3:
        x = x[..., None]
    n, h, w, c = x.shape
    ncol = nrow or max(int(math.ceil(math.sqrt(n))), 1)
    nrows = int(math.ceil(n / ncol))
    out = np.full((nrows * (h + padding) + padding, ncol * (w + padding) + padding, c), pad_value, np.float32)
    for i in range(n):
        r, q = divmod(i, ncol)
        y0, x0 = padding + r * (h + padding), padding + q * (w + padding)
        out[y0 : y0 + h, x0 : x0 + w] = x[i]
    return out


def to_uint8(image) -> np.ndarray:
    """[H, W] or [H, W, C] floats in [0, 1] -> uint8 (clipped); a 1-channel image becomes [H, W]."""
    x = np.asarray(image, np.float32)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_png(image, path: str | os.PathLike, scale: int = 1) -> storage.AnyPath:
    """Writes [H, W(, C)] floats in [0, 1] as a PNG, each pixel repeated ``scale`` times per side
    (``path`` local or remote, e.g. ``gs://...``; its folder is created)."""
    from PIL import Image

    x = to_uint8(image)
    if scale > 1:
        x = np.repeat(np.repeat(x, scale, axis=0), scale, axis=1)
    return storage.save_image(Image.fromarray(x), path, optimize=True)


def normalize01(x, axis=None) -> np.ndarray:
    """Min-max scales to [0, 1] over ``axis`` (None = whole array); constant slices become 0.5."""
    x = np.asarray(x, np.float32)
    lo = x.min(axis=axis, keepdims=True)
    hi = x.max(axis=axis, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.5).astype(np.float32)


SKLEARN_PREFIX = 'sklearn:'


def load_image(source: str, size: int | tuple[int, int] | None = None, channels: int = 3) -> np.ndarray:
    """An image as float32 [H, W, C] in [0, 1].

    ``source``: a file path (local or remote, e.g. ``gs://...``), or ``sklearn:china.jpg`` /
    ``sklearn:flower.jpg`` (the two photos that ship inside scikit-learn, no download). ``size``: an int resizes the longer side to it (aspect
    kept); (H, W) resizes exactly (bilinear). ``channels``: 3 (RGB) or 1 (gray).
    """
    from PIL import Image

    if source.startswith(SKLEARN_PREFIX):
        from sklearn.datasets import load_sample_image

        img = Image.fromarray(load_sample_image(source[len(SKLEARN_PREFIX) :]))
    else:
        path = storage.as_path(source if storage.is_remote(source) else os.path.expanduser(source))
        if not path.is_file():
            raise FileNotFoundError(
                f'image not found: {source!r} (a file, or sklearn:china.jpg / sklearn:flower.jpg)'
            )
        img = storage.open_image(path)
    img = img.convert('L' if channels == 1 else 'RGB')
    if size:
        if isinstance(size, int):
            w, h = img.size
            s = size / max(w, h)
            target = (max(int(round(w * s)), 1), max(int(round(h * s)), 1))
        else:
            target = (int(size[1]), int(size[0]))
        if target != img.size:
            img = img.resize(target, Image.BILINEAR)
    x = np.asarray(img, np.float32) / 255.0
    return x[..., None] if x.ndim == 2 else x


def _font(size: int):
    """PIL's default font at ``size`` px (a bitmap font on Pillow < 10.1, which ignores the size)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=max(int(size), 6))
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def fitted_font(draw, text: str, max_width: float, size: int):
    """The largest default font <= ``size`` px in which ``text`` is at most ``max_width`` px wide."""
    while True:
        font = _font(size)
        if size <= 6 or draw.textlength(text, font=font) <= max_width:
            return font
        size -= 1


def to_rgb_uint8(image) -> np.ndarray:
    """[H, W], [H, W, 1] or [H, W, 3] (uint8, or floats in [0, 1]) -> uint8 [H, W, 3]."""
    x = np.asarray(image)
    if x.dtype != np.uint8:
        x = np.round(np.clip(np.asarray(x, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    if x.ndim == 2:
        x = x[..., None]
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x[..., :3]


def add_titles(
    image,
    titles,
    *,
    centers=None,
    width: float | None = None,
    font_size: int | None = None,
    below: bool = False,
    colours=None,
) -> np.ndarray:
    """uint8 [H + band, W, 3]: ``image`` with a white band above it (``below=True``: under it) holding
    one black title per column, centred on ``centers`` (x in pixels; default: ``len(titles)`` equal
    columns). Each title is shrunk to fit ``width`` px (default: the column spacing) and otherwise
    written as is; ``colours`` gives one RGB per title."""
    from PIL import Image, ImageDraw

    x = to_rgb_uint8(image)
    h, w = x.shape[:2]
    n = len(titles)
    if n == 0:
        return x
    if centers is None:
        centers = [(i + 0.5) * w / n for i in range(n)]
    width = width or (w / n)
    size = font_size or int(min(max(width / 9, 9), 16))
    band = size + 6
    out = Image.new('RGB', (w, h + band), (255, 255, 255))
    out.paste(Image.fromarray(x), (0, 0 if below else band))
    draw = ImageDraw.Draw(out)
    y = (h + 2) if below else 2
    for i, (c, t) in enumerate(zip(centers, titles)):
        font = fitted_font(draw, str(t), width - 4, size)
        tw = draw.textlength(str(t), font=font)
        colour = tuple(colours[i]) if colours is not None else (0, 0, 0)
        draw.text((max(float(c) - tw / 2, 0), y), str(t), fill=colour, font=font)
    return np.asarray(out)


def save_uint8_png(image, path: str | os.PathLike) -> storage.AnyPath:
    """Writes a uint8 [H, W, 3] (or [H, W]) array as a PNG (local or remote), creating the folder."""
    from PIL import Image

    return storage.save_image(Image.fromarray(np.asarray(image, np.uint8)), path, optimize=True)
