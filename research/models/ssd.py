"""SSD: Liu, Anguelov, Erhan, Szegedy, Reed, Fu, Berg 2016, "SSD: Single Shot MultiBox Detector", in
torchvision's ``ssd300_vgg16`` layout (weights convert, ``research.interop.tv_detection``).

- Base network (Sec. 3, "Base network"): VGG-16 conv1_1..conv5_3 with a ceil-mode pool3 (38x38 conv4_3 at
  300 px), pool5 3x3/1, fc6 as a 3x3 conv with dilation 6 (1024), fc7 1x1 (1024); L2 normalisation of
  conv4_3 with a learnable per-channel scale initialised to 20 (Sec. 3.1, ParseNet).
- Extra feature layers (Fig. 2): [1x1 conv, 3x3 conv] pairs (conv8_2 10x10, conv9_2 5x5 with stride 2,
  conv10_2 3x3, conv11_2 1x1 unpadded): ``extras`` = ((mid, out, stride, padding), ...).
- Default boxes (Sec. 2.2, Eq. 4): ``research.detection.anchors.default_boxes`` with torchvision's scales
  (0.07, 0.15, ..., 1.05), steps (8, 16, 32, 64, 100, 300) and aspect ratios ([2], [2, 3] x 3, [2], [2]):
  4, 6, 6, 6, 4, 4 boxes per location, 8,732 at 300 px.
- Heads: a 3x3 conv per feature map for the class scores (softmax over ``num_classes`` incl. background)
  and one for the 4 offsets (box coder weights (10, 10, 5, 5), torchvision).
- Training (Sec. 2.2): each ground truth takes its best default box, and every default box with IoU >= 0.5
  (torchvision's ``SSDMatcher``); loss = (smooth L1 (beta 1) over positives + softmax cross-entropy over
  positives and the hardest negatives, at most ``neg_pos_ratio`` (3) per positive) / N positives of the
  batch (Eq. 1, alpha = 1).
- Inference: softmax scores, per class those above 0.01 and the best 400, class-wise NMS at 0.45, the best
  200 (torchvision). With static shapes the per-class candidates are then cut to the best
  ``pre_nms_top_k`` (2000) overall before NMS (torchvision runs NMS on all of them; it matters only when
  more than ``pre_nms_top_k`` candidates pass the threshold).

Parameter count: ``ssd300_vgg16`` 35,641,826 (91 classes, = torchvision). ``ssd_mnist`` is a CPU-sized
variant for 128x128 mnist_det canvases: a VGG-like base 16-128 wide, four feature maps (16, 8, 4, 2),
scales 0.15..0.6.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.detection.anchors import default_boxes
from research.detection.assign import match
from research.detection.boxes import ROI_HEAD_WEIGHTS, box_iou, decode_boxes, encode_boxes
from research.detection.losses import hard_negative_mask, smooth_l1, softmax_cross_entropy
from research.detection.postprocess import select_detections
from research.layers.common import Conv, FlaxConv
from research.layers.pooling import max_pool
from research.models.retinanet import flatten_head

_XAVIER = nn.initializers.xavier_uniform()
#: VGG-16 (Table 1, D) conv widths per block.
VGG16_WIDTHS = (64, 128, 256, 512, 512)
#: torchvision's extra layers: (1x1 width, 3x3 width, 3x3 stride, 3x3 padding).
SSD300_EXTRAS = ((256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0))
SSD300_ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
SSD300_SCALES = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
SSD300_STEPS = (8, 16, 32, 64, 100, 300)


class L2Norm(nn.Module):
    """ParseNet L2 normalisation over channels with a learned per-channel scale (init 20)."""

    init_scale: float = 20.0

    @nn.compact
    def __call__(self, x):
        scale = self.param('scale', nn.initializers.constant(self.init_scale), (x.shape[-1],))
        norm = jnp.sqrt(jnp.sum(x.astype(jnp.float32) ** 2, -1, keepdims=True))
        return (x / jnp.maximum(norm, 1e-12) * scale).astype(x.dtype)  # F.normalize(eps=1e-12)


class SSDVGG(nn.Module):
    """VGG base (conv1_1..conv5_3, 3 convs in blocks 3-5), fc6/fc7 and the extra layers; returns the list
    of feature maps [L2-normed conv4_3, fc7, extra_1, ...]. ``widths`` per VGG block, ``fc_width``."""

    widths: Sequence[int] = VGG16_WIDTHS
    fc_width: int = 1024
    fc6_dilation: int = 6
    extras: Sequence[Sequence[int]] = SSD300_EXTRAS
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(Conv, kernel_size=(3, 3), padding=1, dtype=self.dtype)
        x = jnp.asarray(x, self.dtype)
        for b, (w, n) in enumerate(zip(self.widths, (2, 2, 3, 3, 3))):
            if b:
                # pool1, pool2 floor; pool3 ceil (torchvision); pool4 floor.
                x = max_pool(x, 2, 2, ceil_mode=(b == 3))
            for i in range(n):
                x = nn.relu(conv(w, name=f'conv{b + 1}_{i + 1}')(x))
            if b == 3:
                outs = [L2Norm(name='l2norm')(x)]
        x = max_pool(x, 3, 1, padding=1)  # pool5
        d = self.fc6_dilation
        x = nn.relu(
            FlaxConv(
                self.fc_width,
                (3, 3),
                padding=d,
                kernel_dilation=d,
                kernel_init=_XAVIER,
                dtype=self.dtype,
                name='fc6',
            )(x)
        )
        x = nn.relu(FlaxConv(self.fc_width, (1, 1), kernel_init=_XAVIER, dtype=self.dtype, name='fc7')(x))
        outs.append(x)
        for i, (mid, out, stride, pad) in enumerate(self.extras):
            x = nn.relu(
                FlaxConv(mid, (1, 1), kernel_init=_XAVIER, dtype=self.dtype, name=f'extra{i + 1}_1')(x)
            )
            x = FlaxConv(
                out,
                (3, 3),
                (stride, stride),
                padding=pad,
                kernel_init=_XAVIER,
                dtype=self.dtype,
                name=f'extra{i + 1}_2',
            )(x)
            x = nn.relu(x)
            outs.append(x)
        return outs


class SSD(nn.Module):
    """SSD (Liu et al. 2016, Fig. 2: multi-scale default boxes, hard negative mining). Detector contract: ``__call__(images, targets=None, train=False,
    proposals=None)``; ``predict(images)`` gives the raw per-box outputs.

    Fields: widths / fc_width / fc6_dilation / extras (base network), aspect_ratios (per feature map),
    scales (None = Eq. 4 from min_ratio / max_ratio), steps (None = feature-map cells), clip_boxes, iou
    (0.5), neg_pos_ratio (3), box_loss_weight / cls_loss_weight, score_thresh, nms_thresh,
    detections_per_img, topk_candidates (per class), pre_nms_top_k.
    """

    num_classes: int = 91
    widths: Sequence[int] = VGG16_WIDTHS
    fc_width: int = 1024
    fc6_dilation: int = 6
    extras: Sequence[Sequence[int]] = SSD300_EXTRAS
    aspect_ratios: Sequence[Sequence[float]] = SSD300_ASPECT_RATIOS
    scales: Sequence[float] | None = SSD300_SCALES
    min_ratio: float = 0.15
    max_ratio: float = 0.9
    steps: Sequence[int] | None = SSD300_STEPS
    clip_boxes: bool = True
    iou: float = 0.5
    neg_pos_ratio: float = 3.0
    box_loss_weight: float = 1.0
    cls_loss_weight: float = 1.0
    score_thresh: float = 0.01
    nms_thresh: float = 0.45
    detections_per_img: int = 200
    topk_candidates: int = 400
    pre_nms_top_k: int = 2000
    dtype: Any = jnp.float32

    needs_masks: ClassVar[bool] = False
    needs_proposals: ClassVar[bool] = False

    def __post_init__(self):
        if len(self.aspect_ratios) != len(self.extras) + 2:
            raise ValueError(
                f'aspect_ratios needs one entry per feature map ({len(self.extras) + 2}), got {len(self.aspect_ratios)}'
            )
        super().__post_init__()

    @nn.compact
    def predict(self, images: jax.Array, train: bool = False) -> dict[str, Any]:
        """``cls_logits`` [B, N, K], ``box_regression`` [B, N, 4] (torchvision order), ``anchors`` [N, 4]."""
        feats = SSDVGG(
            self.widths, self.fc_width, self.fc6_dilation, self.extras, self.dtype, name='backbone'
        )(images)
        k = self.num_classes
        cls, box = [], []
        for i, (f, ratios) in enumerate(zip(feats, self.aspect_ratios)):
            a = 2 + 2 * len(ratios)
            conv = functools.partial(
                FlaxConv, kernel_size=(3, 3), padding=1, kernel_init=_XAVIER, dtype=self.dtype
            )
            cls.append(flatten_head(conv(a * k, name=f'cls_{i}')(f), k))
            box.append(flatten_head(conv(a * 4, name=f'box_{i}')(f), 4))
        anchors = default_boxes(
            [tuple(f.shape[1:3]) for f in feats],
            tuple(images.shape[1:3]),
            self.aspect_ratios,
            self.scales,
            self.min_ratio,
            self.max_ratio,
            self.steps,
            self.clip_boxes,
        )
        return {
            'cls_logits': jnp.concatenate(cls, 1).astype(jnp.float32),
            'box_regression': jnp.concatenate(box, 1).astype(jnp.float32),
            'anchors': anchors,
        }

    def __call__(self, images, targets=None, train: bool = False, proposals=None):
        out = self.predict(images, train=train)
        if train:
            return self.loss(out, targets)
        post = functools.partial(
            ssd_postprocess,
            anchors=jnp.asarray(out['anchors']),
            image_size=tuple(images.shape[1:3]),
            score_thresh=self.score_thresh,
            nms_thresh=self.nms_thresh,
            detections_per_img=self.detections_per_img,
            topk_candidates=self.topk_candidates,
            pre_nms_top_k=self.pre_nms_top_k,
        )
        return jax.vmap(post)(out['cls_logits'], out['box_regression'])

    def loss(self, out, targets) -> dict[str, jax.Array]:
        """torchvision's ``SSD.compute_loss`` (Eq. 1 with hard negative mining)."""
        anchors = jnp.asarray(out['anchors'])

        def one(logits, deltas, boxes, labels, valid):
            matches = ssd_match(box_iou(boxes, anchors), self.iou, valid)
            fg = matches >= 0
            safe = jnp.maximum(matches, 0)
            target = encode_boxes(boxes[safe], anchors, ROI_HEAD_WEIGHTS)
            reg = jnp.where(fg[:, None], smooth_l1(deltas - target, 1.0), 0.0).sum()
            cls_t = jnp.where(fg, labels[safe], 0)
            ce = softmax_cross_entropy(logits, cls_t)
            neg = hard_negative_mask(ce, fg, ~fg, self.neg_pos_ratio)
            return reg, jnp.where(fg | neg, ce, 0.0).sum(), fg.sum()

        reg, cls, nfg = jax.vmap(one)(
            out['cls_logits'],
            out['box_regression'],
            jnp.asarray(targets['boxes'], jnp.float32),
            jnp.asarray(targets['labels'], jnp.int32),
            jnp.asarray(targets['box_mask'], bool),
        )
        n = jnp.maximum(nfg.sum(), 1).astype(jnp.float32)
        return {
            'loss_box_reg': self.box_loss_weight * reg.sum() / n,
            'loss_classifier': self.cls_loss_weight * cls.sum() / n,
        }


