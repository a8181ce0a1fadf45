"""RetinaNet: Lin, Goyal, Girshick, He, Dollar 2017, "Focal Loss for Dense Object Detection", in
torchvision's layout (``retinanet_resnet50_fpn`` weights convert, ``research.interop.tv_detection``).

- Backbone: ResNet (``research.models.resnet``, ``include_top=False``) C3-C5 -> FPN (Sec. 4, "RetinaNet
  Detector": P3-P5 from the FPN, P6 = 3x3/2 conv, P7 = 3x3/2 conv of ReLU(P6), 256 channels). torchvision's
  v1 model builds P6 from P5 (``LastLevelP6P7(256, 256)``), the paper from C5: ``p6_from`` ('p5' / 'c5').
- Anchors (Sec. 4): per level 3 scales {2^0, 2^(1/3), 2^(2/3)} x 3 aspect ratios {1:2, 1:1, 2:1}, base
  sizes 32..512 on P3..P7 (torchvision rounds the scales: (32, 40, 50), ...).
- Heads (Sec. 4, Fig. 3): a classification subnet (``head_convs`` x [3x3 conv + ReLU], 3x3 conv to K A
  sigmoid logits, weights N(0, 0.01), prior bias -log((1 - pi) / pi), pi = 0.01, Sec. 4.1 "Initialization")
  and a box subnet (same, 4 A deltas), shared across levels.
- Training (Sec. 4.1): IoU >= 0.5 foreground, < 0.4 background, in between ignored, plus torchvision's
  low-quality matches; focal loss (Eq. 5, ``gamma`` 2, ``alpha`` 0.25: Table 1a/b) summed over all
  non-ignored anchors and classes, and an L1 box loss (torchvision; ``box_loss='smooth_l1'`` with
  ``smooth_l1_beta`` for the paper's smooth L1) over the foreground, each divided by the number of
  foreground anchors of the image (at least 1), averaged over images (torchvision).
- Inference (Sec. 4, "Inference"): per level the top ``topk_candidates`` (1000) (anchor, class) scores
  above ``score_thresh`` (0.05), boxes decoded, merged, class-wise NMS at 0.5, the best 300 kept
  (torchvision; the paper keeps 100).

Like torchvision, the classifier has ``num_classes`` columns including the background column 0 (which
is always a negative target); detections use columns 1.. only (torchvision may also output label 0).

Parameter counts (91 classes): ``retinanet_resnet50_fpn`` 34,014,999 with torchvision's frozen-BN backbone
(``backbone_norm='frozen'``: BN statistics and affine in ``batch_stats``, as torchvision's buffers; the
torchvision count of a model built with a pretrained backbone), 34,068,119 with ``backbone_norm='batch'``
(torchvision's count with ``weights_backbone=None``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.detection.anchors import multilevel_anchors
from research.detection.assign import BETWEEN_THRESHOLDS, match
from research.detection.boxes import RPN_WEIGHTS, box_iou, decode_boxes, encode_boxes
from research.detection.fpn import FeaturePyramidNetwork
from research.detection.losses import sigmoid_focal_loss, smooth_l1
from research.detection.postprocess import select_detections
from research.layers.common import BatchNorm, FlaxConv
from research.models.resnet import ResNet

#: torchvision's ``_default_anchorgen``: (x, int(x 2^(1/3)), int(x 2^(2/3))) for x in 32..512 (P3..P7).
TV_ANCHOR_SIZES = tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in (32, 64, 128, 256, 512))
#: CPU variant for 128x128 mnist_det canvases (digits ~22-56 px): 16..64 on P3..P5.
SMALL_ANCHOR_SIZES = tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in (16, 32, 64))

_FPN_EXTRA_INIT = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')  # kaiming_uniform_(a=1)
_HEAD_INIT = nn.initializers.normal(0.01)


class FrozenBatchNorm(nn.Module):
    """torchvision's ``FrozenBatchNorm2d``: ``x * w / sqrt(var + eps) + b - mean * w / sqrt(var + eps)`` with
    w, b, mean, var fixed (all in ``batch_stats``, never updated: a pretrained backbone's statistics)."""

    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        var = lambda name, init: self.variable('batch_stats', name, init, (c,), jnp.float32).value  # noqa: E731
        w, b = var('scale', jnp.ones), var('bias', jnp.zeros)
        mean, v = var('mean', jnp.zeros), var('var', jnp.ones)
        s = w * jax.lax.rsqrt(v + self.epsilon)
        return (x * s + (b - mean * s)).astype(self.dtype)


def _backbone_norm(kind: str):
    if kind == 'frozen':
        return FrozenBatchNorm
    if kind == 'batch':
        return BatchNorm
    raise ValueError(f"backbone_norm must be 'frozen' or 'batch', got {kind!r}")


def flatten_head(x: jax.Array, width: int) -> jax.Array:
    """[B, H, W, A * width] -> [B, H W A, width]: torchvision's (location, anchor) order."""
    return x.reshape(x.shape[0], -1, width)


def level_topk_mask(scores: jax.Array, level_sizes: Sequence[int], top_k: int) -> jax.Array:
    """Boolean mask [N, K] of the best ``top_k`` (anchor, class) scores within each level (torchvision's
    per-level ``topk_candidates``); ``level_sizes`` = anchors per level (static)."""
    out, start = [], 0
    k = scores.shape[1]
    for n in level_sizes:
        flat = scores[start : start + n].reshape(-1)
        t = min(int(top_k), flat.shape[0])
        _, idx = jax.lax.top_k(flat, t)
        out.append(jnp.zeros(flat.shape, bool).at[idx].set(True).reshape(n, k))
        start += n
    return jnp.concatenate(out, 0)


def retinanet_postprocess(
    cls_logits: jax.Array,
    box_regression: jax.Array,
    anchors: jax.Array,
    level_sizes: Sequence[int],
    *,
    image_size: tuple[int, int],
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 300,
    topk_candidates: int = 1000,
) -> dict[str, jax.Array]:
    """One image: torchvision's ``RetinaNet.postprocess_detections`` with static shapes. ``cls_logits``
    [N, K] (column 0 = background, not reported), ``box_regression`` [N, 4], ``anchors`` [N, 4]."""
    scores = jax.nn.sigmoid(cls_logits.astype(jnp.float32))[:, 1:]
    keep = level_topk_mask(jnp.where(scores > score_thresh, scores, -1.0), level_sizes, topk_candidates)
    boxes = decode_boxes(box_regression.astype(jnp.float32), anchors, RPN_WEIGHTS)
    total = sum(min(int(topk_candidates), n * scores.shape[1]) for n in level_sizes)
    return select_detections(
        boxes,
        jnp.where(keep & (scores > score_thresh), scores, -1.0),
        image_size=image_size,
        score_threshold=score_thresh,
        iou_threshold=nms_thresh,
        max_detections=detections_per_img,
        pre_nms_top_k=total,
        min_size=0.0,
    )


class RetinaNetHead(nn.Module):
    """One subnet (Fig. 3 c/d): ``num_convs`` x [3x3 conv + ReLU] then a 3x3 conv to ``out`` channels,
    applied with shared weights to every level. Names: ``conv_i``, ``final_name``."""

    width: int
    out: int
    num_convs: int = 4
    final_name: str = 'cls_logits'
    prior_bias: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, levels: Sequence[jax.Array]) -> list[jax.Array]:
        conv = functools.partial(
            FlaxConv, kernel_size=(3, 3), padding=1, kernel_init=_HEAD_INIT, dtype=self.dtype
        )
        convs = [conv(self.width, name=f'conv_{i}') for i in range(self.num_convs)]
        final = conv(self.out, bias_init=nn.initializers.constant(self.prior_bias), name=self.final_name)
        outs = []
        for x in levels:
            for c in convs:
                x = nn.relu(c(x))
            outs.append(final(x))
        return outs


