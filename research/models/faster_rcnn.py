"""Faster R-CNN (Ren et al. 2015) with and without FPN (Lin et al. 2017), and Mask R-CNN (He et al. 2017).

- Backbone: a ResNet (``include_top=False``). With ``fpn=True`` (FPN Sec. 4, torchvision's
  ``fasterrcnn_resnet50_fpn``): C2..C5 -> FPN P2..P6 ('maxpool' P6), the RPN on P2..P6 with one anchor
  size per level (32..512) and 3 ratios (FPN Sec. 4.1), RoI align 7x7 (sampling ratio 2) on P2..P5 at
  the level of FPN Eq. 1 (k0 = 4, canonical 224). With ``fpn=False`` (Faster R-CNN Sec. 3; the ResNet
  paper's C4 detector, He et al. 2016 Appendix A, with a 2-fc head): the single stride-16 C4 map
  (stage5 is not built), 3 scales (128, 256, 512) x 3 ratios = 9 anchors per location (Sec. 3.1.1),
  RoI align 7x7 on C4.
- RPN (Sec. 3.1; :mod:`research.detection.rpn`) -> proposals (top-n per level, NMS 0.7) -> RoI head
  (:mod:`research.detection.roi_heads`: 512 sampled RoIs / image, 25% foreground, fc6/fc7 2-MLP head,
  class-specific box regression; Fast R-CNN Sec. 2).
- Mask R-CNN (He et al. 2017, Sec. 3 and Fig. 4 right, FPN head): a parallel mask branch on 14x14 RoI
  align features: 4 x (3x3 conv 256 + ReLU), 2x2 stride-2 transposed conv + ReLU, 1x1 conv to one
  28x28 mask per class; the loss is the per-pixel sigmoid BCE of the ground-truth class's mask on
  positive RoIs (Sec. 3 "L_mask"); at test time the mask of the predicted class goes through a sigmoid
  and is pasted into the image at its detection box.

Contract (``research/detection/train.py``): ``__call__(images, targets=None, train=False, proposals=None)``;
train -> ``{'loss_objectness', 'loss_rpn_box_reg', 'loss_classifier', 'loss_box_reg'(, 'loss_mask')}``;
eval -> ``{'boxes', 'scores', 'labels', 'valid'(, 'masks' [B, D, H, W])}``; with ``mutable=['intermediates']``
eval also records the FPN maps, RPN outputs, proposals, RoI-head outputs (and 28x28 mask probabilities)
for the torchvision parity checks (``research/interop/tv_rcnn.py``). torchvision's
``GeneralizedRCNNTransform`` (resize to 800 px, normalisation) is not part of the model: images come
in at their training size, boxes in their pixels.

Parameter counts (tests/test_faster_rcnn.py; torchvision with ``weights=None, weights_backbone=None``
has trainable BatchNorm2d in the backbone, the pretrained configuration has FrozenBatchNorm2d whose
53,120 affine values are buffers): fasterrcnn_resnet50_fpn 41,808,406 (41,755,286 without the backbone
BN scales / shifts), maskrcnn_resnet50_fpn 44,454,513 (44,401,393).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research.detection.anchors import multilevel_anchors
from research.detection.fpn import FeaturePyramidNetwork
from research.detection.roi_heads import (
    FastRCNNPredictor,
    TwoMLPHead,
    fastrcnn_loss,
    multiscale_roi_align,
    paste_masks,
    project_masks,
    roi_detections,
    sample_rois,
)
from research.detection.rpn import RPNHead, generate_proposals, rpn_loss
from research.layers.common import FlaxConv, conv_kernel_init
from research.layers.conv import ConvTranspose
from research.models.resnet import ResNet

__all__ = ['FasterRCNN', 'MaskRCNN', 'MaskRCNNHeads', 'MaskRCNNPredictor']


class MaskRCNNHeads(nn.Module):
    """He et al. 2017, Fig. 4 (right): ``len(layers)`` 3x3 convs (+ ReLU) on RoI features
    ``[..., h, w, C]``; torchvision ``MaskRCNNHeads`` (names ``mask_head_<i>`` -> ``mask_head.<i>.0``)."""

    layers: Sequence[int] = (256, 256, 256, 256)
    dilation: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:])
        d = self.dilation
        for i, c in enumerate(self.layers):
            x = FlaxConv(
                c,
                (3, 3),
                padding=[(d, d), (d, d)],
                kernel_dilation=(d, d),
                kernel_init=conv_kernel_init,
                dtype=self.dtype,
                name=f'mask_head_{i}',
            )(x)
            x = nn.relu(x)
        return x.reshape(*lead, *x.shape[1:])


class MaskRCNNPredictor(nn.Module):
    """2x2 stride-2 transposed conv (``conv5_mask``) + ReLU, then a 1x1 conv (``mask_fcn_logits``) to
    one mask logit per class: ``[..., h, w, C]`` -> ``[..., 2h, 2w, K]`` (torchvision
    ``MaskRCNNPredictor``)."""

    num_classes: int
    dim_reduced: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:])
        x = ConvTranspose(self.dim_reduced, 2, strides=2, dtype=self.dtype, name='conv5_mask')(x)
        x = FlaxConv(
            self.num_classes, (1, 1), kernel_init=conv_kernel_init, dtype=self.dtype, name='mask_fcn_logits'
        )(nn.relu(x))
        return x.reshape(*lead, *x.shape[1:]).astype(jnp.float32)


class FasterRCNN(nn.Module):
    """Faster R-CNN; fields are the ablation knobs (torchvision's ``fasterrcnn_resnet50_fpn`` defaults).

    num_classes: including background (91 for COCO in torchvision's layout, 11 for mnist_det).
    layers, block, width, stem_width, freeze_bn: the ResNet backbone (``freeze_bn``: BatchNorm always
      uses its running statistics, as torchvision's FrozenBatchNorm2d with a pretrained backbone).
    fpn, fpn_channels: FPN P2..P6 neck (True) or the single C4 map (False).
    anchor_sizes, aspect_ratios: per-level anchor sizes (None: (32,)..(512,) with FPN,
      ((128, 256, 512),) without) and the ratios of every level.
    rpn_*: proposal counts (pre-NMS per level / post-NMS per image, train and test), NMS IoU, anchor
      IoU thresholds and the 256 / 0.5 minibatch.
    roi_output_size, roi_sampling_ratio, representation_size: RoI align and the 2-MLP head.
    box_*: RoI minibatch (512, 25%, IoU 0.5) and the detection post-processing (score 0.05, NMS 0.5,
      100 per image; ``box_pre_nms_top_k`` (box, class) pairs go to NMS).
    *_weight: loss weights (1 in the papers).
    remat: each backbone block under ``nn.remat`` (``ResNet.remat``: same parameters and values, less
      activation memory for about one more backbone forward).
    """

    needs_masks: ClassVar[bool] = False
    needs_proposals: ClassVar[bool] = False

    num_classes: int = 91
    layers: Sequence[int] = (3, 4, 6, 3)
    block: str = 'bottleneck'
    width: int = 64
    stem_width: int = 64
    freeze_bn: bool = False
    fpn: bool = True
    fpn_channels: int = 256
    anchor_sizes: Sequence[Sequence[float]] | None = None
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_score_thresh: float = 0.0
    roi_output_size: int = 7
    roi_sampling_ratio: int = 2
    representation_size: int = 1024
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    box_pre_nms_top_k: int = 1000
    rpn_objectness_weight: float = 1.0
    rpn_box_weight: float = 1.0
    classifier_weight: float = 1.0
    box_reg_weight: float = 1.0
    # Mask R-CNN only (MaskRCNN sets with_masks=True).
    with_masks: bool = False
    mask_roi_output_size: int = 14
    mask_layers: Sequence[int] = (256, 256, 256, 256)
    mask_dilation: int = 1
    mask_dim_reduced: int = 256
    mask_loss_weight: float = 1.0
    remat: bool = False
    dtype: Any = jnp.float32

    def _anchor_sizes(self):
        if self.anchor_sizes is not None:
            return tuple(tuple(s) for s in self.anchor_sizes)
        return ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,)) if self.fpn else ((128.0, 256.0, 512.0),)

    def features(self, images, train: bool):
        """(RPN feature maps, RoI feature maps), NHWC, finest first."""
        layers = tuple(self.layers) if self.fpn else tuple(self.layers[:3]) + (0,)
        body = ResNet(
            layers=layers,
            block=self.block,
            width=self.width,
            stem_width=self.stem_width,
            include_top=False,
            dtype=self.dtype,
            remat=self.remat,
            name='backbone',
        )
        c = body(images, train=train and not self.freeze_bn)
        if not self.fpn:
            return [c['stage4']], [c['stage4']]
        p = FeaturePyramidNetwork(self.fpn_channels, 2, 'maxpool', dtype=self.dtype, name='fpn')(
            [c['stage2'], c['stage3'], c['stage4'], c['stage5']]
        )
        maps = list(p.values())
        return maps, maps[:4]

    @nn.compact
    def __call__(self, images, targets=None, train: bool = False, proposals=None):
        images = jnp.asarray(images, self.dtype)
        b, h, w = images.shape[:3]
        image_size = (h, w)
        sizes = self._anchor_sizes()
        rpn_maps, roi_maps = self.features(images, train)
        if len(sizes) != len(rpn_maps):
            raise ValueError(f'anchor_sizes needs {len(rpn_maps)} levels, got {len(sizes)}')
        num_anchors = len(sizes[0]) * len(self.aspect_ratios)
        objectness, deltas = RPNHead(num_anchors, dtype=self.dtype, name='rpn')(rpn_maps)
        anchors = [
            jnp.asarray(multilevel_anchors([m.shape[1:3]], image_size, [s], [self.aspect_ratios]))
            for m, s in zip(rpn_maps, sizes)
        ]
        props = generate_proposals(
            objectness,
            deltas,
            anchors,
            image_size,
            pre_nms_top_n=self.rpn_pre_nms_top_n_train if train else self.rpn_pre_nms_top_n_test,
            post_nms_top_n=self.rpn_post_nms_top_n_train if train else self.rpn_post_nms_top_n_test,
            nms_thresh=self.rpn_nms_thresh,
            score_thresh=self.rpn_score_thresh,
        )
        box_head = TwoMLPHead(self.representation_size, dtype=self.dtype, name='box_head')
        predictor = FastRCNNPredictor(self.num_classes, dtype=self.dtype, name='box_predictor')
        pool = functools.partial(
            multiscale_roi_align, roi_maps, image_size=image_size, sampling_ratio=self.roi_sampling_ratio
        )
        if self.with_masks:
            mask_head = MaskRCNNHeads(
                self.mask_layers, self.mask_dilation, dtype=self.dtype, name='mask_head'
            )
            mask_predictor = MaskRCNNPredictor(
                self.num_classes, self.mask_dim_reduced, dtype=self.dtype, name='mask_predictor'
            )

        if not train:
            cls, reg = predictor(box_head(pool(props['boxes'], output_size=self.roi_output_size)))
            for name, val in (
                ('features', rpn_maps),
                ('objectness', objectness),
                ('rpn_deltas', deltas),
                ('proposals', props),
                ('class_logits', cls),
                ('box_regression', reg),
            ):
                self.sow('intermediates', name, val)
            det = jax.vmap(
                lambda c, r, bx, v: roi_detections(
                    c,
                    r,
                    bx,
                    v,
                    image_size,
                    score_threshold=self.box_score_thresh,
                    iou_threshold=self.box_nms_thresh,
                    max_detections=self.box_detections_per_img,
                    pre_nms_top_k=self.box_pre_nms_top_k,
                )
            )(cls, reg, props['boxes'], props['valid'])
            if self.with_masks:
                logits = mask_predictor(mask_head(pool(det['boxes'], output_size=self.mask_roi_output_size)))
                sel = jnp.take_along_axis(logits, jnp.maximum(det['labels'], 0)[:, :, None, None, None], -1)
                probs = jax.nn.sigmoid(sel[..., 0])
                self.sow('intermediates', 'mask_probs', probs)
                masks = jax.vmap(lambda m, bx: paste_masks(m, bx, image_size))(probs, det['boxes'])
                det['masks'] = jnp.where(det['valid'][:, :, None, None], masks, 0.0)
            return det

        if targets is None:
            raise ValueError('train=True needs targets')
        gt_boxes = jnp.asarray(targets['boxes'], jnp.float32)
        gt_labels = jnp.asarray(targets['labels'], jnp.int32)
        gt_valid = jnp.asarray(targets['box_mask'], bool)
        k_rpn, k_roi = jax.random.split(self.make_rng('sample'))
        loss_obj, loss_rpn_box = rpn_loss(
            k_rpn,
            jnp.concatenate(objectness, 1),
            jnp.concatenate(deltas, 1),
            jnp.concatenate(anchors, 0),
            gt_boxes,
            gt_valid,
            fg_iou=self.rpn_fg_iou_thresh,
            bg_iou=self.rpn_bg_iou_thresh,
            batch_size_per_image=self.rpn_batch_size_per_image,
            positive_fraction=self.rpn_positive_fraction,
        )
        samples = jax.vmap(
            functools.partial(
                sample_rois,
                batch_size_per_image=self.box_batch_size_per_image,
                positive_fraction=self.box_positive_fraction,
                fg_iou=self.box_fg_iou_thresh,
                bg_iou=self.box_bg_iou_thresh,
            )
        )(jax.random.split(k_roi, b), props['boxes'], props['valid'], gt_boxes, gt_labels, gt_valid)
        cls, reg = predictor(box_head(pool(samples['rois'], output_size=self.roi_output_size)))
        loss_cls, loss_box = fastrcnn_loss(
            cls, reg, samples['labels'], samples['box_targets'], samples['valid']
        )
        losses = {
            'loss_objectness': self.rpn_objectness_weight * loss_obj,
            'loss_rpn_box_reg': self.rpn_box_weight * loss_rpn_box,
            'loss_classifier': self.classifier_weight * loss_cls,
            'loss_box_reg': self.box_reg_weight * loss_box,
        }
        if self.with_masks:
            losses['loss_mask'] = self.mask_loss_weight * self._mask_loss(
                mask_head, mask_predictor, pool, samples, targets['masks']
            )
        return losses

    def _mask_loss(self, mask_head, mask_predictor, pool, samples, gt_masks):
        """Mask R-CNN L_mask on the positive RoIs (all within the first int(S f) slots of the sample)."""
        p = int(self.box_batch_size_per_image * self.box_positive_fraction)
        rois = samples['rois'][:, :p]
        labels = samples['labels'][:, :p]
        pos = samples['valid'][:, :p] & (labels > 0)
        logits = mask_predictor(mask_head(pool(rois, output_size=self.mask_roi_output_size)))
        sel = jnp.take_along_axis(logits, labels[:, :, None, None, None], -1)[..., 0]
        res = sel.shape[-1]
        tgt = jax.vmap(lambda m, r, i: project_masks(m, r, i, res))(
            gt_masks, rois, samples['matched_gt'][:, :p]
        )
        bce = optax.sigmoid_binary_cross_entropy(sel, jax.lax.stop_gradient(tgt)).mean((-2, -1))
        return jnp.sum(jnp.where(pos, bce, 0.0)) / jnp.maximum(pos.sum(), 1).astype(jnp.float32)


class MaskRCNN(FasterRCNN):
    """Mask R-CNN (He et al. 2017): :class:`FasterRCNN` + the mask branch (torchvision
    ``maskrcnn_resnet50_fpn`` defaults). Needs ground-truth masks ``targets['masks'] [B, M, H, W]``."""

    needs_masks: ClassVar[bool] = True
    with_masks: bool = True


# CPU-sized variants for mnist_det (128 x 128 canvases, 22-56 px digits, 11 classes): a narrow ResNet-18
# (basic blocks), a 64-wide FPN, anchors 16..128 px on P2..P6, smaller proposal / RoI minibatch counts.
_CPU = dict(
    num_classes=11,
    layers=(2, 2, 2, 2),
    block='basic',
    width=16,
    stem_width=16,
    fpn_channels=64,
    anchor_sizes=((16,), (32,), (48,), (64,), (128,)),
    representation_size=256,
    rpn_pre_nms_top_n_train=256,
    rpn_pre_nms_top_n_test=128,
    rpn_post_nms_top_n_train=256,
    rpn_post_nms_top_n_test=100,
    box_batch_size_per_image=128,
    box_detections_per_img=20,
    box_pre_nms_top_k=200,
)

FasterRCNNResNet50FPN = functools.partial(FasterRCNN)
FasterRCNNResNet50 = functools.partial(FasterRCNN, fpn=False)
FasterRCNNResNet18FPN = functools.partial(FasterRCNN, **_CPU)
MaskRCNNResNet50FPN = functools.partial(MaskRCNN)
MaskRCNNResNet18FPN = functools.partial(MaskRCNN, **_CPU, mask_layers=(64, 64, 64, 64), mask_dim_reduced=64)

REGISTRY_ENTRIES = {
    'fasterrcnn_resnet50_fpn': FasterRCNNResNet50FPN,
    'fasterrcnn_resnet50_c4': FasterRCNNResNet50,
    'fasterrcnn_resnet18_fpn': FasterRCNNResNet18FPN,
    'maskrcnn_resnet50_fpn': MaskRCNNResNet50FPN,
    'maskrcnn_resnet18_fpn': MaskRCNNResNet18FPN,
}
