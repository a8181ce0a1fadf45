"""Anchors (Ren et al. 2015, Faster R-CNN, Sec. 3.1.1), FPN levels (Lin et al. 2017) and SSD default
boxes (Liu et al. 2016), in torchvision's order.

At every feature-map location there are k = len(sizes) x len(aspect_ratios) anchors; the RPN head
predicts 2k objectness scores (k with a sigmoid, as torchvision) and 4k box deltas there. The
anchors of a level are ordered location-major (row, then column) and, within a location, aspect
ratio-major then size, as ``torchvision.models.detection.anchor_utils.AnchorGenerator``: row
``(y * W + x) * k + a`` of a level's ``[H * W * k, 4]`` array. Levels are concatenated.

Anchors depend only on static shapes, so they are numpy constants (``float32``, xyxy pixels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    'base_anchors',
    'default_boxes',
    'ssd_scales',
    'grid_anchors',
    'multilevel_anchors',
    'num_anchors_per_location',
]


def base_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """``[len(ratios) * len(sizes), 4]`` zero-centred anchors, area ``size**2`` and height / width =
    ``ratio``, rounded to integers (torchvision's ``generate_anchors``)."""
    scales = np.asarray(sizes, np.float32)
    ratios = np.asarray(aspect_ratios, np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], 1) / np.float32(2)).astype(np.float32)


def num_anchors_per_location(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> int:
    return len(sizes) * len(aspect_ratios)


def grid_anchors(
    feature_size: tuple[int, int],
    image_size: tuple[int, int],
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    stride: tuple[int, int] | None = None,
) -> np.ndarray:
    """``[H * W * k, 4]`` anchors of one level: ``base_anchors`` shifted to ``(x * stride_w, y * stride_h)``
    for every feature-map cell, with stride = image_size // feature_size unless given."""
    fh, fw = feature_size
    if stride is None:
        stride = (image_size[0] // fh, image_size[1] // fw)
    sy, sx = (np.arange(n, dtype=np.int32).astype(np.float32) * s for n, s in zip((fh, fw), stride))
    yy, xx = np.meshgrid(sy, sx, indexing='ij')
    shifts = np.stack([xx.ravel(), yy.ravel(), xx.ravel(), yy.ravel()], 1)
    base = base_anchors(sizes, aspect_ratios)
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)


def multilevel_anchors(
    feature_sizes: Sequence[tuple[int, int]],
    image_size: tuple[int, int],
    sizes: Sequence[Sequence[float]] = ((32,), (64,), (128,), (256,), (512,)),
    aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),) * 5,
) -> np.ndarray:
    """Anchors of several levels (FPN P2-P6 by default: one size per level, three ratios) concatenated
    in level order, as torchvision's ``AnchorGenerator(sizes, aspect_ratios)`` for one image."""
    if not len(feature_sizes) == len(sizes) == len(aspect_ratios):
        raise ValueError(
            f'need one sizes / aspect_ratios entry per level, got {len(feature_sizes)} levels, '
            f'{len(sizes)} sizes, {len(aspect_ratios)} aspect_ratios'
        )
    return np.concatenate(
        [grid_anchors(f, image_size, s, r) for f, s, r in zip(feature_sizes, sizes, aspect_ratios)], 0
    )


def ssd_scales(num_levels: int, min_ratio: float = 0.15, max_ratio: float = 0.9) -> list[float]:
    """SSD scales s_k = s_min + (s_max - s_min) (k - 1) / (m - 1) (Liu et al. 2016, Eq. 4) plus a final 1.0."""
    if num_levels == 1:
        return [min_ratio, max_ratio]
    return [min_ratio + (max_ratio - min_ratio) * k / (num_levels - 1.0) for k in range(num_levels)] + [1.0]


def default_boxes(
    feature_sizes: Sequence[tuple[int, int]],
    image_size: tuple[int, int],
    aspect_ratios: Sequence[Sequence[float]],
    scales: Sequence[float] | None = None,
    min_ratio: float = 0.15,
    max_ratio: float = 0.9,
    steps: Sequence[int] | None = None,
    clip: bool = True,
) -> np.ndarray:
    """SSD default boxes (Liu et al. 2016, Sec. 2.2), xyxy pixels, as torchvision's ``DefaultBoxGenerator``.

    Per location: (s_k, s_k), (s'_k, s'_k) with s'_k = sqrt(s_k s_{k+1}), then for each ratio r the pair
    (s_k sqrt(r), s_k / sqrt(r)) and its transpose: ``2 + 2 len(aspect_ratios[k])`` boxes, centred at
    ((j + 0.5) / f_k, (i + 0.5) / f_k) (or ``image / steps[k]`` cells). ``clip`` clamps the relative
    sizes to [0, 1].
    """
    scales = list(scales) if scales is not None else ssd_scales(len(aspect_ratios), min_ratio, max_ratio)
    out = []
    for k, (fh, fw) in enumerate(feature_sizes):
        s_k, s_prime = scales[k], math.sqrt(scales[k] * scales[k + 1])
        wh = [[s_k, s_k], [s_prime, s_prime]]
        for ar in aspect_ratios[k]:
            r = math.sqrt(ar)
            wh += [[s_k * r, s_k / r], [s_k / r, s_k * r]]
        wh = np.asarray(wh, np.float32)
        if clip:
            wh = np.clip(wh, 0, 1)
        yf, xf = (image_size[0] / steps[k], image_size[1] / steps[k]) if steps is not None else (fh, fw)
        cx = ((np.arange(fw) + 0.5) / xf).astype(np.float32)
        cy = ((np.arange(fh) + 0.5) / yf).astype(np.float32)
        yy, xx = np.meshgrid(cy, cx, indexing='ij')
        centres = np.repeat(np.stack([xx.ravel(), yy.ravel()], 1), len(wh), 0)
        sizes = np.tile(wh, (fh * fw, 1))
        out.append(np.concatenate([centres, sizes], 1))
    boxes = np.concatenate(out, 0)
    scale_xy = np.asarray([image_size[1], image_size[0]], np.float32)
    return np.concatenate(
        [(boxes[:, :2] - 0.5 * boxes[:, 2:]) * scale_xy, (boxes[:, :2] + 0.5 * boxes[:, 2:]) * scale_xy], 1
    ).astype(np.float32)
