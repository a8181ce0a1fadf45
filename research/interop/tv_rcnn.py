"""torchvision conversions of the two-stage detectors: ``fasterrcnn_resnet50_fpn`` and
``maskrcnn_resnet50_fpn`` (``research.models.faster_rcnn``).

As the one-stage detectors (``research/interop/tv_detection.py``), they do not fit the generic
:func:`research.interop.torchvision.parity` (``GeneralizedRCNNTransform`` resizes and normalises inside
the torch model), so ``CONVERSIONS`` stays empty and this module has its own converter and parity check
that bypass the transform: torchvision's ``backbone``, ``rpn`` and ``roi_heads`` are called on an
``ImageList`` of the raw tensor, and the Flax model's eval intermediates (``mutable=['intermediates']``)
are compared stage by stage: FPN maps, RPN objectness / deltas, proposals, RoI-head logits, final
detections (and for Mask R-CNN the 28x28 mask probabilities and the pasted masks).

Module paths: ``backbone/<resnet>`` -> ``backbone.body.<tv_resnet name>``; ``fpn/inner_blocks_i`` /
``layer_blocks_i`` -> ``backbone.fpn.inner_blocks.i.0`` / ``layer_blocks.i.0``; ``rpn/conv`` ->
``rpn.head.conv.0.0``, ``rpn/cls_logits`` / ``bbox_pred`` -> ``rpn.head.*``; ``box_head/fc6|fc7`` ->
``roi_heads.box_head.*``; ``box_predictor/*`` -> ``roi_heads.box_predictor.*``; ``mask_head/mask_head_i`` ->
``roi_heads.mask_head.i.0``; ``mask_predictor/conv5_mask|mask_fcn_logits`` -> ``roi_heads.mask_predictor.*``.
With ``weights=None, weights_backbone=None`` torchvision's backbone has (trainable) BatchNorm2d, which maps
onto the Flax BatchNorm (eps 1e-5 both); its pretrained configuration has FrozenBatchNorm2d (eps 1e-5
too, the same eval-mode arithmetic; use ``freeze_bn=True`` to keep it frozen while training).
"""

from __future__ import annotations

import copy
import re

import jax
import jax.numpy as jnp
import numpy as np

from research.interop.torchvision import calibrate_batchnorm, calibration_images
from research.interop.tv_detection import convert, rename_backbone_fpn

#: Two-stage detectors are converted with the functions below, not via the generic table.
CONVERSIONS = {}

_MASK = re.compile(r'^mask_head_(\d+)$')


def rename_rcnn(path: tuple[str, ...]) -> str:
    """Flax module path of ``FasterRCNN`` / ``MaskRCNN`` -> torchvision module prefix."""
    top, rest = path[0], path[1:]
    if (name := rename_backbone_fpn(path)) is not None:
        return name
    if top == 'rpn':
        return 'rpn.head.' + ('conv.0.0' if rest[0] == 'conv' else rest[0])
    if top in ('box_head', 'box_predictor', 'mask_predictor'):
        return f'roi_heads.{top}.{rest[0]}'
    if top == 'mask_head':
        m = _MASK.match(rest[0])
        return f'roi_heads.mask_head.{m.group(1)}.0'
    raise KeyError(f'no torchvision name for Flax module {"/".join(path)}')


def _abstract(model, input_size=(128, 160)):
    from research.models import abstract_variables

    return abstract_variables(model, (1, *input_size, 3))


def rcnn_from_torchvision(source, model=None, name: str = 'fasterrcnn_resnet50_fpn') -> dict:
    """Variables of ``model`` (default: the registered ``name``) from torchvision Faster / Mask R-CNN weights
    (a state_dict, an ``nn.Module`` or a file)."""
    from research import models

    model = model if model is not None else models.create(name)
    return convert(source, _abstract(model), rename_rcnn)


