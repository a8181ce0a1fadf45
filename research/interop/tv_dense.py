"""torchvision conversions for DenseNet (``research.models.densenet``) and ShuffleNet V2
(``research.models.shufflenet``).

DenseNet: Flax ``('denseblock1', 'layer3', 'norm1')`` <-> ``features.denseblock1.denselayer3.norm1``,
``('transition1', 'conv')`` <-> ``features.transition1.conv``, conv0/norm0/norm5 under
``features.``, ``classifier`` at the top. ShuffleNet V2: ``conv1``/``conv1_bn`` <-> ``conv1.0/1``,
``('stage2_unit0', 'b2_dw')`` <-> ``stage2.0.branch2.3`` (torchvision's Sequential indices, ReLUs
unnumbered in Flax), ``conv5``/``conv5_bn`` <-> ``conv5.0/1``, ``fc``.
"""

from __future__ import annotations

from research.interop.torchvision import Conversion

# ShuffleUnitV2 submodule -> torchvision InvertedResidual Sequential index.
_SHUFFLE_V2_UNIT = {
    'b1_dw': 'branch1.0',
    'b1_bn1': 'branch1.1',
    'b1_conv': 'branch1.2',
    'b1_bn2': 'branch1.3',
    'b2_conv1': 'branch2.0',
    'b2_bn1': 'branch2.1',
    'b2_dw': 'branch2.3',
    'b2_bn2': 'branch2.4',
    'b2_conv2': 'branch2.5',
    'b2_bn3': 'branch2.6',
}
_SHUFFLE_V2_TOP = {
    'conv1': 'conv1.0',
    'conv1_bn': 'conv1.1',
    'conv5': 'conv5.0',
    'conv5_bn': 'conv5.1',
    'fc': 'fc',
}


def densenet_rename(path: tuple[str, ...]) -> str:
    """Flax DenseNet module path -> torchvision module prefix."""
    if path == ('classifier',):
        return 'classifier'
    head, *rest = path
    if head.startswith('denseblock') and rest:
        layer, *leaf = rest
        rest = [layer.replace('layer', 'denselayer', 1), *leaf]
    return '.'.join(['features', head, *rest])


def shufflenet_v2_rename(path: tuple[str, ...]) -> str:
    """Flax ShuffleNetV2 module path -> torchvision module prefix."""
    if len(path) == 1:
        return _SHUFFLE_V2_TOP[path[0]]
    unit, sub = path
    stage, index = unit.split('_unit')
    return f'{stage}.{index}.{_SHUFFLE_V2_UNIT[sub]}'


_DENSENET_NOTE = (
    'DenseNet-BC (Huang et al. 2017, Table 1, k=32); torchvision matches the paper. DenseNet-161 '
    "(k=48, 96 initial features) is not in Table 1 but from the authors' released models, as in "
    'torchvision.'
)
_SHUFFLE_NOTE = (
    'ShuffleNet V2 (Ma et al. 2018, Table 5); torchvision matches the paper. Flax feature keys '
    'stage3..stage5 are torchvision stage2..stage4 / conv5 (named by output stride).'
)

CONVERSIONS = {
    'densenet121': Conversion(
        model='densenet121', rename=densenet_rename, model_kwargs={'num_classes': 1000}, note=_DENSENET_NOTE
    ),
    'densenet161': Conversion(
        model='densenet161',
        rename=densenet_rename,
        model_kwargs={'num_classes': 1000},
        heavy=True,
        note=_DENSENET_NOTE,
    ),
    'densenet169': Conversion(
        model='densenet169',
        rename=densenet_rename,
        model_kwargs={'num_classes': 1000},
        heavy=True,
        note=_DENSENET_NOTE,
    ),
    'densenet201': Conversion(
        model='densenet201',
        rename=densenet_rename,
        model_kwargs={'num_classes': 1000},
        heavy=True,
        note=_DENSENET_NOTE,
    ),
    **{
        f'shufflenet_v2_{w}': Conversion(
            model=f'shufflenet_v2_{w}',
            rename=shufflenet_v2_rename,
            model_kwargs={'num_classes': 1000},
            note=_SHUFFLE_NOTE,
        )
        for w in ('x0_5', 'x1_0', 'x1_5', 'x2_0')
    },
}
