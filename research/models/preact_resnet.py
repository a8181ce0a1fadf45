"""Pre-activation ResNets: He, Zhang, Ren, Sun 2016, "Identity Mappings in Deep Residual Networks".

Residual units with the orderings of Fig. 4 / Table 2 ('a' original post-activation ... 'e' full
pre-activation BN-ReLU-weight, the paper's proposal; ``research.layers.blocks.PreActBlock``).

CIFAR (Sec. 4 / Table 3): 3x3 conv 16 -> three stages of n units on 32/16/8 maps -> BN-ReLU ->
global average pool -> fc. Basic units (two 3x3; 16/32/64 filters, depth 6n + 2, ResNet-110) or
bottleneck units (1x1-3x3-1x1 at 16/32/64 with 64/128/256 outputs, depth 9n + 2, ResNet-164 /
ResNet-1001). Parameter counts (10 classes, ordering 'e'): ResNet-164 1,703,258, ResNet-1001
10,327,706, ResNet-110 1,730,522. These are the counts with **bias-free** 1x1 projection
shortcuts (``shortcut_bias=False``, default; as in most re-implementations and the authors'
PyTorch WRN code) taking the pre-activated input, no BN after the stem conv (the first unit's
BN-ReLU normalises it) and one final BN-ReLU; the authors' Torch code gives the projection a
bias (``shortcut_bias=True``: +448 for 164/1001). The paper's Table 3 says 10.2M for
ResNet-1001; the architecture as described has 10.3M.

Stem and final layers per ordering, so that every unit sees what it expects: 'a'-'c'
(post-activation units) conv-BN-ReLU stem, no final norm; 'd' conv-BN stem (the unit starts with
ReLU), final ReLU; 'e' bare conv stem, final BN-ReLU.

ImageNet (``preact_resnet18`` .. ``preact_resnet152``): torchvision's ResNet stage layout (7x7/2
conv-BN-ReLU, 3x3/2 max pool, 64/128/256/512 planes, bottleneck x4 expansion, stride on the
3x3) with pre-activation units and a final BN-ReLU, as fb.resnet.torch's ``preresnet.lua`` (the
first unit of layer1 normalises the stem output again). Features as ``research.models.resnet``:
'stage1' (stride 2, stem) .. 'stage5' (stride 32).

For both, the last stage's feature map is taken after the final norm/activation (the map the
head pools); the other stages' are the raw unit outputs (the residual stream).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.blocks import PREACT_ORDERINGS, SHORTCUTS, PreActBlock, conv_norm_act
from research.layers.common import BatchNorm, Conv, ModuleDef, bind_norm, resolve_activation
from research.layers.heads import classifier_head
from research.layers.remat import remat_call
from research.layers.stems import imagenet_stem


def _check(ordering, shortcut):
    if ordering not in PREACT_ORDERINGS:
        raise ValueError(f'unknown ordering {ordering!r}; expected one of {PREACT_ORDERINGS}')
    if shortcut not in SHORTCUTS:
        raise ValueError(f'unknown shortcut {shortcut!r}; expected one of {SHORTCUTS}')


def _head_norm(x, ordering, norm, act):
    """The final norm/activation of a network of ``ordering`` units (see the module docstring)."""
    if ordering == 'e' and norm is not None:
        x = norm(name='final_bn')(x)
    return act(x) if ordering in 'de' else x


class PreActResNetCifar(nn.Module):
    """Pre-activation ResNet for 32x32 inputs (He et al. 2016, Sec. 4, Tables 2-3).

    Fields:
      depth: 6n + 2 (basic units, e.g. 110) or 9n + 2 (``bottleneck``, e.g. 164, 1001).
      ordering: unit ordering 'a'..'e' (Fig. 4), default 'e' (full pre-activation).
      bottleneck: bottleneck units (ResNet-164/1001) instead of basic ones (ResNet-110).
      width: filters of the stem and of stage 1's 3x3 convs (16).
      shortcut: 'B' (1x1 projection where the shape changes; default), 'A' or 'C'.
      shortcut_bias: bias on the projection conv in orderings 'd'/'e' (see module docstring).
      conv, norm, activation, dtype, num_classes, dropout_rate (before the fc, 0 in the paper).

    Features: 'stem' (32x32), 'stage1', 'stage2', 'stage3' (32, 16, 8 on 32x32 inputs).
    """

    depth: int = 110
    ordering: str = 'e'
    bottleneck: bool = False
    num_classes: int = 10
    width: int = 16
    shortcut: str = 'B'
    shortcut_bias: bool = False
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    dropout_rate: float = 0.0
    remat: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        per_unit = 9 if self.bottleneck else 6
        if not isinstance(self.depth, int) or self.depth < per_unit + 2 or (self.depth - 2) % per_unit:
            kind = 'bottleneck: 9n+2 (164, 1001)' if self.bottleneck else 'basic: 6n+2 (20, 56, 110)'
            raise ValueError(f'PreActResNetCifar depth must be {kind}; got depth={self.depth!r}')
        _check(self.ordering, self.shortcut)
        super().__post_init__()

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // (9 if self.bottleneck else 6)

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        norm = bind_norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        o = self.ordering
        x = jnp.asarray(x, self.dtype)
        feats = {}
        x = feats['stem'] = conv_norm_act(
            x,
            functools.partial(self.conv, dtype=self.dtype),
            norm if o != 'e' else None,  # 'e': the first unit's BN-ReLU normalises the stem
            act if o in 'abc' else None,
            self.width,
            3,
            use_bias=norm is None,
            name='stem_conv',
            norm_name='stem_bn',
        )
        expansion = 4 if self.bottleneck else 1
        for stage in range(3):
            for i in range(self.blocks_per_stage):
                unit = functools.partial(
                    PreActBlock,
                    features=self.width * expansion * 2**stage,
                    strides=2 if stage > 0 and i == 0 else 1,
                    ordering=o,
                    bottleneck=self.bottleneck,
                    shortcut=self.shortcut,
                    shortcut_bias=self.shortcut_bias,
                    conv=self.conv,
                    norm=norm,
                    activation=act,
                    dtype=self.dtype,
                    name=f'stage{stage + 1}_block{i + 1}',
                )
                x = remat_call(self.remat, self, lambda h: unit()(h), x)
            if stage == 2:
                x = _head_norm(x, o, norm, act)
            feats[f'stage{stage + 1}'] = x
        logits = classifier_head(x, self.num_classes, self.dropout_rate, train, self.dtype, 'head')
        return (logits, feats) if return_features else logits


class PreActResNet(nn.Module):
    """Pre-activation ResNet for ImageNet-sized inputs (He et al. 2016, Table 5; torchvision's
    stage layout, see the module docstring).

    Fields: ``layers`` (units per stage), ``bottleneck``, ``ordering`` ('e'), ``shortcut``
    ('B'), ``shortcut_bias``, ``stem_width`` (64), conv, norm, activation, dtype, num_classes,
    dropout_rate. Features 'stage1'..'stage5' at output strides 2..32.
    """

    layers: Sequence[int] = (2, 2, 2, 2)
    bottleneck: bool = False
    ordering: str = 'e'
    num_classes: int = 1000
    shortcut: str = 'B'
    shortcut_bias: bool = False
    stem_width: int = 64
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    dropout_rate: float = 0.0
    remat: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        if len(self.layers) != 4:
            raise ValueError(f'layers must give 4 stage depths, got {self.layers!r}')
        _check(self.ordering, self.shortcut)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        norm = bind_norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        x = jnp.asarray(x, self.dtype)
        feats = {}
        conv = functools.partial(self.conv, dtype=self.dtype)
        feats['stage1'], x = imagenet_stem(x, conv, norm, act, self.stem_width)
        expansion = 4 if self.bottleneck else 1
        for stage, n in enumerate(self.layers):
            for i in range(n):
                unit = functools.partial(
                    PreActBlock,
                    features=64 * expansion * 2**stage,
                    strides=2 if stage > 0 and i == 0 else 1,
                    ordering=self.ordering,
                    bottleneck=self.bottleneck,
                    shortcut=self.shortcut,
                    shortcut_bias=self.shortcut_bias,
                    conv=self.conv,
                    norm=norm,
                    activation=act,
                    dtype=self.dtype,
                    name=f'layer{stage + 1}_block{i}',
                )
                x = remat_call(self.remat, self, lambda h: unit()(h), x)
            if stage == 3:
                x = _head_norm(x, self.ordering, norm, act)
            feats[f'stage{stage + 2}'] = x
        logits = classifier_head(x, self.num_classes, self.dropout_rate, train, self.dtype, 'fc')
        return (logits, feats) if return_features else logits


# CIFAR, He et al. 2016, Tables 2-3.
PreActResNet110 = functools.partial(PreActResNetCifar, depth=110, bottleneck=False)
PreActResNet164 = functools.partial(PreActResNetCifar, depth=164, bottleneck=True)
PreActResNet1001 = functools.partial(PreActResNetCifar, depth=1001, bottleneck=True)
# ImageNet, torchvision's ResNet stage depths.
PreActResNet18 = functools.partial(PreActResNet, layers=(2, 2, 2, 2), bottleneck=False)
PreActResNet34 = functools.partial(PreActResNet, layers=(3, 4, 6, 3), bottleneck=False)
PreActResNet50 = functools.partial(PreActResNet, layers=(3, 4, 6, 3), bottleneck=True)
PreActResNet101 = functools.partial(PreActResNet, layers=(3, 4, 23, 3), bottleneck=True)
PreActResNet152 = functools.partial(PreActResNet, layers=(3, 8, 36, 3), bottleneck=True)

REGISTRY_ENTRIES = {
    'preact_resnet_cifar': PreActResNetCifar,
    'preact_resnet110': PreActResNet110,
    'preact_resnet164': PreActResNet164,
    'preact_resnet1001': PreActResNet1001,
    'preact_resnet': PreActResNet,
    'preact_resnet18': PreActResNet18,
    'preact_resnet34': PreActResNet34,
    'preact_resnet50': PreActResNet50,
    'preact_resnet101': PreActResNet101,
    'preact_resnet152': PreActResNet152,
}
