"""ShuffleNets: Zhang, Zhou, Lin, Sun 2018, "ShuffleNet: An Extremely Efficient Convolutional Neural
Network for Mobile Devices" (CVPR), Table 1; Ma, Zhang, Zheng, Sun 2018, "ShuffleNet V2: Practical
Guidelines for Efficient CNN Architecture Design" (ECCV), Table 5.

ShuffleNet v1 (``ShuffleNetV1``): 3x3/2 conv (24) -> BN -> ReLU -> 3x3/2 max pool -> Stage 2/3/4 of
4/8/4 ShuffleNet units (``research.layers.blocks.ShuffleUnitV1``; the first of each stage has
stride 2 and concatenates an average-pooled shortcut; the first pointwise conv of Stage 2 is not
grouped) -> global average pool -> FC. Stage output channels (1x) for g = 1/2/3/4/8 groups:
144/200/240/272/384, doubling per stage; "ShuffleNet s x" scales every layer's channels by s.
Multiply-adds at 224 px (1x), convolutions only: 142.5M / 140.0M / 136.5M / 133.3M / 136.8M for
g = 1/2/3/4/8, Table 1's "complexity" row (MFLOPs meaning multiply-adds, FC not counted: 143 / 140
/ 137 / 133 / 137); the FC adds 1000 x (576 / 800 / 960 / 1088 / 1536). Parameters (1000 classes)
1,531,936 / 1,733,848 / 1,865,728 / 1,968,344 / 2,434,768 (the paper gives none).

ShuffleNet v2 (``ShuffleNetV2``, torchvision layout): 3x3/2 conv (24) -> BN -> ReLU -> 3x3/2 max
pool -> stage2/3/4 of 4/8/4 ShuffleNet V2 units (``ShuffleUnitV2``, the first with stride 2) ->
1x1 conv5 (1024; 2048 for 2x) -> BN -> ReLU -> global average pool -> FC. Output channels per stage
48/96/192 (0.5x), 116/232/464 (1x), 176/352/704 (1.5x), 244/488/976 (2x). Parameters (1000
classes) 1,366,792 / 2,278,604 / 3,503,624 / 7,393,996, GMACs 0.040 / 0.145 / 0.296 / 0.583
(torchvision's).

Feature maps (``return_features=True``), keyed by output stride as for every ImageNet backbone:
'stage1' conv1 (stride 2), 'stage2' after the max pool (4), 'stage3'/'stage4'/'stage5' after
the paper's Stage 2/3/4 (8/16/32; for v2, 'stage5' after conv5 + BN + ReLU).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.blocks import ShuffleUnitV1, ShuffleUnitV2, conv_norm_act
from research.layers.common import BatchNorm, Conv, ModuleDef, bind_norm, resolve_activation
from research.layers.heads import classifier_head
from research.layers.remat import remat_call
from research.layers.stems import imagenet_stem

#: Table 1: output channels of Stage 2 at 1x, per number of groups g (Stages 3/4 double them).
V1_STAGE2_CHANNELS = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


class ShuffleNetV1(nn.Module):
    """ShuffleNet (v1), Zhang et al. 2018, Table 1 (groups g) and Table 2 (scale factor s).

    Args (fields):
      groups: g, groups of the pointwise convs (1, 2, 3, 4, 8); channel shuffle with g groups.
      scale: s, multiplies every layer's channels (0.25, 0.5, 1, 1.5, 2 in Table 2). Stage
        channels are rounded to a multiple of 4 g (the bottleneck, 1/4 of a unit's output, must
        split into g groups; exact at 1x) and the stem's 24 s to a multiple of g.
      stage_repeats: units per stage (Stage 2/3/4: 4, 8, 4, i.e. 1 + 3, 1 + 7, 1 + 3).
      stage_channels: overrides Stage 2's output channels (Stages 3/4 double them).
      stem_features: overrides the stem's channels.
      num_classes, dropout_rate (before the FC; 0), conv, norm, activation, dtype: as usual.

    Submodule names: conv1 / conv1_bn, stage{2,3,4}_unit{0..} (the paper's stage numbers;
    gconv1/bn1, dwconv/bn2, gconv2/bn3), fc.
    """

    groups: int = 3
    scale: float = 1.0
    stage_repeats: Sequence[int] = (4, 8, 4)
    stage_channels: int | None = None
    stem_features: int | None = None
    num_classes: int = 1000
    dropout_rate: float = 0.0
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    remat: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.stage_channels is None and self.groups not in V1_STAGE2_CHANNELS:
            raise ValueError(
                f'ShuffleNetV1 groups must be one of {sorted(V1_STAGE2_CHANNELS)} (Table 1) unless '
                f'stage_channels is given; got groups={self.groups!r}'
            )
        super().__post_init__()

    @property
    def channels(self) -> tuple[int, int, int, int]:
        """(stem, Stage 2, Stage 3, Stage 4) output channels."""
        g = self.groups
        c2 = self.stage_channels or _round_to(V1_STAGE2_CHANNELS[g] * self.scale, 4 * g)
        stem = self.stem_features or _round_to(24 * self.scale, g)
        return (stem, c2, 2 * c2, 4 * c2)

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        norm = bind_norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        x = jnp.asarray(x, self.dtype)
        conv = functools.partial(self.conv, dtype=self.dtype)
        feats = {}
        stem, *stages = self.channels
        feats['stage1'], x = imagenet_stem(x, conv, norm, act, stem, kernel=3, norm_name='conv1_bn')
        feats['stage2'] = x
        for s, (repeats, features) in enumerate(zip(self.stage_repeats, stages)):
            for i in range(repeats):
                unit = functools.partial(
                    ShuffleUnitV1,
                    features=features,
                    groups=self.groups,
                    strides=2 if i == 0 else 1,
                    group_first=not (s == 0 and i == 0),
                    conv=self.conv,
                    norm=norm,
                    activation=act,
                    dtype=self.dtype,
                    name=f'stage{s + 2}_unit{i}',
                )
                x = remat_call(self.remat, self, lambda h: unit()(h), x)
            feats[f'stage{s + 3}'] = x
        logits = classifier_head(x, self.num_classes, self.dropout_rate, train, self.dtype, 'fc')
        return (logits, feats) if return_features else logits


# Table 1 (1x) for each number of groups.
ShuffleNetV1G1 = functools.partial(ShuffleNetV1, groups=1)
ShuffleNetV1G2 = functools.partial(ShuffleNetV1, groups=2)
ShuffleNetV1G3 = functools.partial(ShuffleNetV1, groups=3)
ShuffleNetV1G4 = functools.partial(ShuffleNetV1, groups=4)
ShuffleNetV1G8 = functools.partial(ShuffleNetV1, groups=8)


class ShuffleNetV2(nn.Module):
    """ShuffleNet V2, Ma et al. 2018, Table 5; torchvision's ``ShuffleNetV2`` layout.

    Args (fields):
      stages_out_channels: (conv1, stage2, stage3, stage4, conv5) output channels.
      stages_repeats: units per stage (4, 8, 4).
      num_classes, dropout_rate (before the FC; 0 as torchvision), conv, norm, activation, dtype.

    Submodule names (torchvision's, Sequential indices replaced by names): conv1 / conv1_bn,
    stage{2,3,4}_unit{0..} (b1_dw, b1_bn1, b1_conv, b1_bn2 = branch1.0-3; b2_conv1, b2_bn1,
    b2_dw, b2_bn2, b2_conv2, b2_bn3 = branch2.0/1/3/4/5/6), conv5 / conv5_bn, fc.
    """

    stages_out_channels: Sequence[int] = (24, 116, 232, 464, 1024)
    stages_repeats: Sequence[int] = (4, 8, 4)
    num_classes: int = 1000
    dropout_rate: float = 0.0
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    remat: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        if len(self.stages_out_channels) != len(self.stages_repeats) + 2:
            raise ValueError(
                f'stages_out_channels needs {len(self.stages_repeats) + 2} entries (conv1, stages, conv5); '
                f'got {self.stages_out_channels!r}'
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        norm = bind_norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        x = jnp.asarray(x, self.dtype)
        conv = functools.partial(self.conv, dtype=self.dtype)
        feats = {}
        stem, *stages, last = self.stages_out_channels
        feats['stage1'], x = imagenet_stem(x, conv, norm, act, stem, kernel=3, norm_name='conv1_bn')
        feats['stage2'] = x
        for s, (repeats, features) in enumerate(zip(self.stages_repeats, stages)):
            for i in range(repeats):
                unit = functools.partial(
                    ShuffleUnitV2,
                    features=features,
                    strides=2 if i == 0 else 1,
                    conv=self.conv,
                    norm=norm,
                    activation=act,
                    dtype=self.dtype,
                    name=f'stage{s + 2}_unit{i}',
                )
                x = remat_call(self.remat, self, lambda h: unit()(h), x)
            if s + 1 < len(self.stages_repeats):
                feats[f'stage{s + 3}'] = x
        x = conv_norm_act(x, conv, norm, act, last, 1, padding='VALID', name='conv5', norm_name='conv5_bn')
        feats[f'stage{len(self.stages_repeats) + 2}'] = x
        logits = classifier_head(x, self.num_classes, self.dropout_rate, train, self.dtype, 'fc')
        return (logits, feats) if return_features else logits


# Table 5 / torchvision.
ShuffleNetV2x05 = functools.partial(ShuffleNetV2, stages_out_channels=(24, 48, 96, 192, 1024))
ShuffleNetV2x10 = functools.partial(ShuffleNetV2, stages_out_channels=(24, 116, 232, 464, 1024))
ShuffleNetV2x15 = functools.partial(ShuffleNetV2, stages_out_channels=(24, 176, 352, 704, 1024))
ShuffleNetV2x20 = functools.partial(ShuffleNetV2, stages_out_channels=(24, 244, 488, 976, 2048))

REGISTRY_ENTRIES = {
    'shufflenet_v1': ShuffleNetV1,
    'shufflenet_v1_g1': ShuffleNetV1G1,
    'shufflenet_v1_g2': ShuffleNetV1G2,
    'shufflenet_v1_g3': ShuffleNetV1G3,
    'shufflenet_v1_g4': ShuffleNetV1G4,
    'shufflenet_v1_g8': ShuffleNetV1G8,
    'shufflenet_v2': ShuffleNetV2,
    'shufflenet_v2_x0_5': ShuffleNetV2x05,
    'shufflenet_v2_x1_0': ShuffleNetV2x10,
    'shufflenet_v2_x1_5': ShuffleNetV2x15,
    'shufflenet_v2_x2_0': ShuffleNetV2x20,
}
