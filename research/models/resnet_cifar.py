"""CIFAR ResNets and plain nets: He, Zhang, Ren, Sun 2015, "Deep Residual Learning for Image
Recognition", Sec. 4.2 (CIFAR-10 architecture), Table 6 (ResNet-20/32/44/56/110/1202).

depth = 6n + 2: 3x3 conv 16 -> three stages of n basic blocks at 16/32/64 filters on 32/16/8
maps (stride 2 at the first block of stages 2 and 3) -> global average pool -> dense.
Shortcuts (Sec. 3.3): 'A' identity, zero-padded/subsampled where dimensions change (no
params); 'B' 1x1-conv projections where dimensions change; 'C' projections everywhere.

Parameter counts (10 classes, option A): 269,722 / 464,154 / 658,586 / 853,018 / 1,727,962 /
19,421,274 for depth 20/32/44/56/110/1202 (the paper's 0.27M/0.46M/0.66M/0.85M/1.7M/19.4M);
option B adds 2,752; plain nets equal option A.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from research.layers.blocks import SHORTCUTS, BasicBlock, conv_norm_act, shortcut_a  # noqa: F401 (re-exported)
from research.layers.common import BatchNorm, Conv, ModuleDef, bind_norm, resolve_activation
from research.layers.heads import classifier_head
from research.layers.remat import remat_call


class CifarResNet(nn.Module):
    """ResNet / plain net for 32x32 inputs, He et al. 2015, Sec. 4.2 and Table 6.

    Args (fields):
      depth: 6n + 2 (20, 32, 44, 56, 110, 1202 in the paper).
      shortcut: 'A' (paper's CIFAR choice), 'B' or 'C'; ignored when ``plain=True``.
      plain: no shortcuts at all (the paper's plain baselines, Fig. 6 left).
      width: filters of stage 1 (16 in the paper); stages use width, 2*width, 4*width.
      block, conv, norm, activation: ablation knobs (norm: constructor, 'batch'/'group'/
        'layer'/'none' or None; activation: callable or name). ``block`` is called with
        features, strides, shortcut (None if plain), conv, norm (mode-bound), activation,
        zero_init_last, dtype, name -- see ``research.layers.blocks.BasicBlock``.
      zero_init_residual: zero-init the last norm scale of each block (off in the paper).
      dropout_rate: dropout before the classifier (0 in the paper; rng 'dropout').
      remat: rematerialise each block (``nn.remat``; same parameters and values, less activation
        memory for about one more forward pass; ``research.layers.remat``).

    ``__call__(x, train=False, return_features=False)``; features: 'stem', 'stage1',
    'stage2', 'stage3' (NHWC maps, 32, 16, 8 spatial on 32x32 inputs).
    """

    depth: int
    num_classes: int = 10
    shortcut: str = 'A'
    plain: bool = False
    width: int = 16
    block: ModuleDef = BasicBlock
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    zero_init_residual: bool = False
    dropout_rate: float = 0.0
    remat: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        if not isinstance(self.depth, int) or self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(
                f'CifarResNet depth must be 6n+2 with n >= 1 (e.g. 20, 32, 44, 56, 110, 1202); '
                f'got depth={self.depth!r}'
            )
        if not self.plain and self.shortcut not in SHORTCUTS:
            raise ValueError(f'unknown shortcut {self.shortcut!r}; expected one of {SHORTCUTS}')
        super().__post_init__()

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        norm = bind_norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        x = jnp.asarray(x, self.dtype)
        feats = {}
        conv = functools.partial(self.conv, dtype=self.dtype)
        x = feats['stem'] = conv_norm_act(
            x, conv, norm, act, self.width, 3, name='stem_conv', norm_name='stem_bn'
        )
        for stage in range(3):
            for i in range(self.blocks_per_stage):
                strides = 2 if stage > 0 and i == 0 else 1
                unit = functools.partial(
                    self.block,
                    features=self.width * 2**stage,
                    strides=strides,
                    shortcut=None if self.plain else self.shortcut,
                    conv=self.conv,
                    norm=norm,
                    activation=act,
                    zero_init_last=self.zero_init_residual,
                    dtype=self.dtype,
                    name=f'stage{stage + 1}_block{i + 1}',
                )
                x = remat_call(self.remat, self, lambda h: unit()(h), x)
            feats[f'stage{stage + 1}'] = x
        logits = classifier_head(x, self.num_classes, self.dropout_rate, train, self.dtype, 'head')
        return (logits, feats) if return_features else logits


# Named variants (Table 6). Option A shortcuts, as the paper uses on CIFAR-10.
ResNet20 = functools.partial(CifarResNet, depth=20, shortcut='A')
ResNet32 = functools.partial(CifarResNet, depth=32, shortcut='A')
ResNet44 = functools.partial(CifarResNet, depth=44, shortcut='A')
ResNet56 = functools.partial(CifarResNet, depth=56, shortcut='A')
ResNet110 = functools.partial(CifarResNet, depth=110, shortcut='A')
ResNet1202 = functools.partial(CifarResNet, depth=1202, shortcut='A')

# Plain counterparts (Fig. 6, left).
PlainCifar = functools.partial(CifarResNet, plain=True)
Plain20 = functools.partial(PlainCifar, depth=20)
Plain32 = functools.partial(PlainCifar, depth=32)
Plain44 = functools.partial(PlainCifar, depth=44)
Plain56 = functools.partial(PlainCifar, depth=56)
Plain110 = functools.partial(PlainCifar, depth=110)

# He et al. 2015, Sec. 4.2, Table 6.
REGISTRY_ENTRIES = {
    'resnet_cifar': CifarResNet,
    'resnet20': ResNet20,
    'resnet32': ResNet32,
    'resnet44': ResNet44,
    'resnet56': ResNet56,
    'resnet110': ResNet110,
    'resnet1202': ResNet1202,
    'plain_cifar': PlainCifar,
    'plain20': Plain20,
    'plain32': Plain32,
    'plain44': Plain44,
    'plain56': Plain56,
    'plain110': Plain110,
}