def torch_rcnn(
    name: str = 'fasterrcnn_resnet50_fpn', seed: int = 0, num_classes: int = 91, input_size=(128, 160)
):
    """torchvision ``name`` with random weights, eval mode: random BN affine parameters, BN statistics
    calibrated on real images of ``input_size`` (``calibrate_batchnorm`` on the backbone: 3 batches of 4
    digit mosaics), and the output layers rescaled on such an image so that their outputs are well
    spread (random weights through a ResNet-50 give huge RPN deltas and saturated sigmoids, i.e.
    degenerate proposals and tied scores): RPN objectness std 3, RPN deltas std 0.1, class logits std 2
    plus N(0, 2^2) biases (so that random boxes clear the 0.05 score threshold), RoI deltas std 0.5,
    mask logits std 3."""
    import torch
    import torchvision
    from torchvision.models.detection.image_list import ImageList

    from research.interop.torchvision import randomize_torch_model

    torch.manual_seed(seed)
    m = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes)
    m = randomize_torch_model(m.eval(), seed)
    calibrate_batchnorm(m.backbone, calibration_images(12, input_size, seed + 1), batch_size=4)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.from_numpy(calibration_images(1, input_size, seed + 3))

    def rescale(layer, out, std):
        f = std / max(float(out.std()), 1e-12)
        layer.weight.mul_(f)
        layer.bias.mul_(f)

    with torch.no_grad():
        feats = m.backbone(x)
        obj, deltas = m.rpn.head(list(feats.values()))
        rescale(m.rpn.head.cls_logits, torch.cat([o.flatten() for o in obj]), 3.0)
        rescale(m.rpn.head.bbox_pred, torch.cat([d.flatten() for d in deltas]), 0.1)
        props, _ = m.rpn(ImageList(x, [tuple(input_size)]), feats)
        rep = m.roi_heads.box_head(m.roi_heads.box_roi_pool(feats, props, [tuple(input_size)]))
        cls, reg = m.roi_heads.box_predictor(rep)
        rescale(m.roi_heads.box_predictor.cls_score, cls, 2.0)
        rescale(m.roi_heads.box_predictor.bbox_pred, reg, 0.5)
        b = m.roi_heads.box_predictor.cls_score.bias
        b.add_(2.0 * torch.randn(b.shape, generator=g))
        if getattr(m.roi_heads, 'mask_head', None) is not None:
            mf = m.roi_heads.mask_roi_pool(feats, [p[:50] for p in props], [tuple(input_size)])
            logits = m.roi_heads.mask_predictor(m.roi_heads.mask_head(mf))
            rescale(m.roi_heads.mask_predictor.mask_fcn_logits, logits, 3.0)
    return m


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f'shapes differ: Flax {a.shape}, torch {b.shape}')
    return float(np.max(np.abs(a - b), initial=0.0) / max(np.max(np.abs(b), initial=0.0), 1e-12))


