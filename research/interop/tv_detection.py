"""torchvision conversions of the one-stage detectors: ``retinanet_resnet50_fpn`` (``research.models.retinanet``)
and ``ssd300_vgg16`` (``research.models.ssd``).

The detectors do not fit the generic :func:`research.interop.torchvision.parity` (torchvision's models resize
and normalise inside ``GeneralizedRCNNTransform`` and return post-processed lists), so they are not in
``CONVERSIONS``; this module has its own converters and parity checks that bypass the transform: the torch
``backbone`` + ``head`` and the Flax ``predict`` run on the same (normalised) image, and their per-anchor
outputs (levels concatenated in torchvision's order) are compared; ``*_postprocess_parity`` compares the
final detections of torchvision's ``postprocess_detections`` and the Flax post-processing on the same head
outputs.

Module paths:

- RetinaNet: ``backbone/<resnet>`` -> ``backbone.body.<tv_resnet name>``; ``fpn/inner_blocks_i`` /
  ``layer_blocks_i`` -> ``backbone.fpn.inner_blocks.i.0`` / ``layer_blocks.i.0``; ``p6`` / ``p7`` ->
  ``backbone.fpn.extra_blocks.p6`` / ``.p7``; ``classification_head/conv_i`` ->
  ``head.classification_head.conv.i.0`` (same for ``regression_head``), ``cls_logits`` / ``bbox_reg`` as
  named. Frozen BN (``batch_stats`` scale / bias / mean / var) <- weight / bias / running_mean / running_var.
- SSD: ``backbone/conv{b}_{i}`` -> ``backbone.features.<index>`` (conv1_1..conv4_3) or ``backbone.extra.0.<index>``
  (conv5_x), ``fc6`` / ``fc7`` -> ``backbone.extra.0.7.1`` / ``.3``, ``extra{i}_1`` / ``_2`` ->
  ``backbone.extra.{i}.0`` / ``.2``, ``l2norm/scale`` -> ``backbone.scale_weight``, ``cls_i`` / ``box_i`` ->
  ``head.classification_head.module_list.i`` / ``head.regression_head.module_list.i``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from research.interop.torchvision import (
    ConversionError,
    _key_names,
    _to_flax_layout,
    calibrate_batchnorm,
    calibration_images,
    load_state_dict,
)
from research.interop.tv_resnet import rename_resnet

#: Detectors are converted with the functions below, not via the generic table (see the docstring).
CONVERSIONS = {}

_LEAF = {
    ('params', 'kernel'): 'weight',
    ('params', 'bias'): 'bias',
    ('params', 'scale'): 'weight',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
    ('batch_stats', 'scale'): 'weight',  # FrozenBatchNorm
    ('batch_stats', 'bias'): 'bias',
}

_FPN = re.compile(r'^(inner|layer)_blocks_(\d+)$')
_HEAD_CONV = re.compile(r'^conv_(\d+)$')


def rename_backbone_fpn(path: tuple[str, ...]) -> str | None:
    """``backbone/...`` (ResNet) and ``fpn/...`` -> torchvision's ``backbone.body.*`` / ``backbone.fpn.*``
    (shared by RetinaNet and Faster / Mask R-CNN); None for other modules."""
    top, rest = path[0], path[1:]
    if top == 'backbone':
        return 'backbone.body.' + rename_resnet(rest)
    if top == 'fpn':
        m = _FPN.match(rest[0])
        return f'backbone.fpn.{m.group(1)}_blocks.{m.group(2)}.0'
    return None


def rename_retinanet(path: tuple[str, ...]) -> str:
    top, rest = path[0], path[1:]
    if (name := rename_backbone_fpn(path)) is not None:
        return name
    if top in ('p6', 'p7'):
        return f'backbone.fpn.extra_blocks.{top}'
    if top in ('classification_head', 'regression_head'):
        m = _HEAD_CONV.match(rest[0])
        return f'head.{top}.' + (f'conv.{m.group(1)}.0' if m else rest[0])
    raise KeyError(f'no torchvision name for Flax module {"/".join(path)}')


_SSD_VGG = {
    'conv1_1': 'features.0',
    'conv1_2': 'features.2',
    'conv2_1': 'features.5',
    'conv2_2': 'features.7',
    'conv3_1': 'features.10',
    'conv3_2': 'features.12',
    'conv3_3': 'features.14',
    'conv4_1': 'features.17',
    'conv4_2': 'features.19',
    'conv4_3': 'features.21',
    'conv5_1': 'extra.0.1',
    'conv5_2': 'extra.0.3',
    'conv5_3': 'extra.0.5',
    'fc6': 'extra.0.7.1',
    'fc7': 'extra.0.7.3',
}
_SSD_EXTRA = re.compile(r'^extra(\d+)_(\d)$')
_SSD_HEAD = re.compile(r'^(cls|box)_(\d+)$')


def rename_ssd(path: tuple[str, ...]) -> str:
    top, rest = path[0], path[1:]
    if top == 'backbone':
        if rest[0] == 'l2norm':
            return '=backbone.scale_weight'
        if rest[0] in _SSD_VGG:
            return 'backbone.' + _SSD_VGG[rest[0]]
        m = _SSD_EXTRA.match(rest[0])
        return f'backbone.extra.{m.group(1)}.{2 * (int(m.group(2)) - 1)}'
    m = _SSD_HEAD.match(top)
    if m:
        head = 'classification_head' if m.group(1) == 'cls' else 'regression_head'
        return f'head.{head}.module_list.{m.group(2)}'
    raise KeyError(f'no torchvision name for Flax module {"/".join(path)}')


def convert(
    source, abstract_variables, rename: Callable[[tuple[str, ...]], str], strict: bool = True
) -> dict:
    """Flax variables shaped like ``abstract_variables`` from a torch state_dict / module / file."""
    sd = load_state_dict(source)
    used, missing, out = set(), [], {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_variables):
        names = _key_names(path)
        rule = _LEAF.get((names[0], names[-1]))
        if rule is None:
            raise ConversionError(f'no torch counterpart rule for {"/".join(names)}')
        prefix = rename(names[1:-1])
        key = prefix[1:] if prefix.startswith('=') else f'{prefix}.{rule}'  # '=': the full torch key
        where = f'{"/".join(names)} <- {key}'
        if key not in sd:
            missing.append(where)
            continue
        used.add(key)
        d = out
        for n in names[:-1]:
            d = d.setdefault(n, {})
        d[names[-1]] = jnp.asarray(_to_flax_layout(sd[key], tuple(leaf.shape), where), leaf.dtype)
    unused = sorted(k for k in sd if k not in used and not k.endswith('num_batches_tracked'))
    if strict and (missing or unused):
        raise ConversionError(
            f'torchvision weights do not fit: {len(missing)} Flax leaves without a torch tensor '
            f'({"; ".join(missing[:8])}); {len(unused)} torch tensors unused ({", ".join(unused[:8])})'
        )
    return out


def _abstract(model, input_size=(128, 160)):
    from research.models import abstract_variables

    return abstract_variables(model, (1, *input_size, 3))


def retinanet_from_torchvision(source, model=None) -> dict:
    """Variables of ``model`` (default ``retinanet_resnet50_fpn``) from torchvision RetinaNet weights."""
    from research import models

    model = model if model is not None else models.create('retinanet_resnet50_fpn')
    return convert(source, _abstract(model), rename_retinanet)


def torch_retinanet(seed: int = 0, num_classes: int = 91, frozen_bn: bool = True, input_size=(128, 160)):
    """torchvision ``retinanet_resnet50_fpn`` with random weights (random BN affine parameters and
    classifier biases, so that scores spread), BN statistics calibrated on real images of ``input_size``
    (``calibrate_batchnorm`` on the backbone: 3 batches of 4 digit mosaics), eval mode. ``frozen_bn``
    builds it with ``FrozenBatchNorm2d`` as torchvision does with a pretrained backbone."""
    import torch
    import torchvision
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    from research.interop.torchvision import randomize_torch_model

    torch.manual_seed(seed)
    if frozen_bn:
        body = torchvision.models.resnet50(norm_layer=torchvision.ops.misc.FrozenBatchNorm2d)
        backbone = _resnet_fpn_extractor(
            body, 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256)
        )
        m = torchvision.models.detection.RetinaNet(backbone, num_classes)
    else:
        m = torchvision.models.detection.retinanet_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=num_classes
        )
    m = randomize_torch_model(m.eval(), seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torchvision.ops.misc.FrozenBatchNorm2d):
                c = mod.weight.shape[0]
                mod.weight.copy_(0.5 + torch.rand(c, generator=g))
                mod.bias.copy_(0.1 * torch.randn(c, generator=g))
                mod.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(c, generator=g))
        cls = m.head.classification_head.cls_logits
        cls.bias.copy_(torch.randn(cls.bias.shape, generator=g))
    calibrate_batchnorm(m.backbone, calibration_images(12, input_size, seed + 1), batch_size=4)
    return m.eval()


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ConversionError(f'output shapes differ: Flax {a.shape}, torch {b.shape}')
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _rel_input(a, b) -> float:
    """``_rel`` of the input-dependent part: the difference between the outputs of images 0 and 1."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return _rel(a[0] - a[1], b[0] - b[1])


