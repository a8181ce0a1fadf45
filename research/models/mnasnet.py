"""MnasNet: Tan et al. 2019, "MnasNet: Platform-Aware Neural Architecture Search for Mobile",
Fig. 7 (MnasNet-A1) and torchvision ``mnasnet*`` (the reference code's "B1" variant).

torchvision / B1 (default, ``arch='b1'``): 3x3 conv 32 /2 -> SepConv (3x3 depthwise, 1x1 to 16,
linear) -> stacks of inverted residuals without SE (out, kernel, stride, expansion, repeats):
(24, 3, 2, 3, 3), (40, 5, 2, 3, 3), (80, 5, 2, 6, 3), (96, 3, 1, 6, 2), (192, 5, 2, 6, 4),
(320, 3, 1, 6, 1) -> 1x1 conv 1280 -> pool -> dropout 0.2 -> FC. ReLU everywhere. mnasnet1_0:
4,383,312 params, 0.314 GMACs.

Paper (``arch='a1'``, Fig. 7): the searched MnasNet-A1 with SE (squeeze 1/4 of the block input,
ReLU, sigmoid gate) in three stages: (24, 3, 2, 6, 2), (40, 5, 2, 3, 3, SE), (80, 3, 2, 6, 4),
(112, 3, 1, 6, 2, SE), (160, 5, 2, 6, 3, SE), (320, 3, 1, 6, 1): 3,887,038 params, 0.312 GMACs
here (the paper's Table 1: 3.9 M, 312 M). No torchvision weights.

``alpha`` (depth multiplier; torchvision's 0.5 / 0.75 / 1.0 / 1.3) scales every channel count
but the last 1280 with torchvision's asymmetric rounding to multiples of 8 (rounds down only when
within 10%). BN momentum 0.9997 (Flax convention; torch 0.0003) and eps 1e-5 as torchvision (the
TF reference: 0.99, 1e-3; ``norm_momentum``/``norm_eps``). Features: 'stage1'..'stage5' = last
map at output stride 2..32 (SepConv output, 24-, 40-, 96- (A1: 112-) channel stacks, head conv).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from research.layers.blocks import InvertedResidual, conv_norm_act
from research.layers.common import BatchNorm, Conv, ModuleDef, bind_norm, resolve_activation
from research.layers.heads import classifier_head
from research.layers.remat import remat_call
from research.models.mobilenet import norm_with, stage_features

__all__ = ['ARCHS', 'MnasNet', 'round_to_multiple_of']

#: Stacks: (out channels, kernel, stride, expansion, repeats, SE) after the stem (32) and SepConv (16).
ARCHS = {
    'b1': (
        (24, 3, 2, 3, 3, False),
        (40, 5, 2, 3, 3, False),
        (80, 5, 2, 6, 3, False),
        (96, 3, 1, 6, 2, False),
        (192, 5, 2, 6, 4, False),
        (320, 3, 1, 6, 1, False),
    ),
    'a1': (
        (24, 3, 2, 6, 2, False),
        (40, 5, 2, 3, 3, True),
        (80, 3, 2, 6, 4, False),
        (112, 3, 1, 6, 2, True),
        (160, 5, 2, 6, 3, True),
        (320, 3, 1, 6, 1, False),
    ),
}


def round_to_multiple_of(val: float, divisor: int = 8, round_up_bias: float = 0.9) -> int:
    """torchvision's ``_round_to_multiple_of``: nearest multiple of ``divisor``, rounded up
    unless within ``1 - round_up_bias`` above the lower multiple ((83, 8) -> 80, (84, 8) -> 88)."""
    new_val = max(divisor, int(val + divisor / 2) // divisor * divisor)
    return new_val if new_val >= round_up_bias * val else new_val + divisor


class MnasNet(nn.Module):
    """MnasNet (Tan et al. 2019); see the module docstring. ``arch`` 'b1' (torchvision) or 'a1'
    (paper Fig. 7); ``alpha`` depth multiplier; ``dropout_rate``; ``se`` (False removes A1's SE);
    ``conv``/``norm``/``norm_eps``/``norm_momentum``/``activation`` ablation knobs.
    Names: stem_conv/stem_bn = layers.0/1, sep_dw_conv/sep_dw_bn = layers.3/4, sep_pw_conv/
    sep_pw_bn = layers.6/7, stack<k>_block<j> = layers.<7+k>.<j>, head_conv/head_bn =
    layers.14/15, classifier = classifier.1.
    """

    alpha: float = 1.0
    arch: str = 'b1'
    num_classes: int = 1000
    dropout_rate: float = 0.2
    se: bool = True
    last_channel: int = 1280
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    norm_eps: float | None = 1e-5
    norm_momentum: float | None = 0.9997
    activation: str | Callable = nn.relu
    remat: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f'MnasNet arch must be one of {sorted(ARCHS)}; got {self.arch!r}')
        if self.alpha <= 0:
            raise ValueError(f'MnasNet alpha must be > 0; got {self.alpha!r}')
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        norm = bind_norm(norm_with(self.norm, self.norm_eps, self.norm_momentum), train, self.dtype)
        act = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype)

        def ch(c):
            return round_to_multiple_of(c * self.alpha, 8)

        x = jnp.asarray(x, self.dtype)
        c0 = ch(32)
        x = conv_norm_act(x, conv, norm, act, c0, 3, strides=2, name='stem_conv', norm_name='stem_bn')
        x = conv_norm_act(x, conv, norm, act, c0, 3, groups=c0, name='sep_dw_conv', norm_name='sep_dw_bn')
        x = conv_norm_act(x, conv, norm, None, ch(16), 1, name='sep_pw_conv', norm_name='sep_pw_bn')
        stride = 2
        maps = [(stride, x)]
        for k, (o, ks, s, e, r, se) in enumerate(ARCHS[self.arch], start=1):
            for j in range(r):
                stride *= s if j == 0 else 1
                unit = functools.partial(
                    InvertedResidual,
                    ch(o),
                    strides=s if j == 0 else 1,
                    expansion=e,
                    kernel_size=ks,
                    se_ratio=0.25 if (se and self.se) else 0.0,
                    se_activation=nn.relu,
                    conv=self.conv,
                    norm=norm,
                    activation=act,
                    dtype=self.dtype,
                    name=f'stack{k}_block{j}',
                )
                x = remat_call(self.remat, self, lambda h: unit()(h), x)
            maps.append((stride, x))
        x = conv_norm_act(x, conv, norm, act, self.last_channel, 1, name='head_conv', norm_name='head_bn')
        maps.append((stride, x))
        feats = stage_features({}, maps)
        logits = classifier_head(x, self.num_classes, self.dropout_rate, train, self.dtype, 'classifier')
        return (logits, feats) if return_features else logits


MnasNet0_5 = functools.partial(MnasNet, alpha=0.5)
MnasNet0_75 = functools.partial(MnasNet, alpha=0.75)
MnasNet1_0 = functools.partial(MnasNet, alpha=1.0)
MnasNet1_3 = functools.partial(MnasNet, alpha=1.3)
MnasNetA1 = functools.partial(MnasNet, arch='a1')

# torchvision's mnasnet0_5 .. 1_3 (B1) and the paper's Fig. 7 MnasNet-A1.
REGISTRY_ENTRIES = {
    'mnasnet0_5': MnasNet0_5,
    'mnasnet0_75': MnasNet0_75,
    'mnasnet1_0': MnasNet1_0,
    'mnasnet1_3': MnasNet1_3,
    'mnasnet_a1': MnasNetA1,
}