class RetinaNet(nn.Module):
    """RetinaNet (Lin et al. 2017, Fig. 3: ResNet + FPN, class and box subnets, focal loss). Detector contract: ``__call__(images, targets=None,
    train=False, proposals=None)``; ``predict(images, train)`` gives the raw per-anchor outputs.

    Fields: layers / block / width / stem_width (ResNet backbone), backbone_norm ('frozen' | 'batch'),
    fpn_width, head_width (None = fpn_width), head_convs, min_level (2 or 3) / max_level (5..7),
    p6_from ('p5' torchvision v1 | 'c5' paper), anchor_sizes (one tuple per level), aspect_ratios,
    fg_iou / bg_iou / allow_low_quality_matches, focal_alpha / focal_gamma, box_loss ('l1' | 'smooth_l1'),
    smooth_l1_beta, prior_prob, cls_loss_weight / box_loss_weight, score_thresh, nms_thresh,
    detections_per_img, topk_candidates, remat (each backbone block under ``nn.remat``, ``ResNet.remat``).
    """

    num_classes: int = 91
    layers: Sequence[int] = (3, 4, 6, 3)
    block: str = 'bottleneck'
    width: int = 64
    stem_width: int = 64
    backbone_norm: str = 'frozen'
    fpn_width: int = 256
    head_width: int | None = None
    head_convs: int = 4
    min_level: int = 3
    max_level: int = 7
    p6_from: str = 'p5'
    anchor_sizes: Sequence[Sequence[float]] = TV_ANCHOR_SIZES
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)
    fg_iou: float = 0.5
    bg_iou: float = 0.4
    allow_low_quality_matches: bool = True
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_loss: str = 'l1'
    smooth_l1_beta: float = 0.11
    prior_prob: float = 0.01
    cls_loss_weight: float = 1.0
    box_loss_weight: float = 1.0
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 300
    topk_candidates: int = 1000
    remat: bool = False
    dtype: Any = jnp.float32

    needs_masks: ClassVar[bool] = False
    needs_proposals: ClassVar[bool] = False

    def __post_init__(self):
        if self.min_level not in (2, 3) or not 5 <= self.max_level <= 7:
            raise ValueError(
                f'need min_level in (2, 3) and max_level in 5..7, got {self.min_level}, {self.max_level}'
            )
        if len(self.anchor_sizes) != self.max_level - self.min_level + 1:
            raise ValueError(
                f'anchor_sizes needs one entry per level P{self.min_level}-P{self.max_level}, got {len(self.anchor_sizes)}'
            )
        if self.box_loss not in ('l1', 'smooth_l1') or self.p6_from not in ('p5', 'c5'):
            raise ValueError(
                f"box_loss must be 'l1'/'smooth_l1' and p6_from 'p5'/'c5'; got {self.box_loss!r}, {self.p6_from!r}"
            )
        super().__post_init__()

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_sizes[0]) * len(self.aspect_ratios)

    @nn.compact
    def predict(self, images: jax.Array, train: bool = False) -> dict[str, Any]:
        """Raw outputs: ``cls_logits`` [B, N, K], ``box_regression`` [B, N, 4] (levels concatenated in
        torchvision's order), ``anchors`` [N, 4] (numpy) and ``level_sizes`` (anchors per level)."""
        feats = ResNet(
            layers=self.layers,
            block=self.block,
            width=self.width,
            stem_width=self.stem_width,
            norm=_backbone_norm(self.backbone_norm),
            include_top=False,
            dtype=self.dtype,
            remat=self.remat,
            name='backbone',
        )(images, train=train)
        c = [feats[f'stage{lvl}'] for lvl in range(self.min_level, 6)]
        p = FeaturePyramidNetwork(self.fpn_width, self.min_level, extra=None, dtype=self.dtype, name='fpn')(c)
        levels = list(p.values())
        if self.max_level >= 6:
            conv = functools.partial(
                FlaxConv,
                features=self.fpn_width,
                kernel_size=(3, 3),
                strides=(2, 2),
                padding=1,
                kernel_init=_FPN_EXTRA_INIT,
                dtype=self.dtype,
            )
            p6 = conv(name='p6')(levels[-1] if self.p6_from == 'p5' else c[-1])
            levels.append(p6)
            if self.max_level >= 7:
                levels.append(conv(name='p7')(nn.relu(p6)))
        a, k = self.num_anchors, self.num_classes
        hw = self.head_width or self.fpn_width
        prior = -math.log((1 - self.prior_prob) / self.prior_prob)
        cls = RetinaNetHead(
            hw, a * k, self.head_convs, 'cls_logits', prior, self.dtype, name='classification_head'
        )(levels)
        box = RetinaNetHead(hw, a * 4, self.head_convs, 'bbox_reg', 0.0, self.dtype, name='regression_head')(
            levels
        )
        sizes = [tuple(x.shape[1:3]) for x in levels]
        anchors = multilevel_anchors(
            sizes, tuple(images.shape[1:3]), self.anchor_sizes, (tuple(self.aspect_ratios),) * len(sizes)
        )
        return {
            'cls_logits': jnp.concatenate([flatten_head(x, k) for x in cls], 1).astype(jnp.float32),
            'box_regression': jnp.concatenate([flatten_head(x, 4) for x in box], 1).astype(jnp.float32),
            'anchors': anchors,
            'level_sizes': [h * w * a for h, w in sizes],
        }

    def __call__(self, images, targets=None, train: bool = False, proposals=None):
        out = self.predict(images, train=train)
        if train:
            return self.loss(out, targets)
        post = functools.partial(
            retinanet_postprocess,
            anchors=jnp.asarray(out['anchors']),
            level_sizes=out['level_sizes'],
            image_size=tuple(images.shape[1:3]),
            score_thresh=self.score_thresh,
            nms_thresh=self.nms_thresh,
            detections_per_img=self.detections_per_img,
            topk_candidates=self.topk_candidates,
        )
        return jax.vmap(post)(out['cls_logits'], out['box_regression'])

    def loss(self, out, targets) -> dict[str, jax.Array]:
        """torchvision's ``RetinaNetHead.compute_loss`` (see the module docstring)."""
        anchors = jnp.asarray(out['anchors'])

        def one(logits, deltas, boxes, labels, valid):
            matches = match(
                box_iou(boxes, anchors), self.fg_iou, self.bg_iou, self.allow_low_quality_matches, valid
            )
            fg = matches >= 0
            num_fg = jnp.maximum(fg.sum(), 1).astype(jnp.float32)
            safe = jnp.maximum(matches, 0)
            onehot = jax.nn.one_hot(jnp.where(fg, labels[safe], -1), self.num_classes)
            focal = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma).sum(-1)
            cls = jnp.where(matches != BETWEEN_THRESHOLDS, focal, 0.0).sum() / num_fg
            target = encode_boxes(boxes[safe], anchors, RPN_WEIGHTS)
            beta = 0.0 if self.box_loss == 'l1' else self.smooth_l1_beta
            reg = jnp.where(fg[:, None], smooth_l1(deltas - target, beta), 0.0).sum() / num_fg
            return cls, reg

        cls, reg = jax.vmap(one)(
            out['cls_logits'],
            out['box_regression'],
            jnp.asarray(targets['boxes'], jnp.float32),
            jnp.asarray(targets['labels'], jnp.int32),
            jnp.asarray(targets['box_mask'], bool),
        )
        return {
            'loss_classifier': self.cls_loss_weight * cls.mean(),
            'loss_box_reg': self.box_loss_weight * reg.mean(),
        }