def rcnn_parity(name: str = 'fasterrcnn_resnet50_fpn', input_size=(128, 160), seed: int = 0, tm=None) -> dict:
    """Flax vs torchvision (random weights, calibrated BN statistics, eval, no transform) on a real-image
    input (a digit mosaic, ``calibration_images``): max relative errors of the FPN maps, RPN objectness /
    deltas, proposals, RoI-head logits / deltas and the detections (boxes, scores), label equality,
    proposal / detection counts, and for Mask R-CNN the 28x28 mask probabilities and the pasted masks;
    ``*_input``: the errors of the input-dependent part of the FPN maps and RPN outputs (their
    difference between this image and a second one)."""
    import torch
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from research import models

    tm = tm if tm is not None else torch_rcnn(name, seed, input_size=input_size)
    model = models.create(name)
    variables = convert(tm, _abstract(model, input_size), rename_rcnn)
    x, x2 = np.split(calibration_images(2, input_size, seed + 2), 2)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        feats = tm.backbone(xt)
        fl = list(feats.values())
        obj, deltas = tm.rpn.head(fl)
        fl2 = list(tm.backbone(torch.from_numpy(x2)).values())
        obj2, deltas2 = tm.rpn.head(fl2)
        images = ImageList(xt, [tuple(input_size)])
        props, _ = tm.rpn(images, feats)
        box_feats = tm.roi_heads.box_head(tm.roi_heads.box_roi_pool(feats, props, images.image_sizes))
        cls, reg = tm.roi_heads.box_predictor(box_feats)
        dets, _ = tm.roi_heads(feats, props, images.image_sizes)
    det = dets[0]
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=['intermediates']))
    out, state = apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    it = jax.tree.map(np.asarray, state['intermediates'])
    it2 = jax.tree.map(
        np.asarray, apply(variables, jnp.asarray(x2.transpose(0, 2, 3, 1)))[1]['intermediates']
    )
    res = {}
    res['features'] = max(_rel(f.transpose(0, 3, 1, 2), t.numpy()) for f, t in zip(it['features'][0], fl))
    res['features_input'] = max(
        _rel(f.transpose(0, 3, 1, 2) - f2.transpose(0, 3, 1, 2), t.numpy() - t2.numpy())
        for f, f2, t, t2 in zip(it['features'][0], it2['features'][0], fl, fl2)
    )

    def rpn_torch(obj, deltas):  # RPN outputs in torchvision's concatenated (location, anchor) order
        t_obj = np.concatenate([o.permute(0, 2, 3, 1).reshape(1, -1).numpy() for o in obj], 1)
        t_del = np.concatenate(
            [d.view(1, -1, 4, *d.shape[2:]).permute(0, 3, 4, 1, 2).reshape(1, -1, 4).numpy() for d in deltas],
            1,
        )
        return t_obj, t_del

    t_obj, t_del = rpn_torch(obj, deltas)
    t_obj2, t_del2 = rpn_torch(obj2, deltas2)
    f_obj, f_del = np.concatenate(it['objectness'][0], 1), np.concatenate(it['rpn_deltas'][0], 1)
    f_obj2, f_del2 = np.concatenate(it2['objectness'][0], 1), np.concatenate(it2['rpn_deltas'][0], 1)
    res['objectness'] = _rel(f_obj, t_obj)
    res['rpn_deltas'] = _rel(f_del, t_del)
    res['objectness_input'] = _rel(f_obj - f_obj2, t_obj - t_obj2)
    res['rpn_deltas_input'] = _rel(f_del - f_del2, t_del - t_del2)
    p = it['proposals'][0]
    n = int(p['valid'][0].sum())
    res['num_proposals'] = (n, len(props[0]))
    # Proposals of (float32-)tied sigmoid scores may come in another order: match them up first.
    tb = props[0].numpy()
    perm = np.argmin(np.abs(p['boxes'][0][:n][None, :, :] - tb[:, None, :]).max(-1), 1)
    back = (
        np.abs(p['boxes'][0][:n][:, None, :] - tb[None, :, :]).max(-1).min(1)
    )  # every Flax box is a torch one
    if n != len(tb) or back.max(initial=0.0) > 1e-2 * max(input_size):
        res['proposals'] = res['class_logits'] = res['box_regression'] = float('inf')
    else:
        res['proposals'] = _rel(p['boxes'][0][perm], tb)
        res['class_logits'] = _rel(it['class_logits'][0][0][perm], cls.numpy())
        res['box_regression'] = _rel(it['box_regression'][0][0][perm], reg.numpy())
    d = int(out['valid'][0].sum())
    res['num_detections'] = (d, len(det['scores']))
    m = min(d, len(det['scores']))
    res['boxes'] = _rel(np.asarray(out['boxes'][0])[:m], det['boxes'][:m].numpy())
    res['scores'] = _rel(np.asarray(out['scores'][0])[:m], det['scores'][:m].numpy())
    res['labels_equal'] = bool(np.array_equal(np.asarray(out['labels'][0])[:m], det['labels'][:m].numpy()))
    if 'masks' in det:
        # mask logits of the mask branch on given RoIs (the torch detections), every class channel
        from research.detection.roi_heads import multiscale_roi_align
        from research.models.faster_rcnn import MaskRCNNHeads, MaskRCNNPredictor

        with torch.no_grad():
            t_logits = tm.roi_heads.mask_predictor(
                tm.roi_heads.mask_head(tm.roi_heads.mask_roi_pool(feats, [det['boxes']], images.image_sizes))
            ).numpy()
        pooled = multiscale_roi_align(
            [jnp.asarray(f) for f in it['features'][0][:4]],
            jnp.asarray(det['boxes'].numpy())[None],
            tuple(input_size),
            output_size=model.mask_roi_output_size,
        )[0]
        pv = variables['params']
        f_logits = MaskRCNNPredictor(model.num_classes, model.mask_dim_reduced).apply(
            {'params': pv['mask_predictor']},
            MaskRCNNHeads(model.mask_layers, model.mask_dilation).apply({'params': pv['mask_head']}, pooled),
        )
        res['mask_logits'] = _rel(np.asarray(f_logits).transpose(0, 3, 1, 2), t_logits)
        res['mask_probs'] = _rel(it['mask_probs'][0][0][:m], det['masks'][:m, 0].numpy())
        pasted = paste_masks_in_image(det['masks'][:m], det['boxes'][:m], tuple(input_size), padding=1)
        res['pasted_masks'] = _rel(np.asarray(out['masks'][0])[:m], pasted[:, 0].numpy())
        # float32's own noise on the masks: torch in float32 against torch in float64 (the mask
        # probabilities of slightly moved boxes through RoIAlign and a sigmoid: ~1.6e-4 with calibrated
        # statistics, more than the 1e-4 of the other outputs)
        tm64 = copy.deepcopy(tm).double()
        with torch.no_grad():
            x64 = torch.from_numpy(x.astype(np.float64))
            f64 = tm64.backbone(x64)
            d64 = tm64.roi_heads(
                f64, tm64.rpn(ImageList(x64, images.image_sizes), f64)[0], images.image_sizes
            )[0][0]
        k = min(m, len(d64['scores']))
        res['mask_probs_torch64'] = _rel(det['masks'][:k, 0].numpy(), d64['masks'][:k, 0].numpy())
        pasted64 = paste_masks_in_image(d64['masks'][:k], d64['boxes'][:k], tuple(input_size), padding=1)
        res['pasted_masks_torch64'] = _rel(pasted[:k, 0].numpy(), pasted64[:, 0].numpy())
    return res
