"""Wide Residual Networks for CIFAR: Zagoruyko & Komodakis 2016, "Wide Residual Networks", Table 1.

WRN-d-k: 3x3 conv 16 -> conv2/conv3/conv4 groups of N = (d - 4) / 6 pre-activation basic blocks
with 16k / 32k / 64k filters on 32/16/8 maps (stride 2 at the first block of conv3 and conv4) ->
BN-ReLU -> global average pool -> fc. Block B(3,3) (Fig. 1c/d): BN-ReLU-conv3x3-BN-ReLU-
[dropout]-conv3x3, + shortcut; the shortcut is a bias-free 1x1 conv (stride) of the pre-activated
input where the shape changes, identity elsewhere (the authors' code). The depth d counts the 3x3
convs, the stem and the final fc (2 of them per block: d = 6N + 4 counts 2 projection convs too).
``research.layers.blocks.PreActBlock`` (ordering 'e', ``dropout_rate``, ``shortcut_bias=False``).

Parameter counts (10 classes; checked in tests/test_zoo_resnet.py): WRN-16-1 175,066; 16-2
691,674; 16-4 2,748,890; 16-8 10,961,370; 16-10 17,116,634; 22-8 17,158,106; 22-10 26,797,914;
28-10 36,479,194; 28-12 52,517,850; 40-1 563,930; 40-2 2,243,546; 40-4 8,949,210; 40-8
35,748,314 (the paper's Table 4: 0.6M, 2.2M, 8.9M, 11.0M, 36.5M, ...).

Dropout (Sec. 2.4 / Table 6): ``dropout_rate`` between the two convs of every block (0.3 in the
paper's best CIFAR runs; 0 by default). Features: 'stem', 'stage1', 'stage2', 'stage3' (32, 16,
8 on 32x32 inputs; 'stage3' after the final BN-ReLU).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from research.layers.blocks import PreActBlock
from research.layers.common import BatchNorm, Conv, ModuleDef, bind_norm, resolve_activation
from research.layers.heads import classifier_head
from research.layers.remat import remat_call


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` (Zagoruyko & Komodakis 2016, Table 1).

    Fields: depth (6N + 4: 16, 22, 28, 40), widen_factor k, dropout_rate (inside blocks, rng
    'dropout'), num_classes, conv, norm, activation, dtype.
    """

    depth: int = 28
    widen_factor: int = 10
    dropout_rate: float = 0.0
    num_classes: int = 10
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    remat: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        if not isinstance(self.depth, int) or self.depth < 10 or (self.depth - 4) % 6:
            raise ValueError(f'WRN depth must be 6N+4 with N >= 1 (16, 22, 28, 40); got depth={self.depth!r}')
        if self.widen_factor < 1:
            raise ValueError(f'widen_factor must be >= 1, got {self.widen_factor!r}')
        super().__post_init__()

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 4) // 6

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        norm = bind_norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        x = jnp.asarray(x, self.dtype)
        feats = {}
        x = feats['stem'] = self.conv(
            16, (3, 3), padding=((1, 1), (1, 1)), use_bias=norm is None, dtype=self.dtype, name='stem_conv'
        )(x)
        for stage in range(3):
            for i in range(self.blocks_per_stage):
                unit = functools.partial(
                    PreActBlock,
                    features=16 * self.widen_factor * 2**stage,
                    strides=2 if stage > 0 and i == 0 else 1,
                    ordering='e',
                    shortcut='B',
                    shortcut_bias=False,
                    dropout_rate=self.dropout_rate,
                    conv=self.conv,
                    norm=norm,
                    activation=act,
                    dtype=self.dtype,
                    name=f'stage{stage + 1}_block{i + 1}',
                )
                x = remat_call(self.remat, self, lambda h: unit()(h, train=train), x)
            if stage == 2:
                if norm is not None:
                    x = norm(name='final_bn')(x)
                x = act(x)
            feats[f'stage{stage + 1}'] = x
        logits = classifier_head(x, self.num_classes, dtype=self.dtype, name='head')
        return (logits, feats) if return_features else logits


def _wrn(depth, k):
    return functools.partial(WideResNet, depth=depth, widen_factor=k)


#: Table 4/5 networks: (depth, k).
WRN_NETS = (
    (16, 1),
    (16, 2),
    (16, 4),
    (16, 8),
    (16, 10),
    (22, 8),
    (22, 10),
    (28, 10),
    (28, 12),
    (40, 1),
    (40, 2),
    (40, 4),
    (40, 8),
)

REGISTRY_ENTRIES = {'wrn': WideResNet, **{f'wrn{d}_{k}': _wrn(d, k) for d, k in WRN_NETS}}
