"""The R-CNN lineage on precomputed region proposals (``research.detection.proposals``):

- :class:`RCNN`: Girshick et al. 2014, "Rich feature hierarchies for accurate object detection and
  semantic segmentation": every proposal warped to a fixed size and run through the CNN on its own.
- :class:`SPPNet`: He et al. 2014, "Spatial Pyramid Pooling in Deep Convolutional Networks for Visual
  Recognition", Sec. 4: one conv pass per image, a spatial pyramid pooled over each proposal's window.
- :class:`FastRCNN`: Girshick 2015, "Fast R-CNN": one conv pass, RoI max pooling, fc6/fc7, softmax
  classifier + class-specific box regressor trained jointly (multi-task loss, Eq. 1).

All three follow the detector contract of ``research.detection.train`` (``needs_proposals = True``:
``proposals={'boxes' [B, P, 4], 'valid' [B, P]}``), share the RoI sampling (:func:`sample_rois`, 25%
foreground at IoU >= 0.5, ground truth appended), the loss (:func:`fastrcnn_loss`) and the eval
post-processing (:func:`roi_detections`) of ``research.detection.roi_heads``, so they differ only in how
a proposal becomes a feature vector, which is what the lineage changed. Training is end to end with
Adam/SGD in all three (the papers' multi-stage R-CNN / SPPNet pipelines are simplified, see each class).

Backbone (``backbone``): a conv stack given as a VGG-style config (``research.models.vgg.CFGS``
entries: an int = 3x3 conv + ReLU, ``(c, k)`` / ``(c, k, stride)`` = a k x k conv, ``'M'`` = 2x2/2 max
pool, ``('M', k, s)`` = k x k / s max pool, ``'LRN'``). ``SMALL`` (default, CPU-sized for 128 x 128 x 1
``mnist_det`` canvases, stride 8, 134,080 params), ``VGG16_CONV5`` (VGG-16 up to conv5_3, stride 16, the
Fast R-CNN / SPPNet-VGG backbone) and ``ZF5`` (SPPNet's ZF-5, Table 1 of He et al. 2014).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.detection.roi_heads import (
    FastRCNNPredictor,
    TwoMLPHead,
    fastrcnn_loss,
    linear_init,
    roi_detections,
    sample_rois,
)
from research.layers.common import Conv
from research.layers.pooling import max_pool
from research.layers.roi import roi_align, roi_max_pool
from research.models.alexnet import local_response_norm
from research.models.vgg import CFGS, M

__all__ = [
    'RCNN',
    'SPPNet',
    'FastRCNN',
    'ConvStack',
    'SMALL',
    'VGG16_CONV5',
    'ZF5',
    'feature_stride',
    'roi_max_pool',
]

#: CPU backbone for mnist_det: a narrow VGG-like stack, stride 8 (conv1_1 16, conv2_1 32, conv3 64 x 2,
#: conv4_1 128).
SMALL = (16, M, 32, M, 64, 64, M, 128)
#: VGG-16 (Simonyan & Zisserman 2015, config D) without pool5: conv5_3 at stride 16 (Fast R-CNN Sec. 4).
VGG16_CONV5 = CFGS['D'][:-1]
#: ZF-5 (He et al. 2014, Table 1; Zeiler & Fergus 2014): conv1 96 7x7/2, LRN, pool 3x3/2, conv2 256
#: 5x5/2, LRN, pool 3x3/2, conv3-4 384, conv5 256 (stride 16). Paddings k // 2 (the counts do not depend
#: on them).
ZF5 = ((96, 7, 2), 'LRN', (M, 3, 2), (256, 5, 2), 'LRN', (M, 3, 2), 384, 384, 256)


def _is_pool(v) -> bool:
    return v == M or (isinstance(v, tuple) and v[0] == M)


def feature_stride(cfg) -> int:
    """Total stride of a backbone config."""
    s = 1
    for v in cfg:
        if _is_pool(v):
            s *= 2 if v == M else int(v[2])
        elif v != 'LRN' and not isinstance(v, int) and len(v) > 2:
            s *= int(v[2])
    return s


class ConvStack(nn.Module):
    """The backbone config as layers (see the module docstring); convs named ``conv{block}_{i}`` as
    ``research.models.vgg`` (blocks split by pools), so VGG-16 weights convert by name."""

    cfg: tuple = SMALL
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x, self.dtype)
        block, i = 1, 0
        for v in self.cfg:
            if _is_pool(v):
                k, s = (2, 2) if v == M else (int(v[1]), int(v[2]))
                x = max_pool(x, k, s, padding=(k - 1) // 2 if k > s else 0)
                block, i = block + 1, 0
            elif v == 'LRN':
                x = local_response_norm(x)
            else:
                c, k, s = (v, 3, 1) if isinstance(v, int) else (tuple(v) + (1,))[:3]
                i += 1
                x = Conv(
                    int(c),
                    (k, k),
                    strides=(s, s),
                    padding=((k // 2, k // 2),) * 2,
                    dtype=self.dtype,
                    name=f'conv{block}_{i}',
                )(x)
                x = nn.relu(x)
        return x


class _ProposalDetector(nn.Module):
    """Shared fields and train/eval plumbing of the lineage (not registered)."""

    num_classes: int = 11
    backbone: tuple = SMALL
    representation_size: int = 256
    rois_per_image: int = 64
    positive_fraction: float = 0.25
    fg_iou: float = 0.5
    bg_iou: float = 0.5
    box_loss_weight: float = 1.0
    score_threshold: float = 0.05
    nms_iou: float = 0.5
    max_detections: int = 100
    dtype: Any = jnp.float32

    needs_masks: ClassVar[bool] = False
    needs_proposals: ClassVar[bool] = True

    def _rois(self, targets, train: bool, proposals):
        """(rois [B, R, 4], valid [B, R], samples or None): the sampled minibatch when training (Fast
        R-CNN Sec. 2.3; R-CNN Sec. 2.3 uses the same 25% / IoU 0.5 rule), all proposals at eval."""
        if proposals is None:
            raise ValueError(f'{type(self).__name__} needs precomputed proposals (proposals=...)')
        boxes = jnp.asarray(proposals['boxes'], jnp.float32)
        valid = jnp.asarray(proposals['valid'], bool)
        if not train:
            return boxes, valid, None
        if targets is None:
            raise ValueError('train=True needs targets')
        keys = jax.random.split(self.make_rng('sample'), boxes.shape[0])
        fn = functools.partial(
            sample_rois,
            batch_size_per_image=self.rois_per_image,
            positive_fraction=self.positive_fraction,
            fg_iou=self.fg_iou,
            bg_iou=self.bg_iou,
        )
        s = jax.vmap(fn)(keys, boxes, valid, targets['boxes'], targets['labels'], targets['box_mask'])
        return s['rois'], s['valid'], s

    def _outputs(self, cls, box, rois, valid, samples, image_size, train: bool):
        if train:
            loss_cls, loss_box = fastrcnn_loss(cls, box, samples['labels'], samples['box_targets'], valid)
            return {'loss_classifier': loss_cls, 'loss_box_reg': self.box_loss_weight * loss_box}
        fn = functools.partial(
            roi_detections,
            image_size=tuple(image_size),
            score_threshold=self.score_threshold,
            iou_threshold=self.nms_iou,
            max_detections=self.max_detections,
        )
        return jax.vmap(fn)(cls, box, rois, valid)


class RCNN(_ProposalDetector):
    """R-CNN (Girshick et al. 2014): each proposal is warped (Sec. 2.1 "Test-time detection": anisotropic
    warp of the box dilated so that the warped crop holds ``context_pad`` pixels of context, p = 16 at
    227 in the paper, Appendix A; outside the image is 0 = the normalised mean) to ``warp_size`` and
    goes through the CNN independently: ``backbone`` -> pool5 -> fc6, fc7 (``TwoMLPHead``) -> a linear
    softmax classifier (``cls_score``); class-specific linear box regression from pool5 (Appendix C,
    ``bbox_from_pool5``; ``False`` = from fc7).

    Simplifications (stated): the per-class linear SVMs on fc7 (Sec. 2.3, hard negative mining) are
    replaced by the fine-tuning softmax (Sec. 3.1 notes it gives mAP within a few points), and the
    ridge-regressed box regressor (Appendix C, lambda 1000, IoU > 0.6) is trained jointly with smooth L1
    on the sampled positives (Fast R-CNN's loss), so the lineage is compared on the same objective. The
    warp is ``roi_align`` with a fixed ``sampling_ratio`` (bilinear). Slow by design: cost grows with the
    number of proposals (R x the backbone)."""

    backbone: tuple = SMALL
    warp_size: int = 32
    context_pad: float = 2.0
    sampling_ratio: int = 2
    bbox_from_pool5: bool = True

    def warp(self, images, rois):
        """Warped crops [B, R, S, S, C] of ``rois`` [B, R, 4] with ``context_pad`` context pixels."""
        s = self.warp_size
        f = s / max(s - 2.0 * self.context_pad, 1.0)
        c = 0.5 * (rois[..., :2] + rois[..., 2:])
        half = 0.5 * f * (rois[..., 2:] - rois[..., :2])
        boxes = jnp.concatenate([c - half, c + half], -1)

        def fn(im, b):
            return roi_align(im[None], b, s, sampling_ratio=self.sampling_ratio, aligned=True)

        return jax.vmap(fn)(jnp.asarray(images, jnp.float32), boxes)

    @nn.compact
    def __call__(self, images, targets=None, train: bool = False, proposals=None):
        rois, valid, samples = self._rois(targets, train, proposals)
        crops = self.warp(images, rois)
        b, r = crops.shape[:2]
        pool5 = ConvStack(self.backbone, self.dtype, name='backbone')(crops.reshape(b * r, *crops.shape[2:]))
        fc7 = TwoMLPHead(self.representation_size, self.dtype, name='box_head')(pool5)
        cls = nn.Dense(self.num_classes, kernel_init=linear_init, dtype=self.dtype, name='cls_score')(fc7)
        reg_in = pool5.reshape(b * r, -1) if self.bbox_from_pool5 else fc7
        box = nn.Dense(4 * self.num_classes, kernel_init=linear_init, dtype=self.dtype, name='bbox_pred')(
            reg_in
        )
        cls = cls.astype(jnp.float32).reshape(b, r, -1)
        box = box.astype(jnp.float32).reshape(b, r, -1)
        return self._outputs(cls, box, rois, valid, samples, images.shape[1:3], train)


class SPPNet(_ProposalDetector):
    """SPP-net for detection (He et al. 2014, Sec. 4): the conv layers run once on the whole image;
    each proposal's window on the last conv map is pooled by a spatial pyramid (``levels``; the paper
    uses {1, 2, 3, 6}, 50 bins) into a fixed-length vector -> fc6, fc7 -> classifier and box regressor.

    The per-window pyramid is RoI max pooling (:func:`roi_max_pool`, the values of
    ``research.layers.roi_pool``) with an n x n output per level, i.e. exactly
    ``spatial_pyramid_pool``'s adaptive bins [floor(i h / n), ceil((i + 1) h / n)) computed over the
    RoI's window (each level flattened channels last, bin * C + c, as ``spatial_pyramid_pool``). The
    window's corners are ``round(x / stride)`` (roi_pool's quantisation) instead of the paper's
    floor(x / S) + 1 / ceil(x / S) - 1 (Appendix "Mapping a window to feature maps").
    ``freeze_backbone=True`` is the paper's fine-tuning (Sec. 4.1: only the fc layers are fine-tuned,
    the conv layers stay as pre-trained: the limitation Fast R-CNN removes); SVMs are replaced by the
    softmax and the regressor is trained jointly, as in :class:`RCNN`."""

    levels: tuple = (1, 2, 4)
    freeze_backbone: bool = False

    @nn.compact
    def __call__(self, images, targets=None, train: bool = False, proposals=None):
        rois, valid, samples = self._rois(targets, train, proposals)
        feats = ConvStack(self.backbone, self.dtype, name='backbone')(images)
        if self.freeze_backbone:
            feats = jax.lax.stop_gradient(feats)
        scale = 1.0 / feature_stride(self.backbone)
        b, r = rois.shape[:2]
        pyramid = []
        for n in self.levels:
            fn = lambda f, bx, n=n: roi_max_pool(f, bx, n, scale)  # noqa: E731
            pyramid.append(jax.vmap(fn)(feats, rois).reshape(b, r, -1))
        x = jnp.concatenate(pyramid, -1)[:, :, None, None, :]  # [B, R, 1, 1, D]: fc6 sees the pyramid
        x = TwoMLPHead(self.representation_size, self.dtype, name='box_head')(x)
        cls, box = FastRCNNPredictor(self.num_classes, self.dtype, name='box_predictor')(x)
        return self._outputs(cls, box, rois, valid, samples, images.shape[1:3], train)


class FastRCNN(_ProposalDetector):
    """Fast R-CNN (Girshick 2015): one conv pass over the image (Sec. 2), RoI max pooling of each
    proposal to ``pool_size`` x ``pool_size`` (Sec. 2.1; :func:`roi_max_pool`, the values of
    ``research.layers.roi_pool``; 7 x 7 on VGG-16's conv5_3 in the paper, 4 x 4 default for the
    stride-8 ``SMALL`` backbone), fc6/fc7 (``TwoMLPHead``), sibling softmax classifier and
    class-specific box regressor (``FastRCNNPredictor``), trained with the multi-task loss (Eq. 1,
    smooth L1, lambda = ``box_loss_weight``) on 25%-foreground RoI minibatches (Sec. 2.3); class-wise
    NMS at test (Sec. 3). The paper samples 128 RoIs from 2 images; here ``rois_per_image`` per image."""

    pool_size: int = 4

    @nn.compact
    def __call__(self, images, targets=None, train: bool = False, proposals=None):
        rois, valid, samples = self._rois(targets, train, proposals)
        feats = ConvStack(self.backbone, self.dtype, name='backbone')(images)
        scale = 1.0 / feature_stride(self.backbone)
        fn = lambda f, bx: roi_max_pool(f, bx, self.pool_size, scale)  # noqa: E731
        pooled = jax.vmap(fn)(feats, rois)  # [B, R, p, p, C]
        x = TwoMLPHead(self.representation_size, self.dtype, name='box_head')(pooled)
        cls, box = FastRCNNPredictor(self.num_classes, self.dtype, name='box_predictor')(x)
        return self._outputs(cls, box, rois, valid, samples, images.shape[1:3], train)


_VOC = dict(num_classes=21, representation_size=4096, rois_per_image=64)

REGISTRY_ENTRIES = {
    # CPU-sized, for mnist_det (128 x 128 x 1, 11 classes incl. background).
    'rcnn_mnist': RCNN,
    'sppnet_mnist': SPPNet,
    'fast_rcnn_mnist': FastRCNN,
    # Paper sizes (PASCAL VOC, 21 classes): R-CNN VGG-16 ("O-Net", Table 3) on 224 x 224 warps with
    # 16 px context; SPP-net ZF-5 with the {1, 2, 3, 6} pyramid and frozen convs (Sec. 4.1, Table 9);
    # Fast R-CNN VGG-16 (model L) with 7 x 7 RoI pooling.
    'rcnn_vgg16': functools.partial(RCNN, backbone=CFGS['D'], warp_size=224, context_pad=16.0, **_VOC),
    'sppnet_zf5': functools.partial(SPPNet, backbone=ZF5, levels=(1, 2, 3, 6), freeze_backbone=True, **_VOC),
    'sppnet_vgg16': functools.partial(SPPNet, backbone=VGG16_CONV5, levels=(1, 2, 3, 6), **_VOC),
    'fast_rcnn_vgg16': functools.partial(FastRCNN, backbone=VGG16_CONV5, pool_size=7, **_VOC),
}
