"""Region proposal network (Ren et al. 2015, Faster R-CNN, Sec. 3.1), as torchvision's
``RegionProposalNetwork``, with static shapes.

- :class:`RPNHead`: a 3x3 conv + ReLU, then sibling 1x1 convs for ``A`` objectness logits (one sigmoid
  score per anchor, torchvision's variant of the paper's 2k softmax scores) and ``4A`` box deltas at
  every location (Sec. 3.1, Fig. 3), shared over the FPN levels (Lin et al. 2017, Sec. 4.1).
- :func:`generate_proposals`: per level the top ``pre_nms_top_n`` anchors by objectness, decoded
  (weights 1, 1, 1, 1), clipped, tiny boxes dropped, per-level NMS at 0.7, the best
  ``post_nms_top_n`` kept over all levels (Sec. 3.3 "Implementation details"; torchvision
  ``filter_proposals``). Output is ``post_nms_top_n`` slots per image with a validity mask.
- :func:`rpn_loss`: anchors labelled by IoU (>= 0.7 or best for a ground truth: object; < 0.3:
  background), 256 anchors sampled per image, up to half positive; binary cross-entropy on the
  objectness and smooth L1 (beta 1/9) of the positives' deltas, both over the number sampled (Eq. 1
  with torchvision's normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research.detection.assign import assign_anchors, sample_balanced
from research.detection.boxes import RPN_WEIGHTS, clip_boxes, decode_boxes, min_size_mask
from research.detection.losses import smooth_l1
from research.detection.nms import batched_nms
from research.layers.common import FlaxConv

__all__ = ['RPNHead', 'generate_proposals', 'rpn_loss']

_RPN_INIT = nn.initializers.normal(0.01)  # torchvision RPNHead: normal(std=0.01), zero bias


class RPNHead(nn.Module):
    """``__call__(features)``: a list of NHWC maps -> (objectness ``[B, sum H W A]``, deltas ``[B, sum H W
    A, 4]``), levels concatenated in order, location-major then anchor (torchvision's
    ``concat_box_prediction_layers`` order, which :func:`multilevel_anchors` follows). Module names
    ``conv``, ``cls_logits``, ``bbox_pred`` as torchvision's ``RPNHead``."""

    num_anchors: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
        c = features[0].shape[-1]
        kw = dict(kernel_init=_RPN_INIT, bias_init=nn.initializers.zeros, dtype=self.dtype)
        conv = FlaxConv(c, (3, 3), padding=[(1, 1), (1, 1)], name='conv', **kw)
        cls = FlaxConv(self.num_anchors, (1, 1), name='cls_logits', **kw)
        box = FlaxConv(4 * self.num_anchors, (1, 1), name='bbox_pred', **kw)
        logits, deltas = [], []
        for f in features:
            t = nn.relu(conv(f))
            b = f.shape[0]
            logits.append(cls(t).reshape(b, -1).astype(jnp.float32))
            deltas.append(box(t).reshape(b, -1, 4).astype(jnp.float32))
        return logits, deltas


def generate_proposals(
    objectness: Sequence[jax.Array],
    deltas: Sequence[jax.Array],
    anchors: Sequence[jax.Array],
    image_size: tuple[int, int],
    *,
    pre_nms_top_n: int = 1000,
    post_nms_top_n: int = 1000,
    nms_thresh: float = 0.7,
    min_size: float = 1e-3,
    score_thresh: float = 0.0,
) -> dict[str, jax.Array]:
    """Proposals of a batch: per level ``objectness [B, N_l]`` logits, ``deltas [B, N_l, 4]`` and
    ``anchors [N_l, 4]``. Returns ``boxes [B, P, 4]``, ``scores [B, P]`` (sigmoid objectness) and
    ``valid [B, P]``, P = ``post_nms_top_n``, sorted by decreasing score (torchvision
    ``RegionProposalNetwork.filter_proposals``; gradients stopped as there)."""
    objectness = [jax.lax.stop_gradient(o) for o in objectness]
    deltas = [jax.lax.stop_gradient(d) for d in deltas]

    def one(obj_l, del_l):
        boxes, scores, levels = [], [], []
        for i, (o, d, a) in enumerate(zip(obj_l, del_l, anchors)):
            k = min(int(pre_nms_top_n), o.shape[0])
            s, idx = jax.lax.top_k(o, k)
            boxes.append(decode_boxes(d[idx], jnp.asarray(a)[idx], RPN_WEIGHTS))
            scores.append(s)
            levels.append(jnp.full((k,), i, jnp.int32))
        boxes = clip_boxes(jnp.concatenate(boxes), image_size)
        prob = jax.nn.sigmoid(jnp.concatenate(scores))
        lvl = jnp.concatenate(levels)
        ok = min_size_mask(boxes, min_size) & (prob >= score_thresh)
        keep, kvalid = batched_nms(boxes, prob, lvl, nms_thresh, post_nms_top_n, valid=ok)
        safe = jnp.maximum(keep, 0)
        return {
            'boxes': jnp.where(kvalid[:, None], boxes[safe], 0.0),
            'scores': jnp.where(kvalid, prob[safe], 0.0),
            'valid': kvalid,
        }

    return jax.vmap(one)(list(objectness), list(deltas))


def rpn_loss(
    key: jax.Array,
    objectness: jax.Array,
    deltas: jax.Array,
    anchors: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    *,
    fg_iou: float = 0.7,
    bg_iou: float = 0.3,
    batch_size_per_image: int = 256,
    positive_fraction: float = 0.5,
) -> tuple[jax.Array, jax.Array]:
    """(loss_objectness, loss_rpn_box_reg) of a batch, torchvision ``RegionProposalNetwork.compute_loss``:
    ``objectness [B, N]`` logits and ``deltas [B, N, 4]`` over all levels, ``anchors [N, 4]``,
    ``gt_boxes [B, M, 4]`` / ``gt_valid [B, M]``. Both losses are divided by the number of anchors
    sampled over the whole batch."""
    b = objectness.shape[0]
    anchors = jnp.asarray(anchors)

    def one(k, gt, gv):
        a = assign_anchors(anchors, gt, gv, fg_iou, bg_iou, True, RPN_WEIGHTS)
        pos, neg = sample_balanced(k, a['labels'], batch_size_per_image, positive_fraction)
        return pos, neg, a['box_targets']

    pos, neg, targets = jax.vmap(one)(jax.random.split(key, b), gt_boxes, jnp.asarray(gt_valid, bool))
    sampled = pos | neg
    n = jnp.maximum(sampled.sum(), 1).astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(objectness.astype(jnp.float32), pos.astype(jnp.float32))
    loss_obj = jnp.sum(jnp.where(sampled, bce, 0.0)) / n
    targets = jnp.where(jnp.isfinite(targets), targets, 0.0)
    box = jnp.where(pos[..., None], smooth_l1(deltas.astype(jnp.float32) - targets, 1.0 / 9.0), 0.0)
    return loss_obj, jnp.sum(box) / n
