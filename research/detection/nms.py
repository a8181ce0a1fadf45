"""Non-maximum suppression with static shapes (greedy NMS as in Girshick et al. 2014 R-CNN and
Ren et al. 2015 Faster R-CNN; class-aware by the per-class coordinate offset of torchvision's
``batched_nms``).

Output is a fixed ``max_output`` slots: indices of the kept boxes into the input, in decreasing
score order, padded with -1, and a validity mask. O(N^2) memory (the IoU matrix); meant for the
few thousand candidates of an RPN level or a detection head after a top-k. ``jax.vmap`` batches it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from research.detection.boxes import box_iou

__all__ = ['batched_nms', 'nms', 'nms_mask']


def nms_mask(
    boxes: jax.Array, scores: jax.Array, iou_threshold: float, valid: jax.Array | None = None
) -> jax.Array:
    """Boolean keep mask ``[N]``: a box is kept unless an earlier-kept box of higher score overlaps it by
    IoU > ``iou_threshold`` (torchvision.ops.nms). ``valid`` (default all) excludes padded boxes."""
    boxes, scores = jnp.asarray(boxes), jnp.asarray(scores)
    n = boxes.shape[0]
    valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
    order = jnp.argsort(-scores, stable=True)
    b = boxes[order]
    over = box_iou(b, b) > iou_threshold
    v = valid[order]

    def body(i, keep):
        keep_i = keep[i]
        return keep & ~(keep_i & over[i] & (jnp.arange(n) > i))

    keep_sorted = lax.fori_loop(0, n, body, v)
    return jnp.zeros((n,), bool).at[order].set(keep_sorted)


def _top_kept(keep: jax.Array, scores: jax.Array, max_output: int) -> tuple[jax.Array, jax.Array]:
    n = keep.shape[0]
    k = min(int(max_output), n)
    key = jnp.where(keep, scores, -jnp.inf)
    # Kept boxes first by score (ties by index), then the rest.
    order = jnp.lexsort((jnp.arange(n), -key, ~keep))[:k]
    ok = keep[order]
    idx = jnp.where(ok, order, -1)
    if k < max_output:
        idx = jnp.concatenate([idx, jnp.full((max_output - k,), -1, idx.dtype)])
        ok = jnp.concatenate([ok, jnp.zeros((max_output - k,), bool)])
    return idx.astype(jnp.int32), ok


def nms(
    boxes: jax.Array,
    scores: jax.Array,
    iou_threshold: float,
    max_output: int,
    valid: jax.Array | None = None,
    score_threshold: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Greedy NMS: (int32 ``[max_output]`` kept indices by decreasing score, -1 padded; bool mask).

    ``boxes [N, 4]`` xyxy, ``scores [N]``; ``score_threshold`` drops boxes scoring below it first.
    The first ``mask.sum()`` indices equal ``torchvision.ops.nms(boxes, scores, thr)[:max_output]``.
    """
    scores = jnp.asarray(scores)
    valid = jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid, bool)
    if score_threshold is not None:
        valid = valid & (scores >= score_threshold)
    return _top_kept(nms_mask(boxes, scores, iou_threshold, valid), scores, max_output)


def batched_nms(
    boxes: jax.Array,
    scores: jax.Array,
    class_ids: jax.Array,
    iou_threshold: float,
    max_output: int,
    valid: jax.Array | None = None,
    score_threshold: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Class-aware NMS (boxes of different ``class_ids`` never suppress each other) by offsetting each
    class's boxes by ``class_id * (max coordinate + 1)``, as ``torchvision.ops.batched_nms``."""
    boxes = jnp.asarray(boxes)
    valid_ = jnp.ones(boxes.shape[:1], bool) if valid is None else jnp.asarray(valid, bool)
    max_coord = jnp.max(jnp.where(valid_[:, None], boxes, -jnp.inf), initial=0.0)
    offsets = jnp.asarray(class_ids).astype(boxes.dtype) * (max_coord + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold, max_output, valid, score_threshold)
