"""Box utilities: formats, areas, pairwise IoU, Faster R-CNN box deltas, clipping.

Boxes are ``(..., 4)`` arrays in pixels, ``xyxy`` = (x1, y1, x2, y2) unless stated; widths are
``x2 - x1`` (no "+1", as torchvision). Everything is shape-polymorphic (leading batch dims
broadcast) and jit-friendly.

Box deltas (Girshick et al. 2014 R-CNN; Ren et al. 2015 Faster R-CNN, Eq. 2), for a reference box
(anchor / proposal) with centre (xa, ya) and size (wa, ha) and a target (x, y, w, h):
``tx = wx (x - xa) / wa, ty = wy (y - ya) / ha, tw = ww log(w / wa), th = wh log(h / ha)``
with weights (wx, wy, ww, wh): (1, 1, 1, 1) in torchvision's RPN, (10, 10, 5, 5) in its RoI head.
Decoding clamps tw, th at ``log(1000 / 16)`` before the exponential, as torchvision's ``BoxCoder``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = [
    'BBOX_XFORM_CLIP',
    'RPN_WEIGHTS',
    'ROI_HEAD_WEIGHTS',
    'box_area',
    'box_iou',
    'clip_boxes',
    'cxcywh_to_xyxy',
    'decode_boxes',
    'encode_boxes',
    'min_size_mask',
    'xyxy_to_cxcywh',
]

BBOX_XFORM_CLIP = math.log(1000.0 / 16)
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def xyxy_to_cxcywh(boxes: jax.Array) -> jax.Array:
    x1, y1, x2, y2 = jnp.moveaxis(jnp.asarray(boxes), -1, 0)
    return jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def cxcywh_to_xyxy(boxes: jax.Array) -> jax.Array:
    cx, cy, w, h = jnp.moveaxis(jnp.asarray(boxes), -1, 0)
    return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def box_area(boxes: jax.Array) -> jax.Array:
    boxes = jnp.asarray(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """Pairwise IoU ``[..., N, M]`` of ``a [..., N, 4]`` and ``b [..., M, 4]`` (leading dims broadcast).

    Same arithmetic as ``torchvision.ops.box_iou``; a pair with zero union (two empty boxes) gives
    0 rather than NaN.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    area_a, area_b = box_area(a), box_area(b)
    lt = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = jnp.clip(rb - lt, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    safe = jnp.where(union > 0, union, 1.0)
    return jnp.where(union > 0, inter / safe, 0.0)


def _centre_size(boxes):
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_boxes(
    targets: jax.Array, references: jax.Array, weights: Sequence[float] = RPN_WEIGHTS
) -> jax.Array:
    """Deltas ``(..., 4)`` = (dx, dy, dw, dh) taking ``references`` (anchors) to ``targets`` (xyxy)."""
    targets, references = jnp.asarray(targets), jnp.asarray(references)
    wx, wy, ww, wh = weights
    ex, ey, ew, eh = _centre_size(references)
    gx, gy, gw, gh = _centre_size(targets)
    return jnp.stack(
        [wx * (gx - ex) / ew, wy * (gy - ey) / eh, ww * jnp.log(gw / ew), wh * jnp.log(gh / eh)], -1
    )


def decode_boxes(
    deltas: jax.Array,
    references: jax.Array,
    weights: Sequence[float] = RPN_WEIGHTS,
    clip: float = BBOX_XFORM_CLIP,
) -> jax.Array:
    """Inverse of ``encode_boxes``: boxes (xyxy) from ``deltas`` applied to ``references``; dw, dh are
    clamped at ``clip`` (torchvision's ``BoxCoder.decode_single``)."""
    deltas, references = jnp.asarray(deltas), jnp.asarray(references).astype(jnp.asarray(deltas).dtype)
    wx, wy, ww, wh = weights
    cx, cy, w, h = _centre_size(references)
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = jnp.minimum(deltas[..., 2] / ww, clip)
    dh = jnp.minimum(deltas[..., 3] / wh, clip)
    pcx, pcy = dx * w + cx, dy * h + cy
    pw, ph = jnp.exp(dw) * w, jnp.exp(dh) * h
    return jnp.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], -1)


def clip_boxes(boxes: jax.Array, image_size) -> jax.Array:
    """Clamps x to [0, width] and y to [0, height]; ``image_size`` = (height, width), scalars or arrays
    broadcasting against the leading dims (e.g. ``[..., None]`` per image)."""
    boxes = jnp.asarray(boxes)
    h, w = image_size
    x = jnp.clip(boxes[..., 0::2], 0, jnp.asarray(w, boxes.dtype)[..., None])
    y = jnp.clip(boxes[..., 1::2], 0, jnp.asarray(h, boxes.dtype)[..., None])
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)


def min_size_mask(boxes: jax.Array, min_size: float) -> jax.Array:
    """Boolean mask (static shape) of boxes with both sides >= ``min_size`` (torchvision drops them)."""
    boxes = jnp.asarray(boxes)
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)
