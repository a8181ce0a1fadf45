"""Training-target assignment with static shapes (Ren et al. 2015, Faster R-CNN, Sec. 3.1.2 and 3.1.3).

Ground truth is padded to a fixed count ``M`` with a boolean ``gt_valid [M]`` mask, so every
function jits once and ``jax.vmap`` batches it over images.

- ``match``: torchvision's ``Matcher``: each anchor takes its highest-IoU ground truth; IoU >= ``high``
  -> that index, ``low <= IoU < high`` -> -2 (ignored), IoU < ``low`` -> -1 (background);
  ``allow_low_quality_matches`` also matches, for each ground truth, the anchors of highest IoU with
  it (ties included) to their best ground truth (the paper's condition (i)).
- ``assign_anchors``: RPN labels (1 object, 0 background, -1 ignored; IoU 0.7 / 0.3) and box targets.
- ``assign_proposals``: RoI-head labels (the class, 0 background; IoU 0.5) and targets.
- ``sample_balanced``: a fixed-size minibatch per image (RPN 256 anchors, up to half positive;
  RoI head 512, 25%), drawn with ``jax.random``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from research.detection.boxes import ROI_HEAD_WEIGHTS, RPN_WEIGHTS, box_iou, encode_boxes

__all__ = [
    'BELOW_LOW_THRESHOLD',
    'BETWEEN_THRESHOLDS',
    'assign_anchors',
    'assign_proposals',
    'match',
    'sample_balanced',
]

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match(
    quality: jax.Array,
    high: float,
    low: float,
    allow_low_quality_matches: bool = False,
    gt_valid: jax.Array | None = None,
) -> jax.Array:
    """int32 ``[N]`` matched ground-truth index (or -1 / -2) for a ``[M, N]`` quality (IoU) matrix.

    Equal to ``torchvision.models.detection._utils.Matcher(high, low, allow_low_quality_matches)`` on
    the valid rows; with no valid ground truth every anchor is -1.
    """
    if low > high:
        raise ValueError(f'low threshold {low} > high threshold {high}')
    quality = jnp.asarray(quality)
    m = quality.shape[0]
    gt_valid = jnp.ones((m,), bool) if gt_valid is None else jnp.asarray(gt_valid, bool)
    q = jnp.where(gt_valid[:, None], quality, -1.0)
    best = jnp.argmax(q, 0).astype(jnp.int32)
    best_val = jnp.max(q, 0)
    matches = jnp.where(
        best_val < low, BELOW_LOW_THRESHOLD, jnp.where(best_val < high, BETWEEN_THRESHOLDS, best)
    )
    if allow_low_quality_matches:
        highest = jnp.max(q, 1, keepdims=True)
        update = jnp.any((q == highest) & gt_valid[:, None], 0)
        matches = jnp.where(update, best, matches)
    return matches.astype(jnp.int32)


def _targets(matches, references, gt_boxes, weights):
    safe = jnp.maximum(matches, 0)
    targets = encode_boxes(gt_boxes[safe], references, weights)
    return jnp.where((matches >= 0)[:, None], targets, 0.0), safe


def assign_anchors(
    anchors: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    fg_iou: float = 0.7,
    bg_iou: float = 0.3,
    allow_low_quality_matches: bool = True,
    weights: Sequence[float] = RPN_WEIGHTS,
) -> dict[str, jax.Array]:
    """RPN targets for ``anchors [N, 4]`` and ``gt_boxes [M, 4]`` (``gt_valid [M]``), as torchvision's
    ``RegionProposalNetwork.assign_targets_to_anchors``.

    Returns ``labels`` int32 [N] (1 / 0 / -1 ignored), ``matches`` int32 [N] (the Matcher output),
    ``matched_gt`` int32 [N] (index, 0 where unmatched), ``box_targets`` float32 [N, 4] (deltas to
    the matched box; 0 where unmatched) and ``iou`` [N] (the best valid-ground-truth IoU).
    """
    anchors, gt_boxes = jnp.asarray(anchors), jnp.asarray(gt_boxes)
    quality = box_iou(gt_boxes, anchors)
    matches = match(quality, fg_iou, bg_iou, allow_low_quality_matches, gt_valid)
    labels = jnp.where(matches >= 0, 1, jnp.where(matches == BELOW_LOW_THRESHOLD, 0, -1)).astype(jnp.int32)
    targets, safe = _targets(matches, anchors, gt_boxes, weights)
    iou = jnp.max(jnp.where(jnp.asarray(gt_valid, bool)[:, None], quality, 0.0), 0)
    return {'labels': labels, 'matches': matches, 'matched_gt': safe, 'box_targets': targets, 'iou': iou}


def assign_proposals(
    proposals: jax.Array,
    gt_boxes: jax.Array,
    gt_labels: jax.Array,
    gt_valid: jax.Array,
    fg_iou: float = 0.5,
    bg_iou: float = 0.5,
    weights: Sequence[float] = ROI_HEAD_WEIGHTS,
) -> dict[str, jax.Array]:
    """RoI-head targets (torchvision's ``RoIHeads.assign_targets_to_proposals``): ``labels`` int32 [N] =
    the matched box's class (>= 1), 0 background (IoU < ``bg_iou``), -1 ignored (in between), and
    ``box_targets`` with the (10, 10, 5, 5) weights. Append the ground truth to the proposals first
    (as torchvision does) so that every object has a positive."""
    out = assign_anchors(proposals, gt_boxes, gt_valid, fg_iou, bg_iou, False, weights)
    cls = jnp.asarray(gt_labels).astype(jnp.int32)[out['matched_gt']]
    m = out['matches']
    out['labels'] = jnp.where(m >= 0, cls, jnp.where(m == BELOW_LOW_THRESHOLD, 0, -1)).astype(jnp.int32)
    return out


def _take_random(key, mask, count, max_count: int):
    """``mask`` restricted to ``count`` (<= ``max_count``, static) of its True entries, drawn uniformly
    without replacement: the entries of the largest uniform priorities (a top-k, not a full sort)."""
    u = jax.random.uniform(key, mask.shape)
    k = min(int(max_count), mask.shape[0])
    vals, idx = jax.lax.top_k(jnp.where(mask, u, -1.0), k)
    return jnp.zeros(mask.shape, bool).at[idx].set((jnp.arange(k) < count) & (vals >= 0))


def sample_balanced(
    key: jax.Array, labels: jax.Array, batch_size_per_image: int = 256, positive_fraction: float = 0.5
) -> tuple[jax.Array, jax.Array]:
    """Boolean (positive, negative) masks of a minibatch (torchvision's ``BalancedPositiveNegativeSampler``):
    ``min(int(B f), #pos)`` random positives (labels >= 1) and ``min(B - that, #neg)`` random negatives
    (labels == 0); -1 is never drawn."""
    labels = jnp.asarray(labels)
    pos, neg = labels >= 1, labels == 0
    num_pos = jnp.minimum(int(batch_size_per_image * positive_fraction), pos.sum())
    num_neg = jnp.minimum(batch_size_per_image - num_pos, neg.sum())
    kp, kn = jax.random.split(key)
    max_pos = int(batch_size_per_image * positive_fraction)
    return _take_random(kp, pos, num_pos, max_pos), _take_random(kn, neg, num_neg, batch_size_per_image)
