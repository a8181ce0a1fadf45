"""Detections with static shapes: score threshold, pre-NMS top-k, class-aware NMS, top ``max_detections``
(torchvision's ``RoIHeads.postprocess_detections`` / ``RetinaNet.postprocess_detections`` / SSD's, in one
jit-friendly function). Every detector's eval output goes through :func:`select_detections`.

Output contract of every detector in eval mode (``model.apply(v, images, train=False)``):
``{'boxes': [B, D, 4] xyxy pixels of the input, 'scores': [B, D], 'labels': int32 [B, D] in
1..num_classes-1, 'valid': bool [B, D]}`` (+ ``'masks'`` [B, D, H, W] probabilities for Mask R-CNN).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from research.detection.boxes import clip_boxes, min_size_mask
from research.detection.nms import batched_nms

__all__ = ['select_detections']


def select_detections(
    boxes: jax.Array,
    scores: jax.Array,
    *,
    image_size: tuple[int, int],
    score_threshold: float = 0.05,
    iou_threshold: float = 0.5,
    max_detections: int = 100,
    pre_nms_top_k: int = 1000,
    min_size: float = 1e-2,
    valid: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """One image. ``scores`` [N, K]: probabilities of the K foreground classes (label = column + 1);
    ``boxes`` [N, 4] (shared by the classes) or [N, K, 4] (class-specific); ``valid`` [N] masks
    padded candidates. Boxes are clipped to ``image_size`` (h, w); candidates smaller than ``min_size``
    or scoring below ``score_threshold`` are dropped, the best ``pre_nms_top_k`` (box, class) pairs go
    to class-aware NMS at ``iou_threshold``, and the best ``max_detections`` survivors are returned."""
    n, k = scores.shape
    if boxes.ndim == 2:
        boxes = jnp.broadcast_to(boxes[:, None, :], (n, k, 4))
    boxes = clip_boxes(boxes, image_size).reshape(n * k, 4)
    flat = scores.reshape(n * k).astype(jnp.float32)
    labels = jnp.tile(jnp.arange(1, k + 1, dtype=jnp.int32), n)
    ok = min_size_mask(boxes, min_size) & (flat >= score_threshold)
    if valid is not None:
        ok = ok & jnp.repeat(jnp.asarray(valid, bool), k)
    top = min(int(pre_nms_top_k), n * k)
    s, idx = jax.lax.top_k(jnp.where(ok, flat, -jnp.inf), top)
    b, lab, v = boxes[idx], labels[idx], ok[idx]
    keep, kvalid = batched_nms(b, s, lab, iou_threshold, max_detections, valid=v)
    safe = jnp.maximum(keep, 0)
    return {
        'boxes': jnp.where(kvalid[:, None], b[safe], 0.0),
        'scores': jnp.where(kvalid, s[safe], 0.0),
        'labels': jnp.where(kvalid, lab[safe], 0),
        'valid': kvalid,
    }