def ssd_match(iou: jax.Array, threshold: float, gt_valid: jax.Array) -> jax.Array:
    """torchvision's ``SSDMatcher``: ``Matcher(t, t)`` plus, for every (valid) ground truth, its
    highest-IoU default box matched to it. ``iou`` [M, N] -> int32 [N] (-1 background)."""
    m, n = iou.shape
    matches = match(iou, threshold, threshold, False, gt_valid)
    best = jnp.argmax(jnp.where(gt_valid[:, None], iou, -1.0), 1)
    return matches.at[jnp.where(gt_valid, best, n)].set(jnp.arange(m, dtype=jnp.int32), mode='drop')


def ssd_postprocess(
    cls_logits: jax.Array,
    box_regression: jax.Array,
    anchors: jax.Array,
    *,
    image_size: tuple[int, int],
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    detections_per_img: int = 200,
    topk_candidates: int = 400,
    pre_nms_top_k: int = 2000,
) -> dict[str, jax.Array]:
    """One image: torchvision's ``SSD.postprocess_detections`` with static shapes (see the module docstring)."""
    scores = jax.nn.softmax(cls_logits.astype(jnp.float32), -1)[:, 1:]
    boxes = decode_boxes(box_regression.astype(jnp.float32), anchors, ROI_HEAD_WEIGHTS)
    ok = scores > score_thresh
    masked = jnp.where(ok, scores, -1.0)
    t = min(int(topk_candidates), scores.shape[0])
    kth = jax.lax.top_k(masked.T, t)[0][:, -1]  # per-class t-th best score
    keep = ok & (masked >= kth[None, :])
    return select_detections(
        boxes,
        jnp.where(keep, scores, -1.0),
        image_size=image_size,
        score_threshold=score_thresh,
        iou_threshold=nms_thresh,
        max_detections=detections_per_img,
        pre_nms_top_k=pre_nms_top_k,
        min_size=0.0,
    )


SSD300VGG16 = functools.partial(SSD)
# CPU-sized: 128x128 inputs, 11 classes; feature maps 16, 8, 4, 2 (conv4_3, fc7, two extras).
SSDMnist = functools.partial(
    SSD,
    num_classes=11,
    widths=(16, 32, 64, 128, 128),
    fc_width=128,
    fc6_dilation=2,
    extras=((64, 128, 2, 1), (32, 64, 2, 1)),
    aspect_ratios=((2,), (2,), (2,), (2,)),
    scales=None,
    min_ratio=0.15,
    max_ratio=0.6,
    steps=None,
    detections_per_img=100,
    topk_candidates=100,
    pre_nms_top_k=500,
)

REGISTRY_ENTRIES = {'ssd': SSD, 'ssd300_vgg16': SSD300VGG16, 'ssd_mnist': SSDMnist}

__all__ = ['SSD', 'SSDVGG', 'L2Norm', 'ssd_match', 'ssd_postprocess']
