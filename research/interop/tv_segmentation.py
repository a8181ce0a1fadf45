"""torchvision conversions of the segmentation models: FCN-ResNet, DeepLabv3-ResNet / -MobileNetV3,
LR-ASPP-MobileNetV3.

Flax module paths (``research.models.fcn`` / ``deeplab``) map onto torchvision's names as:

- ``backbone/...`` -> ``backbone.<resnet name>`` (``research.interop.tv_resnet.rename_resnet``) or
  ``backbone.<features index>`` (MobileNetV3, ``tv_mobile``'s mapping without the ``features.`` prefix:
  LR-ASPP and deeplabv3_mobilenet_v3_large);
- FCNHead ``classifier`` / ``aux_classifier``: conv, bn, cls -> ``.0``, ``.1``, ``.4``;
- DeepLabHead ``classifier``: ``aspp`` -> ``.0`` (b0 -> convs.0, b<i> -> convs.<i>, image pooling ->
  convs.<n+1> (.1 conv, .2 BN), proj -> project), conv / bn / cls -> ``.1``, ``.2``, ``.4``;
- LR-ASPP head: cbr_conv/bn -> ``classifier.cbr.0/.1``, scale_conv -> ``classifier.scale.1``,
  low_classifier / high_classifier -> the same names.

Parity runs at 96x96 in the CI subset (torchvision's models are resolution-agnostic: 520 px is
their training crop); the 520 px check is a slow test.
"""

from __future__ import annotations

from research.interop.torchvision import Conversion
from research.interop.tv_mobile import _mobilenet_v3
from research.interop.tv_resnet import rename_resnet

_FCN_HEAD = {'conv': '0', 'bn': '1', 'cls': '4'}
_DEEPLAB_HEAD = {'conv': '1', 'bn': '2', 'cls': '4'}
_LRASPP = {'cbr_conv': 'cbr.0', 'cbr_bn': 'cbr.1', 'scale_conv': 'scale.1'}


def _aspp(name: str, n_rates: int = 3) -> str:
    part, _, kind = name.rpartition('_')
    idx = {'conv': 0, 'bn': 1}[kind]
    if part == 'proj':
        return f'project.{idx}'
    if part == 'pool':
        return f'convs.{n_rates + 1}.{idx + 1}'
    return f'convs.{int(part[1:])}.{idx}'


def _resnet_seg(path: tuple[str, ...]) -> str:
    top, rest = path[0], path[1:]
    if top == 'backbone':
        return 'backbone.' + rename_resnet(rest)
    if top == 'aux_classifier':
        return f'aux_classifier.{_FCN_HEAD[rest[0]]}'
    if top == 'classifier':
        if rest[0] == 'aspp':
            return f'classifier.0.{_aspp(rest[1])}'
        return f'classifier.{_DEEPLAB_HEAD[rest[0]]}'
    raise KeyError(f'no torchvision name for Flax module {"/".join(path)}')


def _fcn_seg(path: tuple[str, ...]) -> str:
    if path[0] == 'classifier':
        return f'classifier.{_FCN_HEAD[path[1]]}'
    return _resnet_seg(path)


_V3_LARGE = _mobilenet_v3('large')


def _v3_backbone(path: tuple[str, ...]) -> str:
    return 'backbone.' + _V3_LARGE(path[1:]).removeprefix('features.')


def _lraspp(path: tuple[str, ...]) -> str:
    if path[0] == 'backbone':
        return _v3_backbone(path)
    return 'classifier.' + _LRASPP.get(path[0], path[0])


def _deeplab_mobilenet(path: tuple[str, ...]) -> str:
    if path[0] == 'backbone':
        return _v3_backbone(path)
    return _resnet_seg(path)


def segmentation_flags(module, state_dict) -> dict:
    """torchvision segmentation models' flags: ``aux`` (an ``aux_classifier``, torchvision's
    ``aux_loss``) from the module or the state_dict, and ``num_classes`` (the classifier's last conv)."""
    if module is not None:
        last = [m for m in module.classifier.modules() if hasattr(m, 'out_channels')][-1]
        return {'aux': module.aux_classifier is not None, 'num_classes': int(last.out_channels)}
    return {'aux': any(k.startswith('aux_classifier.') for k in state_dict)}


_TV = {'weights_backbone': None, 'aux_loss': True}
_LIGHT = (96, 96)


CONVERSIONS = {
    'fcn_resnet50': Conversion(
        model='fcn_resnet50',
        rename=_fcn_seg,
        model_kwargs={'num_classes': 21},
        input_size=_LIGHT,
        torchvision_kwargs=_TV,
        flags=segmentation_flags,
        note="torchvision's FCN (dilated ResNet-50, FCNHead, aux head), not Long et al.'s VGG FCN-8s (fcn8s).",
    ),
    'fcn_resnet101': Conversion(
        model='fcn_resnet101',
        rename=_fcn_seg,
        model_kwargs={'num_classes': 21},
        input_size=_LIGHT,
        torchvision_kwargs=_TV,
        flags=segmentation_flags,
        heavy=True,
        note="torchvision's FCN on a dilated ResNet-101 with aux head.",
    ),
    'deeplabv3_resnet50': Conversion(
        model='deeplabv3_resnet50',
        rename=_resnet_seg,
        model_kwargs={'num_classes': 21},
        input_size=_LIGHT,
        torchvision_kwargs=_TV,
        flags=segmentation_flags,
        note='Chen et al. 2017 at output stride 8, rates (12, 24, 36); torchvision adds a 3x3 conv after ASPP.',
    ),
    'deeplabv3_resnet101': Conversion(
        model='deeplabv3_resnet101',
        rename=_resnet_seg,
        model_kwargs={'num_classes': 21},
        input_size=_LIGHT,
        torchvision_kwargs=_TV,
        flags=segmentation_flags,
        heavy=True,
        note='as deeplabv3_resnet50 on ResNet-101.',
    ),
    'deeplabv3_mobilenet_v3_large': Conversion(
        model='deeplabv3_mobilenet_v3_large',
        rename=_deeplab_mobilenet,
        model_kwargs={'num_classes': 21},
        input_size=_LIGHT,
        torchvision_kwargs=_TV,
        flags=segmentation_flags,
        note="torchvision: the DeepLabv3 head (ASPP 12/24/36, 3x3 conv) on LR-ASPP's dilated MobileNetV3-Large.",
    ),
    'lraspp_mobilenet_v3_large': Conversion(
        model='lraspp_mobilenet_v3_large',
        rename=_lraspp,
        model_kwargs={'num_classes': 21},
        input_size=_LIGHT,
        torchvision_kwargs={'weights_backbone': None},
        note='Howard et al. 2019 Fig. 10 = torchvision (dilated last stage, 128 inter channels).',
    ),
}
