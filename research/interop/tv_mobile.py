"""torchvision conversions for the mobile families: MobileNet v2/v3, EfficientNet B0-B7, MnasNet.

Module-name mappings only (leaf rules live in ``research.interop.torchvision``). Inverted residual
blocks (``research.layers.blocks.InvertedResidual``: expand_conv/bn, dw_conv/bn, se/fc1|fc2,
project_conv/bn) map onto torchvision's sequential indices: MobileNetV2's ``conv`` (expand and
depthwise are Conv2dNormActivation ``.0``/``.1``, the projection a bare conv + BN), MobileNetV3's
and EfficientNet's ``block`` (every part a Conv2dNormActivation, the SE's 1x1 convs fc1/fc2 ->
our Dense layers), MnasNet's flat ``layers`` (conv, BN, ReLU triples).
"""

from __future__ import annotations

from research.interop.torchvision import Conversion
from research.models.efficientnet import TORCHVISION_RESOLUTION

_CONV_BN = {'conv': '0', 'bn': '1'}


def _split(name: str) -> tuple[str, str]:
    part, _, kind = name.rpartition('_')  # 'expand_conv' -> ('expand', 'conv')
    return part, kind


def _sequential_block(sub: tuple[str, ...], has_expand: bool, has_se: bool) -> str:
    """MobileNetV3 / EfficientNet ``block``: [expand] dw [se] project, each Conv2dNormActivation."""
    order = (['expand'] if has_expand else []) + ['dw'] + (['se'] if has_se else []) + ['project']
    if sub[0] == 'se':
        return f'{order.index("se")}.{sub[1]}'
    part, kind = _split(sub[0])
    return f'{order.index(part)}.{_CONV_BN[kind]}'


def _v2_block(sub: tuple[str, ...], has_expand: bool) -> str:
    """MobileNetV2 ``conv``: [expand (.0/.1)] dw (.0/.1), then project conv and BN as bare entries."""
    order = (['expand'] if has_expand else []) + ['dw']
    part, kind = _split(sub[0])
    if part == 'project':
        return str(len(order) + (kind == 'bn'))
    return f'{order.index(part)}.{_CONV_BN[kind]}'


def _top(path: tuple[str, ...], head_index: int, prefix: str = 'features') -> str | None:
    name = path[0]
    if name in ('stem_conv', 'stem_bn'):
        return f'{prefix}.0.{_CONV_BN[_split(name)[1]]}'
    if name in ('head_conv', 'head_bn'):
        return f'{prefix}.{head_index}.{_CONV_BN[_split(name)[1]]}'
    return None


def _unknown(path):
    raise KeyError(f'no torchvision name for Flax module {"/".join(path)}')


# --------------------------------------------------------------------------- MobileNet v2 / v3


def _mobilenet_v2(path: tuple[str, ...]) -> str:
    top = _top(path, 18)
    if top is not None:
        return top
    if path[0] == 'classifier':
        return 'classifier.1'
    if path[0].startswith('block'):
        i = int(path[0][5:])
        return f'features.{i}.conv.{_v2_block(path[1:], has_expand=i != 1)}'
    _unknown(path)


def _mobilenet_v3(arch: str):
    from research.models.mobilenet import v3_layers

    rows, _ = v3_layers(arch)
    info = {i: (r[1] != r[2], r[4]) for i, r in enumerate(rows, start=1)}  # expand?, se?

    def rename(path: tuple[str, ...]) -> str:
        top = _top(path, len(rows) + 1)
        if top is not None:
            return top
        if path[0] in ('fc1', 'fc2'):
            return {'fc1': 'classifier.0', 'fc2': 'classifier.3'}[path[0]]
        if path[0].startswith('block'):
            i = int(path[0][5:])
            return f'features.{i}.block.{_sequential_block(path[1:], *info[i])}'
        _unknown(path)

    return rename


