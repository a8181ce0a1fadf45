"""Dual Path Networks: Chen, Li, Xiao, Jin, Yan, Feng 2017, "Dual Path Networks" (NeurIPS),
Table 1 (DPN-92, DPN-98, DPN-131) and the authors' MXNet code (DPN-68, DPN-107), with the
configurations of timm's port of those weights.

Stem (7x7/2 conv, or 3x3/2 for the "small" DPN-68) -> BN -> ReLU -> 3x3/2 max pool -> four stages
(conv2..conv5) of pre-activation dual path blocks (``research.layers.blocks.DualPathBlock``: a 1x1
(r channels) -> grouped 3x3 (G groups) -> 1x1 bottleneck whose output is split into a
residual part (added, ResNet-like) and a dense part of ``inc`` channels (concatenated,
DenseNet-like); the first block of each stage projects the input into both paths) -> BN -> act
on the concatenated paths -> global average pool -> classifier.

Per stage s = 1..4 (bw_factor 4, or 1 for the small DPN-68): residual width bw = 64 * 2^(s-1) *
bw_factor, bottleneck width r = k_R * bw / (64 * bw_factor), increments ``inc_sec``, block counts
``k_sec``. BatchNorm epsilon 1e-3 (MXNet's). Parameter counts (1000 classes): DPN-68 12,611,602;
DPN-92 37,668,392; DPN-98 61,570,728; DPN-107 86,917,800; DPN-131 79,254,504 (timm's exactly;
the paper's Table 2 gives 37.7M / 61.6M / 79.3M for 92 / 98 / 131). The classifier is a
``Dense`` layer (timm: a 1x1 conv with bias on the pooled map, the same parameters).

Differences: timm (which loads the authors' MXNet weights) applies ELU after the final BN;
``final_activation`` defaults to that, 'relu' gives a ReLU there. torchvision has no DPN.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.blocks import DualPathBlock
from research.layers.common import BatchNorm, Conv, ModuleDef, bind_norm, resolve_activation
from research.layers.heads import classifier_head
from research.layers.remat import remat_call
from research.layers.stems import imagenet_stem

#: BatchNorm with MXNet's epsilon (1e-3), as the authors' code and timm.
DPNBatchNorm = functools.partial(BatchNorm, epsilon=1e-3)


class DPN(nn.Module):
    """Dual Path Network, Chen et al. 2017, Table 1 (fields named as the paper and timm).

    Args (fields):
      k_r: bottleneck width factor k_R (96 for DPN-92; r = k_R * bw / (64 * bw_factor)).
      groups: G, groups of the 3x3 convs (32 for DPN-92).
      k_sec: blocks per stage (conv2..conv5).
      inc_sec: dense-path increment per block in each stage.
      num_init_features: stem channels (64 for DPN-92).
      small: DPN-68's 3x3 stem and bw_factor 1 (residual widths 64..512 instead of 256..2048).
      final_activation: after the final BN on the concatenated paths ('elu': timm; 'relu').
      dropout_rate: before the classifier (0).
      conv, norm, activation, dtype: ablation knobs (norm default: BatchNorm with eps 1e-3).

    Submodule names: conv1 / conv1_bn (stem), conv{2..5}_{1..} (blocks, as timm's
    ``features.conv2_1``), conv5_bn (final BN), classifier. ``return_features=True`` also
    returns {'stage1': stem (stride 2), 'stage2'..'stage5': concatenated paths after conv2..conv5
    (4, 8, 16, 32), 'stage5' after the final BN and activation}.
    """

    k_r: int = 96
    groups: int = 32
    k_sec: Sequence[int] = (3, 4, 20, 3)
    inc_sec: Sequence[int] = (16, 32, 24, 128)
    num_init_features: int = 64
    small: bool = False
    final_activation: str | Callable = 'elu'
    num_classes: int = 1000
    dropout_rate: float = 0.0
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = DPNBatchNorm
    activation: str | Callable = nn.relu
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        norm = bind_norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        x = jnp.asarray(x, self.dtype)
        feats = {}
        feats['stage1'], x = imagenet_stem(
            x,
            functools.partial(self.conv, dtype=self.dtype),
            norm,
            act,
            self.num_init_features,
            kernel=3 if self.small else 7,
            norm_name='conv1_bn',
        )
        bw_factor = 1 if self.small else 4
        for s, (blocks, inc) in enumerate(zip(self.k_sec, self.inc_sec)):
            bw = 64 * 2**s * bw_factor
            r = (self.k_r * bw) // (64 * bw_factor)
            for i in range(blocks):
                unit = functools.partial(
                    DualPathBlock,
                    features=bw,
                    bottleneck_width=r,
                    increment=inc,
                    groups=self.groups,
                    strides=2 if s > 0 and i == 0 else 1,
                    project=i == 0,
                    conv=self.conv,
                    norm=norm,
                    activation=act,
                    dtype=self.dtype,
                    name=f'conv{s + 2}_{i + 1}',
                )
                x = remat_call(self.remat, self, lambda h: unit()(h), x)
            x = jnp.concatenate(x, axis=-1)
            if s < len(self.k_sec) - 1:
                feats[f'stage{s + 2}'] = x
        if norm is not None:
            x = norm(name='conv5_bn')(x)
        x = feats[f'stage{len(self.k_sec) + 1}'] = resolve_activation(self.final_activation)(x)
        logits = classifier_head(x, self.num_classes, self.dropout_rate, train, self.dtype, 'classifier')
        return (logits, feats) if return_features else logits


# The authors' configurations (timm's dpn68 / dpn92 / dpn98 / dpn107 / dpn131).
DPN68 = functools.partial(
    DPN, small=True, num_init_features=10, k_r=128, groups=32, k_sec=(3, 4, 12, 3), inc_sec=(16, 32, 32, 64)
)
DPN92 = functools.partial(
    DPN, num_init_features=64, k_r=96, groups=32, k_sec=(3, 4, 20, 3), inc_sec=(16, 32, 24, 128)
)
DPN98 = functools.partial(
    DPN, num_init_features=96, k_r=160, groups=40, k_sec=(3, 6, 20, 3), inc_sec=(16, 32, 32, 128)
)
DPN107 = functools.partial(
    DPN, num_init_features=128, k_r=200, groups=50, k_sec=(4, 8, 20, 3), inc_sec=(20, 64, 64, 128)
)
DPN131 = functools.partial(
    DPN, num_init_features=128, k_r=160, groups=40, k_sec=(4, 8, 28, 3), inc_sec=(16, 32, 32, 128)
)

REGISTRY_ENTRIES = {
    'dpn': DPN,
    'dpn68': DPN68,
    'dpn92': DPN92,
    'dpn98': DPN98,
    'dpn107': DPN107,
    'dpn131': DPN131,
}