def _torch_heads(tm, x: np.ndarray):
    """torchvision backbone + head on NCHW ``x`` (no transform): head outputs and feature maps."""
    import torch

    with torch.no_grad():
        feats = tm.backbone(torch.from_numpy(x))
        feats = list(feats.values()) if isinstance(feats, dict) else feats
        head = tm.head(feats)
    return head, feats


def retinanet_parity(tm=None, model=None, input_size=(128, 160), seed: int = 0) -> dict:
    """Max relative errors of the head outputs (``cls_logits``, ``bbox_regression``; ``*_input``: of
    their input-dependent part, the difference between two images' outputs) and the anchors, Flax vs
    torchvision, on two real-image inputs (digit mosaics, ``calibration_images``; no
    ``GeneralizedRCNNTransform``)."""
    from research import models

    tm = tm if tm is not None else torch_retinanet(seed, input_size=input_size)
    model = model if model is not None else models.create('retinanet_resnet50_fpn')
    variables = convert(tm, _abstract(model, input_size), rename_retinanet)
    x = calibration_images(2, input_size, seed + 2)
    batch = len(x)
    head, feats = _torch_heads(tm, x)
    out = jax.jit(
        lambda v, x: {k: o for k, o in model.apply(v, x, method='predict').items() if k != 'level_sizes'}
    )(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    from torchvision.models.detection.image_list import ImageList

    anchors = tm.anchor_generator(ImageList(__import__('torch').from_numpy(x), [input_size] * batch), feats)[
        0
    ]
    return _head_errors(out, head, anchors)


def _head_errors(out, head, anchors) -> dict:
    cls, reg = head['cls_logits'].numpy(), head['bbox_regression'].numpy()
    return {
        'cls_logits': _rel(out['cls_logits'], cls),
        'bbox_regression': _rel(out['box_regression'], reg),
        'cls_logits_input': _rel_input(out['cls_logits'], cls),
        'bbox_regression_input': _rel_input(out['box_regression'], reg),
        'anchors': _rel(out['anchors'], anchors.numpy()),
    }


def retinanet_postprocess_parity(tm=None, model=None, input_size=(128, 160), seed: int = 0) -> dict:
    """Runs torchvision's ``RetinaNet.postprocess_detections`` and ``research.models.retinanet.
    retinanet_postprocess`` on the same random head outputs (logits N(-3, 2^2), deltas N(0, 1)) and the
    anchors of one image, with the background column's logits set to -20 (torchvision would report label
    0 otherwise). Returns the number of
    detections of each and the max abs. differences of the (score-ordered) boxes and scores."""
    import torch
    from torchvision.models.detection.image_list import ImageList

    from research import models
    from research.models.retinanet import retinanet_postprocess

    tm = tm if tm is not None else torch_retinanet(seed)
    model = model if model is not None else models.create('retinanet_resnet50_fpn')
    x = np.random.default_rng(seed).standard_normal((1, 3, *input_size)).astype(np.float32)
    head, feats = _torch_heads(tm, x)
    g = torch.Generator().manual_seed(seed)
    head = {k: torch.randn(v.shape, generator=g) for k, v in head.items()}  # spread-out scores, no ties
    head['cls_logits'] = 2 * head['cls_logits'] - 3.0
    head['cls_logits'][..., 0] = -20.0
    anchors = tm.anchor_generator(ImageList(torch.from_numpy(x), [input_size]), feats)
    sizes = [f.shape[2] * f.shape[3] * model.num_anchors for f in feats]
    split_head = {k: list(v.split(sizes, dim=1)) for k, v in head.items()}
    split_anchors = [list(a.split(sizes)) for a in anchors]
    with torch.no_grad():
        ref = tm.postprocess_detections(split_head, split_anchors, [input_size])[0]
    out = retinanet_postprocess(
        jnp.asarray(head['cls_logits'][0].numpy()),
        jnp.asarray(head['bbox_regression'][0].numpy()),
        jnp.asarray(anchors[0].numpy()),
        sizes,
        image_size=input_size,
        score_thresh=tm.score_thresh,
        nms_thresh=tm.nms_thresh,
        detections_per_img=tm.detections_per_img,
        topk_candidates=tm.topk_candidates,
    )
    return _compare_detections(out, ref)


def _compare_detections(out, ref) -> dict:
    n = int(np.asarray(out['valid']).sum())
    r = len(ref['scores'])
    m = min(n, r)
    res = {'num_flax': n, 'num_torch': r}
    res['box_err'] = float(
        np.max(np.abs(np.asarray(out['boxes'])[:m] - ref['boxes'][:m].numpy()), initial=0.0)
    )
    res['score_err'] = float(
        np.max(np.abs(np.asarray(out['scores'])[:m] - ref['scores'][:m].numpy()), initial=0.0)
    )
    res['labels_equal'] = bool(np.array_equal(np.asarray(out['labels'])[:m], ref['labels'][:m].numpy()))
    return res


def ssd_from_torchvision(source, model=None, input_size=(300, 300)) -> dict:
    """Variables of ``model`` (default ``ssd300_vgg16``) from torchvision SSD weights."""
    from research import models

    model = model if model is not None else models.create('ssd300_vgg16')
    return convert(source, _abstract(model, input_size), rename_ssd)


def torch_ssd(seed: int = 0, num_classes: int = 91):
    """torchvision ``ssd300_vgg16`` with random weights (biases and the L2 scales randomised too), eval."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    m = torchvision.models.detection.ssd300_vgg16(
        weights=None, weights_backbone=None, num_classes=num_classes
    )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(('bias', 'scale_weight')):
                p.copy_(p + 0.1 * torch.randn(p.shape, generator=g))
    return m.eval()


def ssd_parity(tm=None, model=None, input_size=(300, 300), seed: int = 0) -> dict:
    """Max relative errors of the SSD head outputs (``*_input``: of the difference between two images'
    outputs) and default boxes, Flax vs torchvision, on two real-image inputs (no transform; VGG-16
    without BatchNorm: nothing to calibrate)."""
    import torch
    from torchvision.models.detection.image_list import ImageList

    from research import models

    tm = tm if tm is not None else torch_ssd(seed)
    model = model if model is not None else models.create('ssd300_vgg16')
    variables = convert(tm, _abstract(model, input_size), rename_ssd)
    x = calibration_images(2, input_size, seed + 2)
    head, feats = _torch_heads(tm, x)
    out = jax.jit(lambda v, x: model.apply(v, x, method='predict'))(
        variables, jnp.asarray(x.transpose(0, 2, 3, 1))
    )
    anchors = tm.anchor_generator(ImageList(torch.from_numpy(x), [input_size] * len(x)), feats)[0]
    return _head_errors(out, head, anchors)


def ssd_postprocess_parity(tm=None, input_size=(300, 300), seed: int = 0, pre_nms_top_k: int = 2000) -> dict:
    """torchvision's ``SSD.postprocess_detections`` vs ``research.models.ssd.ssd_postprocess`` on the same
    random head outputs (logits N(0, 2^2), deltas N(0, 1)) and default boxes of one image."""
    import torch
    from torchvision.models.detection.image_list import ImageList

    from research.models.ssd import ssd_postprocess

    tm = tm if tm is not None else torch_ssd(seed)
    x = np.random.default_rng(seed).standard_normal((1, 3, *input_size)).astype(np.float32)
    head, feats = _torch_heads(tm, x)
    g = torch.Generator().manual_seed(seed)
    head = {k: torch.randn(v.shape, generator=g) for k, v in head.items()}
    head['cls_logits'] = 2 * head['cls_logits']
    anchors = tm.anchor_generator(ImageList(torch.from_numpy(x), [input_size]), feats)
    with torch.no_grad():
        ref = tm.postprocess_detections(head, anchors, [input_size])[0]
    out = ssd_postprocess(
        jnp.asarray(head['cls_logits'][0].numpy()),
        jnp.asarray(head['bbox_regression'][0].numpy()),
        jnp.asarray(anchors[0].numpy()),
        image_size=input_size,
        score_thresh=tm.score_thresh,
        nms_thresh=tm.nms_thresh,
        detections_per_img=tm.detections_per_img,
        topk_candidates=tm.topk_candidates,
        pre_nms_top_k=pre_nms_top_k,
    )
    return _compare_detections(out, ref)
