"""DenseNets: Huang, Liu, van der Maaten, Weinberger 2017, "Densely Connected Convolutional
Networks" (CVPR), Table 1 (ImageNet DenseNet-BC 121/169/201/264, plus 161) and Sec. 4.2 / Table 2
(CIFAR).

ImageNet (``DenseNet``, torchvision layout): 7x7/2 conv (2k channels) -> BN -> ReLU -> 3x3/2 max
pool -> four dense blocks of BN-ReLU-1x1 (4k)-BN-ReLU-3x3 (k) layers joined by transitions
(BN-ReLU-1x1 conv to half the channels -> 2x2/2 average pool) -> BN -> ReLU -> global average pool
-> linear. Parameter counts (1000 classes): 7,978,856 / 28,681,000 / 14,149,480 / 20,013,928 for
121/161/169/201 (torchvision's exactly); GMACs at 224 px 2.834 / 7.728 / 3.360 / 4.291.
Table 1 has k=32 and lists 121/169/201/264; DenseNet-161 (k=48, 96 initial features) is from
the authors' released models, as in torchvision. DenseNet-264 (6, 12, 64, 48) is registered too.

CIFAR (``CifarDenseNet``, Sec. 4.2): 3x3 conv (16 channels, 2k for DenseNet-BC) -> three dense
blocks of (L - 4) / 3 layers ((L - 4) / 6 bottleneck layers for -B/-BC) on 32/16/8 maps, joined by
transitions (compression theta = 0.5 for -C/-BC) -> BN -> ReLU -> global average pool -> linear.
Parameter counts (10 classes): DenseNet (L=40, k=12) 1,019,722 (the paper's 1.0M); DenseNet-BC
(L=100, k=12) 769,162 (0.8M), (L=250, k=24) 15,324,406 (15.3M), (L=190, k=40) 25,624,430 (25.6M).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.blocks import DenseBlock, DenseLayer, Transition
from research.layers.common import BatchNorm, Conv, ModuleDef, bind_norm, resolve_activation
from research.layers.heads import classifier_head
from research.layers.remat import remat_call
from research.layers.stems import imagenet_stem


class RematDenseBlock(DenseBlock):
    """``research.layers.blocks.DenseBlock`` with each dense layer under ``nn.remat`` (the models'
    ``remat=True``): same submodules (layer1, layer2, ...) and values. The backward pass recomputes a
    layer's BN-ReLU-conv activations from its input (the concatenation so far, which is kept), as
    the memory-efficient DenseNet (Pleiss et al. 2017) recomputes its concatenation and BN."""

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        for i in range(self.num_layers):
            layer = functools.partial(
                DenseLayer,
                growth_rate=self.growth_rate,
                bottleneck=self.bottleneck,
                bn_size=self.bn_size,
                dropout_rate=self.dropout_rate,
                conv=self.conv,
                norm=self.norm,
                activation=self.activation,
                dtype=self.dtype,
                name=f'layer{i + 1}',
            )
            x = remat_call(True, self, lambda h: layer()(h, train), x)
        return x


class DenseNet(nn.Module):
    """ImageNet DenseNet(-BC), Huang et al. 2017, Table 1; torchvision's ``DenseNet`` layout.

    Args (fields):
      growth_rate: k (32; 48 for DenseNet-161).
      block_config: layers per dense block ((6, 12, 24, 16) for DenseNet-121).
      num_init_features: channels of the 7x7 stem conv (2k in the paper).
      bn_size: bottleneck width factor (the 1x1 conv makes bn_size * k channels; 4 in the paper).
      bottleneck: the "B" of DenseNet-BC (False: a single BN-ReLU-3x3 conv per layer).
      compression: theta of the transitions (0.5: the "C" of DenseNet-BC; 1 = none).
      dropout_rate: dropout after each dense layer's 3x3 conv (torchvision's ``drop_rate``; 0).
      conv, norm, activation, dtype: ablation knobs (see ``research.layers.common``).
      remat: each dense layer and transition under ``nn.remat`` (``RematDenseBlock``; same
        parameters and values, less activation memory for about one more forward pass).

    Submodule names follow torchvision with ``features.`` dropped and ``denselayerN`` -> ``layerN``:
    conv0, norm0, denseblock1..4 (layer1..), transition1..3 (norm, conv), norm5, classifier.
    ``return_features=True`` also returns {'stage1': after conv0/norm0/relu (stride 2), 'stage2':
    pool0 + denseblock1 (4), 'stage3'/'stage4': transition + dense block (8, 16), 'stage5':
    transition3 + denseblock4 + norm5 + relu (32)}.
    """

    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    bottleneck: bool = True
    compression: float = 0.5
    num_classes: int = 1000
    dropout_rate: float = 0.0
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        norm = bind_norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        x = jnp.asarray(x, self.dtype)
        feats = {}
        conv = functools.partial(self.conv, dtype=self.dtype)
        feats['stage1'], x = imagenet_stem(
            x, conv, norm, act, self.num_init_features, name='conv0', norm_name='norm0'
        )
        for i, num_layers in enumerate(self.block_config):
            if i > 0:
                unit = functools.partial(
                    Transition,
                    compression=self.compression,
                    conv=self.conv,
                    norm=norm,
                    activation=act,
                    dtype=self.dtype,
                    name=f'transition{i}',
                )
                x = remat_call(self.remat, self, lambda h: unit()(h), x)
            x = (RematDenseBlock if self.remat else DenseBlock)(
                num_layers=num_layers,
                growth_rate=self.growth_rate,
                bottleneck=self.bottleneck,
                bn_size=self.bn_size,
                dropout_rate=self.dropout_rate,
                conv=self.conv,
                norm=norm,
                activation=act,
                dtype=self.dtype,
                name=f'denseblock{i + 1}',
            )(x, train)
            if i + 1 < len(self.block_config):
                feats[f'stage{i + 2}'] = x
        if norm is not None:
            x = norm(name='norm5')(x)
        x = feats[f'stage{len(self.block_config) + 1}'] = act(x)
        logits = classifier_head(x, self.num_classes, dtype=self.dtype, name='classifier')
        return (logits, feats) if return_features else logits


# Table 1 (DenseNet-BC, k=32) and the authors' / torchvision's DenseNet-161 (k=48, 96 initial features).
DenseNet121 = functools.partial(DenseNet, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64)
DenseNet161 = functools.partial(DenseNet, growth_rate=48, block_config=(6, 12, 36, 24), num_init_features=96)
DenseNet169 = functools.partial(DenseNet, growth_rate=32, block_config=(6, 12, 32, 32), num_init_features=64)
DenseNet201 = functools.partial(DenseNet, growth_rate=32, block_config=(6, 12, 48, 32), num_init_features=64)
DenseNet264 = functools.partial(DenseNet, growth_rate=32, block_config=(6, 12, 64, 48), num_init_features=64)


class CifarDenseNet(nn.Module):
    """CIFAR/SVHN DenseNet, Huang et al. 2017, Sec. 4.2 and Table 2 (the authors' Lua layout).

    Args (fields):
      depth: L, counting the first conv, the 3x3 (and 1x1) convs of the dense layers, the two
        transitions and the classifier: (L - 4) / 3 layers per block, (L - 4) / 6 with
        ``bottleneck``.
      growth_rate: k (12, 24 or 40 in Table 2).
      bottleneck: the "B" (BN-ReLU-1x1 conv to 4k before each 3x3 conv).
      compression: theta of the transitions (0.5 for DenseNet-C/BC, 1.0 for the plain DenseNet).
      num_init_features: channels of the first conv (default 2k for -BC, 16 otherwise, as Sec. 3).
      dropout_rate: the paper's 0.2 without data augmentation (0 with it): after each dense
        layer's convs and after each transition. The authors' code drops before the transition's
        average pool; here after it (the same in expectation).
      conv, norm, activation, dtype: ablation knobs.
      remat: each dense layer and transition under ``nn.remat`` (as ``DenseNet``).

    Submodule names: conv0, denseblock1..3 (layer1..: norm1, conv1, norm2, conv2), transition1..2
    (norm, conv), norm_final, classifier. ``return_features=True`` also returns {'stem', 'stage1',
    'stage2', 'stage3'} (32, 32, 16, 8 spatial on 32x32 inputs; 'stage3' after the final BN-ReLU).
    """

    depth: int = 100
    growth_rate: int = 12
    bottleneck: bool = True
    compression: float = 0.5
    num_init_features: int | None = None
    bn_size: int = 4
    num_classes: int = 10
    dropout_rate: float = 0.0
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    remat: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        per = 6 if self.bottleneck else 3
        if not isinstance(self.depth, int) or self.depth < 4 + per or (self.depth - 4) % per:
            raise ValueError(
                f'CifarDenseNet depth must be {per}n + 4 with n >= 1 '
                f'(bottleneck={self.bottleneck}); got depth={self.depth!r}'
            )
        if not 0 < self.compression <= 1:
            raise ValueError(f'compression must be in (0, 1]; got {self.compression!r}')
        super().__post_init__()

    @property
    def layers_per_block(self) -> int:
        return (self.depth - 4) // (6 if self.bottleneck else 3)

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        norm = bind_norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        x = jnp.asarray(x, self.dtype)
        feats = {}
        init = self.num_init_features
        if init is None:
            init = 2 * self.growth_rate if self.bottleneck and self.compression < 1 else 16
        x = feats['stem'] = self.conv(
            init, (3, 3), padding=((1, 1), (1, 1)), use_bias=norm is None, dtype=self.dtype, name='conv0'
        )(x)
        for i in range(3):
            if i > 0:
                unit = functools.partial(
                    Transition,
                    compression=self.compression,
                    conv=self.conv,
                    norm=norm,
                    activation=act,
                    dtype=self.dtype,
                    name=f'transition{i}',
                )
                x = remat_call(self.remat, self, lambda h: unit()(h), x)
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = (RematDenseBlock if self.remat else DenseBlock)(
                num_layers=self.layers_per_block,
                growth_rate=self.growth_rate,
                bottleneck=self.bottleneck,
                bn_size=self.bn_size,
                dropout_rate=self.dropout_rate,
                conv=self.conv,
                norm=norm,
                activation=act,
                dtype=self.dtype,
                name=f'denseblock{i + 1}',
            )(x, train)
            if i < 2:
                feats[f'stage{i + 1}'] = x
        if norm is not None:
            x = norm(name='norm_final')(x)
        x = feats['stage3'] = act(x)
        logits = classifier_head(x, self.num_classes, dtype=self.dtype, name='classifier')
        return (logits, feats) if return_features else logits


# Table 2 (CIFAR): the plain DenseNet (L=40, k=12; no bottleneck, no compression) and DenseNet-BC.
DenseNet40_12 = functools.partial(CifarDenseNet, depth=40, growth_rate=12, bottleneck=False, compression=1.0)
DenseNetBC100_12 = functools.partial(CifarDenseNet, depth=100, growth_rate=12)
DenseNetBC250_24 = functools.partial(CifarDenseNet, depth=250, growth_rate=24)
DenseNetBC190_40 = functools.partial(CifarDenseNet, depth=190, growth_rate=40)

REGISTRY_ENTRIES = {
    'densenet': DenseNet,
    'densenet121': DenseNet121,
    'densenet161': DenseNet161,
    'densenet169': DenseNet169,
    'densenet201': DenseNet201,
    'densenet264': DenseNet264,
    'densenet_cifar': CifarDenseNet,
    'densenet_40_12': DenseNet40_12,
    'densenet_bc_100_12': DenseNetBC100_12,
    'densenet_bc_250_24': DenseNetBC250_24,
    'densenet_bc_190_40': DenseNetBC190_40,
}
