"""torchvision conversions of the residual family: ResNet, ResNeXt, Wide ResNet (``research.models.resnet``).

Flax module paths map onto torchvision's module names as:

- ``conv1``, ``bn1``, ``fc``: the same names (stem and classifier);
- ``layer{s}_block{i}/{conv1,bn1,conv2,bn2,conv3,bn3}`` -> ``layer{s}.{i}.{...}``;
- ``layer{s}_block{i}/proj_conv`` / ``proj_bn`` -> ``layer{s}.{i}.downsample.0`` / ``.1``.
"""

from __future__ import annotations

import re

from research.interop.torchvision import Conversion

_BLOCK = re.compile(r'^layer(\d)_block(\d+)$')
_SHORTCUT = {'proj_conv': 'downsample.0', 'proj_bn': 'downsample.1'}


def rename_resnet(path: tuple[str, ...]) -> str:
    """Flax module path of ``research.models.resnet.ResNet`` -> torchvision module prefix."""
    out = []
    for part in path:
        m = _BLOCK.match(part)
        if m:
            out.append(f'layer{m.group(1)}.{m.group(2)}')
        else:
            out.append(_SHORTCUT.get(part, part))
    return '.'.join(out)


_V15 = (
    'torchvision strides the 3x3 conv of the downsampling bottleneck ("ResNet v1.5"); the paper '
    '(v1) strides the first 1x1: Flax default follows torchvision, stride_on_1x1=True / {v1} gives v1.'
)


def _conv(model: str, *, heavy: bool = False, note: str = '', input_size=(224, 224)) -> Conversion:
    return Conversion(
        model=model,
        rename=rename_resnet,
        model_kwargs={'num_classes': 1000},
        input_size=input_size,
        heavy=heavy,
        note=note,
    )


CONVERSIONS = {
    'resnet18': _conv('resnet18', note='Basic blocks: identical to the paper (Table 1), option-B shortcuts.'),
    'resnet34': _conv('resnet34', note='Basic blocks: identical to the paper (Table 1), option-B shortcuts.'),
    'resnet50': _conv('resnet50', note=_V15.format(v1='resnet50_v1')),
    'resnet101': _conv('resnet101', heavy=True, note=_V15.format(v1='resnet101_v1')),
    'resnet152': _conv('resnet152', heavy=True, note=_V15.format(v1='resnet152_v1')),
    'resnext50_32x4d': _conv(
        'resnext50_32x4d',
        note='Xie et al. 2017, Table 1 (grouped 3x3, 32x4d); stride on the 3x3 as the paper.',
    ),
    'resnext101_32x8d': _conv(
        'resnext101_32x8d', heavy=True, note='Xie et al. 2017 (32x8d as in their released models).'
    ),
    'resnext101_64x4d': _conv('resnext101_64x4d', heavy=True, note='Xie et al. 2017, Table 5 (64x4d).'),
    'wide_resnet50_2': _conv(
        'wide_resnet50_2',
        heavy=True,
        note='torchvision\'s "wide" ImageNet ResNet: bottleneck 3x3 width doubled (width_per_group=128); '
        "not the paper's CIFAR WRN-d-k of pre-activation basic blocks (research.models.wide_resnet).",
    ),
    'wide_resnet101_2': _conv(
        'wide_resnet101_2',
        heavy=True,
        note="torchvision's wide bottleneck ResNet-101 (width_per_group=128); see wide_resnet50_2.",
    ),
}
