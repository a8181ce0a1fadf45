"""Region-of-interest heads of the two-stage detectors (Girshick 2015 Fast R-CNN; Ren et al. 2015 Faster
R-CNN; Lin et al. 2017 FPN, Sec. 4.2; He et al. 2017 Mask R-CNN), as torchvision's ``RoIHeads``, with
static shapes (one image per call; ``jax.vmap`` batches).

- :class:`TwoMLPHead` (fc6, fc7; Fast R-CNN Sec. 2 / FPN Sec. 4.2 "2-fc MLP head") and
  :class:`FastRCNNPredictor` (``cls_score`` K-way softmax, ``bbox_pred`` class-specific 4K deltas;
  Fast R-CNN Sec. 2.1), torchvision's module names so its weights convert.
- :func:`sample_rois`: ground truth appended to the proposals, IoU >= 0.5 foreground, a fixed-size
  minibatch of 512 RoIs with 25% foreground (Fast R-CNN Sec. 2.3 "Mini-batch sampling"); positives are
  placed first, so the first ``int(batch_size_per_image * positive_fraction)`` slots hold every positive
  (Mask R-CNN's mask head only looks at those).
- :func:`fastrcnn_loss`: Fast R-CNN's multi-task loss (Eq. 1): CE + smooth L1 of the true class's deltas
  (beta 1/9, sum / number sampled, as torchvision's ``fastrcnn_loss``).
- :func:`roi_detections`: softmax, class-specific decode, then
  :func:`research.detection.postprocess.select_detections` (torchvision ``postprocess_detections``).
- :func:`multiscale_roi_align` / :func:`map_levels`: FPN's RoI-to-level assignment (FPN Eq. 1,
  k = floor(k0 + log2(sqrt(wh) / 224)), k0 = 4) and RoI align per level (torchvision
  ``MultiScaleRoIAlign`` / ``LevelMapper``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.detection.assign import assign_proposals, sample_balanced
from research.detection.boxes import ROI_HEAD_WEIGHTS, box_area, decode_boxes
from research.detection.losses import smooth_l1, softmax_cross_entropy
from research.detection.postprocess import select_detections
from research.layers.roi import roi_align

__all__ = [
    'FastRCNNPredictor',
    'TwoMLPHead',
    'fastrcnn_loss',
    'map_levels',
    'paste_masks',
    'project_masks',
    'multiscale_roi_align',
    'roi_detections',
    'sample_rois',
]

#: torch.nn.Linear's default init (kaiming_uniform a=sqrt(5): U(+-1/sqrt(fan_in))).
linear_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


class TwoMLPHead(nn.Module):
    """fc6 -> ReLU -> fc7 -> ReLU on pooled RoI features ``[R, h, w, C]`` (any leading dims before
    h, w, C), flattened in torch's (C, h, w) order so torchvision's fc6 weights convert unchanged."""

    representation_size: int = 1024
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        lead, (h, w, c) = x.shape[:-3], x.shape[-3:]
        x = jnp.moveaxis(x.reshape(-1, h, w, c), -1, 1).reshape(-1, c * h * w)
        dense = functools.partial(
            nn.Dense, self.representation_size, kernel_init=linear_init, dtype=self.dtype
        )
        x = nn.relu(dense(name='fc6')(x))
        x = nn.relu(dense(name='fc7')(x))
        return x.reshape(*lead, self.representation_size)


class FastRCNNPredictor(nn.Module):
    """(``cls_score`` [..., K], ``bbox_pred`` [..., 4K]) from RoI representations [..., D]; K includes
    the background (column 0). Initialised as torchvision's ``FastRCNNPredictor`` (torch Linear
    default)."""

    num_classes: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        cls = nn.Dense(self.num_classes, kernel_init=linear_init, dtype=self.dtype, name='cls_score')(x)
        box = nn.Dense(4 * self.num_classes, kernel_init=linear_init, dtype=self.dtype, name='bbox_pred')(x)
        return cls.astype(jnp.float32), box.astype(jnp.float32)


def sample_rois(
    key: jax.Array,
    proposals: jax.Array,
    proposal_valid: jax.Array,
    gt_boxes: jax.Array,
    gt_labels: jax.Array,
    gt_valid: jax.Array,
    *,
    batch_size_per_image: int = 512,
    positive_fraction: float = 0.25,
    fg_iou: float = 0.5,
    bg_iou: float = 0.5,
) -> dict[str, jax.Array]:
    """RoI-head minibatch of ONE image (torchvision ``RoIHeads.select_training_samples``).

    ``proposals [P, 4]`` (``proposal_valid [P]``), ground truth ``gt_boxes [M, 4]``, ``gt_labels [M]``
    (1..K-1), ``gt_valid [M]``. The ground truth is appended to the proposals, every candidate is
    matched (IoU >= ``fg_iou`` -> its box's class, < ``bg_iou`` -> background, in between ignored)
    and ``sample_balanced`` draws ``min(int(S f), #fg)`` positives and ``min(S - that, #bg)``
    negatives, S = ``batch_size_per_image`` (static).

    Returns ``rois [S, 4]``, ``labels [S]`` int32 (class, 0 background or unused slot),
    ``box_targets [S, 4]`` (ROI_HEAD_WEIGHTS deltas; 0 off the positives), ``valid [S]`` bool (the
    slot holds a sampled RoI), plus ``matched_gt [S]`` (index of the matched ground truth, for mask
    targets). Positives come first (slots ``[0, #pos)``), then negatives, then unused slots.
    """
    s = int(batch_size_per_image)
    proposals = jnp.asarray(proposals, jnp.float32)
    gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
    boxes = jnp.concatenate([proposals, gt_boxes], 0)
    valid = jnp.concatenate([jnp.asarray(proposal_valid, bool), jnp.asarray(gt_valid, bool)], 0)
    if boxes.shape[0] < s:  # fewer candidates than slots: pad with unusable boxes
        pad = s - boxes.shape[0]
        boxes = jnp.concatenate([boxes, jnp.zeros((pad, 4), boxes.dtype)], 0)
        valid = jnp.concatenate([valid, jnp.zeros((pad,), bool)], 0)
    a = assign_proposals(boxes, gt_boxes, gt_labels, gt_valid, fg_iou, bg_iou)
    labels = jnp.where(valid, a['labels'], -1)
    pos, neg = sample_balanced(key, labels, s, positive_fraction)
    category = jnp.where(pos, 0, jnp.where(neg, 1, 2))
    order = jnp.argsort(category, stable=True)[:s]
    pos_s, sampled = pos[order], (pos | neg)[order]
    targets = jnp.where(pos_s[:, None], a['box_targets'][order], 0.0)
    return {
        'rois': boxes[order],
        'labels': jnp.where(pos_s, labels[order], 0).astype(jnp.int32),
        'box_targets': jnp.where(jnp.isfinite(targets), targets, 0.0),
        'valid': sampled,
        'matched_gt': a['matched_gt'][order],
    }


def fastrcnn_loss(
    class_logits: jax.Array,
    box_regression: jax.Array,
    labels: jax.Array,
    box_targets: jax.Array,
    valid: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """(loss_classifier, loss_box_reg) as torchvision's ``fastrcnn_loss``: cross-entropy averaged over
    the sampled RoIs; smooth L1 (beta 1/9) of the true class's 4 deltas summed over the positives and
    divided by the number of sampled RoIs. Leading dims (images, slots) are flattened; ``valid``
    marks sampled slots (0 sampled -> both losses 0)."""
    k = class_logits.shape[-1]
    logits = class_logits.reshape(-1, k).astype(jnp.float32)
    reg = box_regression.reshape(-1, k, 4).astype(jnp.float32)
    labels = labels.reshape(-1).astype(jnp.int32)
    targets = box_targets.reshape(-1, 4).astype(jnp.float32)
    valid = valid.reshape(-1).astype(bool)
    n = jnp.maximum(valid.sum(), 1).astype(jnp.float32)
    ce = softmax_cross_entropy(logits, jnp.where(valid, labels, -1))
    loss_cls = jnp.sum(jnp.where(valid, ce, 0.0)) / n
    sel = jnp.take_along_axis(reg, jnp.maximum(labels, 0)[:, None, None], axis=1)[:, 0]
    pos = valid & (labels > 0)
    box = jnp.where(pos[:, None], smooth_l1(sel - targets, 1.0 / 9.0), 0.0)
    return loss_cls, jnp.sum(box) / n


def roi_detections(
    class_logits: jax.Array,
    box_regression: jax.Array,
    rois: jax.Array,
    rois_valid: jax.Array,
    image_size: tuple[int, int],
    *,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.5,
    max_detections: int = 100,
    pre_nms_top_k: int = 1000,
    min_size: float = 1e-2,
) -> dict[str, jax.Array]:
    """Detections of ONE image (torchvision ``RoIHeads.postprocess_detections``): softmax over
    ``class_logits [R, K]``, class-specific boxes decoded from ``box_regression [R, 4K]`` on ``rois``
    (weights 10, 10, 5, 5), background column dropped, then :func:`select_detections` (clip, score
    threshold, small boxes, class-aware NMS, top ``max_detections``). torchvision sends all R (K-1)
    pairs to NMS; here the best ``pre_nms_top_k`` do (the same unless more pass the threshold)."""
    r, k = class_logits.shape
    scores = jax.nn.softmax(class_logits.astype(jnp.float32), -1)
    boxes = decode_boxes(
        box_regression.reshape(r, k, 4).astype(jnp.float32), rois[:, None, :], ROI_HEAD_WEIGHTS
    )
    return select_detections(
        boxes[:, 1:],
        scores[:, 1:],
        image_size=image_size,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
        pre_nms_top_k=pre_nms_top_k,
        min_size=min_size,
        valid=rois_valid,
    )


def infer_scale(feature_size: int, image_size: int) -> float:
    """torchvision ``MultiScaleRoIAlign._infer_scale``: the power of two nearest to feature / image."""
    return 2.0 ** round(math.log2(feature_size / image_size))


def map_levels(
    boxes: jax.Array,
    k_min: int,
    k_max: int,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> jax.Array:
    """FPN Eq. 1 (torchvision ``LevelMapper``): int32 index in ``[0, k_max - k_min]`` of the pyramid
    level of each box, ``clamp(floor(k0 + log2(sqrt(area) / 224) + eps), k_min, k_max) - k_min``."""
    s = jnp.sqrt(box_area(boxes))
    lvl = jnp.floor(canonical_level + jnp.log2(s / canonical_scale) + eps)
    return (jnp.clip(lvl, k_min, k_max) - k_min).astype(jnp.int32)


def multiscale_roi_align(
    features: Sequence[jax.Array],
    boxes: jax.Array,
    image_size: tuple[int, int],
    output_size: int = 7,
    sampling_ratio: int = 2,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
) -> jax.Array:
    """torchvision ``MultiScaleRoIAlign``: ``features`` NHWC maps finest first (FPN P2..P5), ``boxes
    [B, R, 4]`` per image (input pixels) -> ``[B, R, o, o, C]``. A single map is plain RoI align at
    its scale. Every level is pooled and the mapped one selected (static shapes; L x the work of one)."""
    scales = [infer_scale(f.shape[1], image_size[0]) for f in features]

    def one(feats, b):
        pooled = [
            roi_align(f[None], b, output_size, spatial_scale=sc, sampling_ratio=sampling_ratio)
            for f, sc in zip(feats, scales)
        ]
        if len(pooled) == 1:
            return pooled[0]
        k_min, k_max = int(round(-math.log2(scales[0]))), int(round(-math.log2(scales[-1])))
        lvl = map_levels(b, k_min, k_max, canonical_scale, canonical_level)
        out = pooled[0]
        for i in range(1, len(pooled)):
            out = jnp.where((lvl == i)[:, None, None, None], pooled[i], out)
        return out

    return jax.vmap(one)(list(features), boxes)


# --------------------------------------------------------------------------- Mask R-CNN helpers


def project_masks(
    gt_masks: jax.Array, rois: jax.Array, matched_gt: jax.Array, resolution: int = 28
) -> jax.Array:
    """Mask targets of ONE image (He et al. 2017, Sec. 3 "Mask representation"; torchvision
    ``project_masks_on_boxes``): RoI align (adaptive sampling, not aligned) of the matched ground-truth
    mask ``gt_masks [M, H, W]`` over each RoI ``rois [R, 4]`` -> ``[R, resolution, resolution]`` in [0, 1]."""
    m = jnp.asarray(gt_masks, jnp.float32)[..., None]
    out = roi_align(m, rois, resolution, 1.0, sampling_ratio=-1, batch_indices=matched_gt)
    return out[..., 0]


def _paste_axis(lo, hi, size: int, m: int):
    """(size, m) bilinear weights (torch ``interpolate(bilinear, align_corners=False)`` of ``m`` samples
    onto ``hi - lo + 1`` pixels starting at ``lo``), zero outside the box and the image."""
    n = jnp.maximum(hi - lo + 1, 1)
    px = jnp.arange(size)
    u = (px - lo).astype(jnp.float32)
    src = jnp.maximum((u + 0.5) * (m / n.astype(jnp.float32)) - 0.5, 0.0)
    i0 = jnp.floor(src).astype(jnp.int32)
    i1 = jnp.minimum(i0 + 1, m - 1)
    lam = src - i0.astype(jnp.float32)
    inside = (px >= jnp.maximum(lo, 0)) & (px < jnp.minimum(hi + 1, size))
    cols = jnp.arange(m)
    w = (1 - lam)[:, None] * (cols[None] == i0[:, None]) + lam[:, None] * (cols[None] == i1[:, None])
    return jnp.where(inside[:, None], w, 0.0)


def paste_masks(
    masks: jax.Array, boxes: jax.Array, image_size: tuple[int, int], padding: int = 1
) -> jax.Array:
    """Masks ``[D, m, m]`` (probabilities) pasted into the image at their boxes ``[D, 4]`` -> ``[D, H, W]``,
    as torchvision's ``paste_masks_in_image``: masks padded by ``padding`` and boxes expanded to match,
    box corners truncated to integers, bilinear resize to the box (inclusive corners) and zero
    elsewhere. Separable, static shapes: ``Ry @ mask @ Cx^T`` per detection."""
    d, m = masks.shape[0], masks.shape[-1]
    masks = jnp.pad(jnp.asarray(masks, jnp.float32), ((0, 0), (padding, padding), (padding, padding)))
    mp = m + 2 * padding
    scale = mp / m
    boxes = jnp.asarray(boxes, jnp.float32)
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    cx, cy = (boxes[:, 2] + boxes[:, 0]) * 0.5, (boxes[:, 3] + boxes[:, 1]) * 0.5
    b = jnp.trunc(jnp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], -1)).astype(jnp.int32)
    h, w = image_size
    ry = jax.vmap(lambda lo, hi: _paste_axis(lo, hi, h, mp))(b[:, 1], b[:, 3])
    cxw = jax.vmap(lambda lo, hi: _paste_axis(lo, hi, w, mp))(b[:, 0], b[:, 2])
    hi = jax.lax.Precision.HIGHEST
    return jnp.einsum('dyi,dij,dxj->dyx', ry, masks, cxw, precision=hi).reshape(d, h, w)
