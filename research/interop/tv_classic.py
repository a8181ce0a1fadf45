"""torchvision conversions of the classic families: AlexNet, VGG, GoogLeNet, Inception v3,
SqueezeNet (``research.models.{alexnet,vgg,googlenet,inception,squeezenet}``).

Flax module paths map onto torchvision's module names as:

- AlexNet: ``conv1``..``conv5`` -> ``features.{0,3,6,8,10}``; ``fc6``/``fc7``/``fc8`` ->
  ``classifier.{1,4,6}``.
- VGG: ``conv{b}_{i}`` / ``bn{b}_{i}`` -> ``features.{k}`` at their index in torchvision's
  ``nn.Sequential`` (computed from the cfg); ``fc6``/``fc7``/``fc8`` -> ``classifier.{0,3,6}``.
- GoogLeNet: the same top-level names (``conv1/conv`` -> ``conv1.conv``); inside the
  ``InceptionModule`` blocks ``b1_*`` -> ``branch1.*``, ``b2_reduce_*`` / ``b2_*`` ->
  ``branch2.0.*`` / ``branch2.1.*``, same for ``b3``, ``b4_*`` -> ``branch4.1.*``.
- Inception v3: identical names (``Mixed_5b/branch1x1/conv`` -> ``Mixed_5b.branch1x1.conv``).
- SqueezeNet: ``conv1`` -> ``features.0``, ``fire{n}`` -> ``features.{k}``, ``conv10`` ->
  ``classifier.1``.
"""

from __future__ import annotations

import re

from research.interop.torchvision import Conversion
from research.models.squeezenet import FIRE_CHANNELS, VERSIONS
from research.models.vgg import CFGS, M


def _join(path: tuple[str, ...], table: dict[str, str]) -> str:
    return '.'.join(table.get(p, p) for p in path)


# --------------------------------------------------------------------------- AlexNet

_ALEXNET = {
    'conv1': 'features.0',
    'conv2': 'features.3',
    'conv3': 'features.6',
    'conv4': 'features.8',
    'conv5': 'features.10',
    'fc6': 'classifier.1',
    'fc7': 'classifier.4',
    'fc8': 'classifier.6',
}


def rename_alexnet(path: tuple[str, ...]) -> str:
    return _join(path, _ALEXNET)


# --------------------------------------------------------------------------- VGG


def vgg_table(cfg, batch_norm: bool) -> dict[str, str]:
    """Flax name -> torchvision ``features``/``classifier`` index for a VGG cfg (torchvision's
    ``make_layers``: 'M' one module, a conv three with BN (conv, bn, relu), else two)."""
    table = {'fc6': 'classifier.0', 'fc7': 'classifier.3', 'fc8': 'classifier.6'}
    idx, block, i = 0, 1, 0
    for v in cfg:
        if v == M:
            idx, block, i = idx + 1, block + 1, 0
            continue
        if not isinstance(v, int):
            raise ValueError(
                f'torchvision VGG has only 3x3 convs and pools; cfg entry {v!r} has no counterpart'
            )
        i += 1
        table[f'conv{block}_{i}'] = f'features.{idx}'
        if batch_norm:
            table[f'bn{block}_{i}'] = f'features.{idx + 1}'
        idx += 3 if batch_norm else 2
    return table


def _vgg_rename(cfg, batch_norm: bool):
    table = vgg_table(cfg, batch_norm)
    return lambda path: _join(path, table)


# --------------------------------------------------------------------------- GoogLeNet

_INCEPTION_BRANCH = re.compile(r'^b([1-4])(_reduce)?_(conv|bn)$')


def rename_googlenet(path: tuple[str, ...]) -> str:
    out = []
    for part in path:
        m = _INCEPTION_BRANCH.match(part)
        if m:
            b, reduce, leaf = m.groups()
            if b == '1':
                out.append(f'branch1.{leaf}')
            elif b == '4':
                out.append(f'branch4.1.{leaf}')
            else:
                out.append(f'branch{b}.{0 if reduce else 1}.{leaf}')
        else:
            out.append(part)
    return '.'.join(out)


def googlenet_flags(module, state_dict) -> dict:
    """torchvision GoogLeNet's constructor flags: from a module ``transform_input``, ``aux_logits``,
    the dropout rates and the class count; from a state_dict the aux heads' presence."""
    if module is None:
        return {'aux_logits': any(k.startswith('aux1.') for k in state_dict)}
    out = {
        'transform_input': bool(module.transform_input),
        'aux_logits': module.aux1 is not None,
        'dropout_rate': float(module.dropout.p),
        'num_classes': int(module.fc.out_features),
    }
    if module.aux1 is not None:
        out['aux_dropout_rate'] = float(module.aux1.dropout.p)
    return out


# --------------------------------------------------------------------------- Inception v3