# torchvision's retinanet_resnet50_fpn (v1): ResNet-50, P6 from P5, frozen BN.
RetinaNetResNet50FPN = functools.partial(RetinaNet, layers=(3, 4, 6, 3), block='bottleneck')
# CPU-sized: ResNet-18 at width 16, FPN / heads 64 wide, 2 head convs, P3-P5 with 16..64 px anchors
# (128x128 mnist_det canvases, 11 classes incl. background): about 1M parameters.
RetinaNetResNet18FPN = functools.partial(
    RetinaNet,
    num_classes=11,
    layers=(2, 2, 2, 2),
    block='basic',
    width=16,
    stem_width=16,
    backbone_norm='batch',
    fpn_width=64,
    head_convs=2,
    min_level=3,
    max_level=5,
    anchor_sizes=SMALL_ANCHOR_SIZES,
    detections_per_img=100,
    topk_candidates=300,
)

REGISTRY_ENTRIES = {
    'retinanet': RetinaNet,
    'retinanet_resnet50_fpn': RetinaNetResNet50FPN,
    'retinanet_resnet18_fpn': RetinaNetResNet18FPN,
}

__all__ = [
    'SMALL_ANCHOR_SIZES',
    'TV_ANCHOR_SIZES',
    'FrozenBatchNorm',
    'RetinaNet',
    'RetinaNetHead',
    'flatten_head',
    'level_topk_mask',
    'retinanet_postprocess',
]
