"""CIFAR ResNeXt: Xie, Girshick, Dollar, Tu, He 2017, "Aggregated Residual Transformations for
Deep Neural Networks", Sec. 5.3 and Table 7 (ResNeXt-29, 8x64d and 16x64d).

3x3 conv 64 -> BN -> ReLU -> three stages of n = (depth - 2) / 9 ResNeXt bottlenecks on 32/16/8
maps -> global average pool -> fc. Stage s (0, 1, 2): grouped 3x3 width cardinality x
base_width x 2^s (8x64d: 512, 1024, 2048), output widen x 64 x 2^s (widen 4: 256, 512, 1024, the
paper's "output width"), stride 2 on the 3x3 of the first block of stages 2 and 3, 1x1 conv + BN
projection shortcuts where the shape changes (as the authors' Torch code); ImageNet-style
post-activation blocks (``research.layers.blocks.ResNeXtBlock``).

Parameter counts (10 classes): ResNeXt-29 8x64d 34,426,698, 16x64d 68,155,210 (the paper's
34.4M / 68.1M). Test error (Table 7): 3.65 / 3.58 %. Features: 'stem', 'stage1', 'stage2',
'stage3' (32, 16, 8 on 32x32 inputs).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from research.layers.blocks import ResNeXtBlock, conv_norm_act
from research.layers.common import BatchNorm, Conv, ModuleDef, bind_norm, resolve_activation
from research.layers.heads import classifier_head
from research.layers.remat import remat_call


class CifarResNeXt(nn.Module):
    """ResNeXt-``depth`` (``cardinality`` x ``base_width``d) for 32x32 inputs (Xie et al. 2017, Sec. 5.3).

    Fields: depth (9n + 2; 29), cardinality C (8, 16), base_width d of stage 1 (64), widen (output
    channels = widen x 64 x 2^s; 4), num_classes, zero_init_residual, conv, norm, activation,
    dropout_rate (before the fc; 0 in the paper), dtype.
    """

    depth: int = 29
    cardinality: int = 8
    base_width: int = 64
    widen: int = 4
    num_classes: int = 10
    zero_init_residual: bool = False
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    dropout_rate: float = 0.0
    remat: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        if not isinstance(self.depth, int) or self.depth < 11 or (self.depth - 2) % 9:
            raise ValueError(
                f'CifarResNeXt depth must be 9n+2 with n >= 1 (e.g. 29); got depth={self.depth!r}'
            )
        super().__post_init__()

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 9

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        norm = bind_norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype)
        x = jnp.asarray(x, self.dtype)
        feats = {}
        x = feats['stem'] = conv_norm_act(x, conv, norm, act, 64, 3, name='stem_conv', norm_name='stem_bn')
        for stage in range(3):
            for i in range(self.blocks_per_stage):
                # Bottleneck width = int(features * base_width / 64) * groups = C * d * 2^s.
                unit = functools.partial(
                    ResNeXtBlock,
                    features=64 * 2**stage,
                    strides=2 if stage > 0 and i == 0 else 1,
                    groups=self.cardinality,
                    base_width=self.base_width,
                    expansion=self.widen,
                    shortcut='B',
                    zero_init_last=self.zero_init_residual,
                    conv=self.conv,
                    norm=norm,
                    activation=act,
                    dtype=self.dtype,
                    name=f'stage{stage + 1}_block{i + 1}',
                )
                x = remat_call(self.remat, self, lambda h: unit()(h), x)
            feats[f'stage{stage + 1}'] = x
        logits = classifier_head(x, self.num_classes, self.dropout_rate, train, self.dtype, 'head')
        return (logits, feats) if return_features else logits


# Table 7.
ResNeXt29_8x64d = functools.partial(CifarResNeXt, depth=29, cardinality=8, base_width=64)
ResNeXt29_16x64d = functools.partial(CifarResNeXt, depth=29, cardinality=16, base_width=64)

REGISTRY_ENTRIES = {
    'resnext_cifar': CifarResNeXt,
    'resnext29_8x64d': ResNeXt29_8x64d,
    'resnext29_16x64d': ResNeXt29_16x64d,
}