# --------------------------------------------------------------------------- EfficientNet


def _efficientnet(path: tuple[str, ...]) -> str:
    top = _top(path, 8)
    if top is not None:
        return top
    if path[0] == 'classifier':
        return 'classifier.1'
    if path[0].startswith('block'):
        s, j = path[0][5:].split('_')
        return f'features.{s}.{j}.block.{_sequential_block(path[1:], has_expand=s != "1", has_se=True)}'
    _unknown(path)


# --------------------------------------------------------------------------- MnasNet

_MNAS_TOP = {
    'stem_conv': 0,
    'stem_bn': 1,
    'sep_dw_conv': 3,
    'sep_dw_bn': 4,
    'sep_pw_conv': 6,
    'sep_pw_bn': 7,
    'head_conv': 14,
    'head_bn': 15,
}
_MNAS_BLOCK = {'expand_conv': 0, 'expand_bn': 1, 'dw_conv': 3, 'dw_bn': 4, 'project_conv': 6, 'project_bn': 7}


def _mnasnet(path: tuple[str, ...]) -> str:
    if path[0] in _MNAS_TOP:
        return f'layers.{_MNAS_TOP[path[0]]}'
    if path[0] == 'classifier':
        return 'classifier.1'
    if path[0].startswith('stack'):
        k, j = path[0][5:].split('_block')
        return f'layers.{7 + int(k)}.{j}.layers.{_MNAS_BLOCK[path[1]]}'
    _unknown(path)


# --------------------------------------------------------------------------- table

_EFFNET_NOTE = (
    'torchvision layout = the paper (Table 1, published B1-B7 width/depth/dropout); BN eps/momentum '
    'follow torchvision (1e-5/0.1 torch for B0-B4, 1e-3/0.01 for B5-B7; TF reference 1e-3/0.01 for all)'
)


def _effnet(v: str) -> Conversion:
    r = TORCHVISION_RESOLUTION[v]
    return Conversion(
        model=f'efficientnet_{v}',
        rename=_efficientnet,
        model_kwargs={'num_classes': 1000},
        input_size=(r, r),
        heavy=v in ('b3', 'b4', 'b5', 'b6', 'b7'),
        note=_EFFNET_NOTE + ('; torchvision evaluates B2 at 288 px (paper: 260)' if v == 'b2' else ''),
    )


CONVERSIONS = {
    'mobilenet_v2': Conversion(
        model='mobilenet_v2',
        rename=_mobilenet_v2,
        model_kwargs={'num_classes': 1000},
        note='Sandler et al. 2018 Table 2 = torchvision; dropout 0.2 and BN eps 1e-5 are torchvision choices',
    ),
    'mobilenet_v3_large': Conversion(
        model='mobilenet_v3_large',
        rename=_mobilenet_v3('large'),
        model_kwargs={'num_classes': 1000},
        note='Howard et al. 2019 Table 1 = torchvision (SE squeeze make_divisible(exp/4, 8), BN eps 1e-3)',
    ),
    'mobilenet_v3_small': Conversion(
        model='mobilenet_v3_small',
        rename=_mobilenet_v3('small'),
        model_kwargs={'num_classes': 1000},
        note='Howard et al. 2019 Table 2 = torchvision (SE squeeze make_divisible(exp/4, 8), BN eps 1e-3)',
    ),
    **{f'efficientnet_{v}': _effnet(v) for v in ('b0', 'b1', 'b2', 'b3', 'b4', 'b5', 'b6', 'b7')},
    **{
        n: Conversion(
            model=n,
            rename=_mnasnet,
            model_kwargs={'num_classes': 1000},
            note="torchvision implements MnasNet-B1 (no SE); the paper's Fig. 7 A1 is 'mnasnet_a1' (no weights)",
        )
        for n in ('mnasnet0_5', 'mnasnet0_75', 'mnasnet1_0', 'mnasnet1_3')
    },
}
