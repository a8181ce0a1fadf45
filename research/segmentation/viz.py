"""PNG grids of segmentation results: input | ground truth | prediction, with a colour palette."""

from __future__ import annotations

import os

import numpy as np

from research import storage
from research.viz.images import add_titles, make_grid, save_uint8_png, to_rgb_uint8

IGNORE_LABEL = 255
IGNORE_COLOUR = (1.0, 1.0, 1.0)


def palette(num_classes: int) -> np.ndarray:
    """float32 [K, 3] colours in [0, 1]: PASCAL VOC's bit-interleaved palette (class 0 black)."""
    out = np.zeros((num_classes, 3), np.float32)
    for k in range(num_classes):
        c, r, g, b = k, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[k] = (r / 255.0, g / 255.0, b / 255.0)
    return out


def colorize(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """int [..., H, W] class map -> float32 [..., H, W, 3]; ``IGNORE_LABEL`` pixels are white."""
    labels = np.asarray(labels)
    pal = np.concatenate([palette(num_classes), np.asarray([IGNORE_COLOUR], np.float32)])
    idx = np.where((labels >= 0) & (labels < num_classes), labels, num_classes)
    return pal[idx]


def result_grid(images01: np.ndarray, labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """One row per example: input (in [0, 1]; gray or RGB) | ground truth | prediction."""
    x = np.asarray(images01, np.float32)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    tiles = np.stack([x, colorize(labels, num_classes), colorize(preds, num_classes)], axis=1)
    return make_grid(tiles.reshape(-1, *tiles.shape[2:]), nrow=3)


#: The column titles of :func:`save_result_grid`.
COLUMN_TITLES = ('input', 'ground truth', 'prediction')


def save_result_grid(
    path: str | os.PathLike,
    images01,
    labels,
    preds,
    num_classes: int,
    scale: int = 2,
    *,
    titles: tuple[str, ...] | None = COLUMN_TITLES,
) -> storage.AnyPath:
    """Writes :func:`result_grid` as a PNG, each pixel ``scale`` times per side, with ``titles`` over
    the three columns (None: no title band)."""
    grid = to_rgb_uint8(result_grid(images01, labels, preds, num_classes))
    if scale > 1:
        grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    if titles:
        w = np.asarray(images01).shape[2]
        pad = 2  # make_grid's padding
        centers = [scale * (pad + i * (w + pad) + w / 2) for i in range(3)]
        grid = add_titles(grid, titles, centers=centers, width=scale * (w + pad))
    return save_uint8_png(grid, path)