def inception_v3_flags(module, state_dict) -> dict:
    """torchvision Inception3's constructor flags: from a module ``transform_input``, ``aux_logits``,
    the dropout rate and the class count; from a state_dict the aux head's presence."""
    if module is None:
        return {'aux_logits': any(k.startswith('AuxLogits.') for k in state_dict)}
    return {
        'transform_input': bool(module.transform_input),
        'aux_logits': module.AuxLogits is not None,
        'dropout_rate': float(module.dropout.p),
        'num_classes': int(module.fc.out_features),
    }


def rename_identity(path: tuple[str, ...]) -> str:
    return '.'.join(path)


# --------------------------------------------------------------------------- SqueezeNet


def squeezenet_table(version: str) -> dict[str, str]:
    """Flax name -> torchvision index: conv1, ReLU, pool, then the fire modules with a pool after
    each of ``VERSIONS[version]['pool_after']``; classifier = dropout, conv10, ReLU, pool."""
    table = {'conv1': 'features.0', 'conv10': 'classifier.1'}
    idx = 3
    for name in FIRE_CHANNELS:
        table[name] = f'features.{idx}'
        idx += 2 if name in VERSIONS[version]['pool_after'] else 1
    return table


def _squeezenet_rename(version: str):
    table = squeezenet_table(version)
    return lambda path: _join(path, table)


# --------------------------------------------------------------------------- table

_VGG_NOTE = (
    'Table 1 config {cfg}; torchvision adds an adaptive 7x7 average pool before fc6 (identity at '
    '224 px) and, for _bn, BN after each conv (not in the paper; conv biases kept as torchvision).'
)


def _vgg(model: str, cfg: str, batch_norm: bool) -> Conversion:
    return Conversion(
        model=model,
        rename=_vgg_rename(CFGS[cfg], batch_norm),
        model_kwargs={'num_classes': 1000},
        heavy=True,
        note=_VGG_NOTE.format(cfg=cfg),
    )


CONVERSIONS = {
    'alexnet': Conversion(
        model='alexnet',
        rename=rename_alexnet,
        model_kwargs={'num_classes': 1000},
        note=(
            "torchvision's single-tower AlexNet (64/192/384/256/256 channels, no LRN, adaptive 6x6 "
            "avg pool) is the Flax default; the paper's two-tower net (96/256/384/384/256, groups=2, "
            "LRN) is variant='paper' / alexnet_paper (no torchvision weights)."
        ),
    ),
    'vgg11': _vgg('vgg11', 'A', False),
    'vgg11_bn': _vgg('vgg11_bn', 'A', True),
    'vgg13': _vgg('vgg13', 'B', False),
    'vgg13_bn': _vgg('vgg13_bn', 'B', True),
    'vgg16': _vgg('vgg16', 'D', False),
    'vgg16_bn': _vgg('vgg16_bn', 'D', True),
    'vgg19': _vgg('vgg19', 'E', False),
    'vgg19_bn': _vgg('vgg19_bn', 'E', True),
    'googlenet': Conversion(
        model='googlenet',
        rename=rename_googlenet,
        model_kwargs={'num_classes': 1000, 'transform_input': True},
        torchvision_kwargs={'aux_logits': False, 'init_weights': False, 'transform_input': True},
        flags=googlenet_flags,
        assumes={'transform_input': True},
        note=(
            "torchvision (default): 3x3 convs in the '5x5' branch, BN (eps 1e-3) after every conv, "
            'no LRN, dropout 0.2; the paper: 5x5, conv + bias, LRN, dropout 0.4 (googlenet_paper). '
            'transform_input=True on both sides, as torchvision sets it for its pretrained weights '
            '(its default without weights is False, the Flax default too).'
        ),
    ),
    'inception_v3': Conversion(
        model='inception_v3',
        rename=rename_identity,
        model_kwargs={'num_classes': 1000, 'aux_logits': True, 'transform_input': True},
        input_size=(299, 299),
        torchvision_kwargs={'aux_logits': True, 'init_weights': False, 'transform_input': True},
        flags=inception_v3_flags,
        assumes={'transform_input': True},
        heavy=True,
        note=(
            'The released TF-slim model (torchvision and the Flax default) differs from Table 1: '
            '1x1 80 + 3x3 192 + pool in the stem, 4 (not 5) 17x17 modules. Aux head converted '
            '(logits compared in eval mode, where it is not run); transform_input=True as '
            "torchvision's pretrained weights."
        ),
    ),
    'squeezenet1_0': Conversion(
        model='squeezenet1_0',
        rename=_squeezenet_rename('1_0'),
        model_kwargs={'num_classes': 1000},
        note='Identical to the paper (Table 1, no bypass); bypass=simple/complex are the Sec. 6 variants.',
    ),
    'squeezenet1_1': Conversion(
        model='squeezenet1_1',
        rename=_squeezenet_rename('1_1'),
        model_kwargs={'num_classes': 1000},
        note="The authors' SqueezeNet v1.1 (3x3/64 conv1, earlier pools); not in the paper.",
    ),
}
