"""ImageNet ResNets in torchvision's layout, with the ResNeXt, Wide ResNet and SE variants.

- He, Zhang, Ren, Sun 2015, "Deep Residual Learning for Image Recognition", Table 1:
  ResNet-18/34 (basic blocks) and 50/101/152 (bottlenecks): 7x7/2 conv 64 -> 3x3/2 max pool ->
  conv2_x..conv5_x (torchvision ``layer1..layer4``; 64/128/256/512 planes, stride 2 at the first
  block of layer2..4) -> global average pool -> 1000-d fc.
- Xie et al. 2017, "Aggregated Residual Transformations" (ResNeXt), Table 1: ``groups`` =
  cardinality C, ``width_per_group`` = bottleneck width d (32x4d: groups=32, width_per_group=4).
- Zagoruyko & Komodakis 2016, "Wide Residual Networks": torchvision's wide_resnet50_2/101_2 are
  bottleneck ResNets with twice the 3x3 width (width_per_group=128), not the paper's CIFAR WRNs
  (those are ``research.models.wide_resnet``).
- Hu, Shen, Sun 2018, "Squeeze-and-Excitation Networks", Table 2: ``se_reduction`` r adds an SE
  module (2 C^2/r + C/r + C params, C = block output channels) to every block, before the add.

Where torchvision and the paper differ (default = torchvision, so its weights convert):
- stride of the downsampling bottleneck: torchvision ("ResNet v1.5") strides the 3x3 conv; the
  paper / original Caffe model ("v1") the first 1x1: ``stride_on_1x1=True`` (``resnet50_v1``...).
  Same parameter count; v1 has fewer MACs (ResNet-50: 3.858 G vs 4.089 G).
- projection shortcuts: option B (1x1 conv + BN where the shape changes), as the paper's
  ImageNet models.

Dense prediction knobs (DeepLab, Chen et al. 2017): ``replace_stride_with_dilation`` (3 bools for
layer2..4, torchvision semantics: that stage keeps its input resolution, its stride becomes a
dilation that multiplies into the following stages; the stage's first block still uses the
previous dilation) and ``multi_grid`` (DeepLabv3 Sec. 3.2: block i of layer4 uses dilation
``rate * multi_grid[i]``, rate = layer4's dilation, e.g. (1, 2, 4)).

Parameter counts (1000 classes; exact torchvision values, checked in tests/test_zoo_resnet.py):
resnet18 11,689,512; resnet34 21,797,672; resnet50 25,557,032; resnet101 44,549,160; resnet152
60,192,808; resnext50_32x4d 25,028,904; resnext101_32x8d 88,791,336; wide_resnet50_2 68,883,240.

``__call__(x, train=False, return_features=False)``; features (NHWC): 'stage1' = stem
conv-bn-relu (output stride 2), 'stage2' = layer1 (4, after the max pool), 'stage3'..'stage5' =
layer2..4 (8, 16, 32). A dilated stage keeps the stride of the stage before it:
``replace_stride_with_dilation=(False, True, True)`` (DeepLab's output stride 8) gives strides
2, 4, 8, 8, 8; ``(False, False, True)`` (output stride 16) gives 2, 4, 8, 16, 16. Dilation
works with basic blocks too (torchvision refuses it there).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.blocks import BasicBlock, Bottleneck
from research.layers.common import BatchNorm, Conv, ModuleDef, bind_norm, resolve_activation
from research.layers.heads import classifier_head
from research.layers.remat import remat_call
from research.layers.stems import imagenet_stem

_BLOCKS = {'basic': BasicBlock, 'bottleneck': Bottleneck}


def _resolve_block(block):
    if isinstance(block, str):
        try:
            return _BLOCKS[block]
        except KeyError:
            raise ValueError(f"unknown block {block!r}; expected 'basic', 'bottleneck' or a module") from None
    return block


def _is_bottleneck(block) -> bool:
    f = block
    while isinstance(f, functools.partial):
        f = f.func
    return isinstance(f, type) and issubclass(f, Bottleneck)


class ResNet(nn.Module):
    """ResNet / ResNeXt / Wide ResNet / SE-ResNet for ImageNet-sized inputs (torchvision layout).

    Fields:
      layers: blocks per stage (layer1..layer4), e.g. (3, 4, 6, 3) for ResNet-50.
      block: 'basic', 'bottleneck' or a block module (called with features, strides, shortcut,
        se_reduction, zero_init_last, conv, norm (mode-bound), activation, dtype, dilation and,
        for bottlenecks, groups, base_width, stride_on_1x1).
      groups, width_per_group: ResNeXt cardinality / bottleneck width (1, 64 = plain ResNet).
      stride_on_1x1: the paper's v1 bottleneck (stride on the first 1x1), default torchvision v1.5.
      se_reduction: SE ratio r (16 in the SE paper), None = no SE.
      replace_stride_with_dilation, multi_grid: see the module docstring.
      zero_init_residual: last BN scale of every block starts at 0 (torchvision's option).
      stem_width: filters of the 7x7 stem (64); width: planes of layer i are ``width * 2**i`` (64;
        smaller for CPU-sized segmentation backbones).
      conv, norm, activation, dtype, num_classes, dropout_rate (before the fc; 0 in the paper).
      include_top: False drops the global pool and fc; ``__call__`` then returns the features dict
        (a backbone: the segmentation models use it, with torchvision's module names).
      remat: rematerialise each residual block (``nn.remat``: the backward pass recomputes the
        block's activations from its input; same parameters and values, less activation memory
        for about one more forward pass; ``research.layers.remat``).
    """

    layers: Sequence[int] = (2, 2, 2, 2)
    block: str | ModuleDef = 'basic'
    num_classes: int = 1000
    groups: int = 1
    width_per_group: int = 64
    stride_on_1x1: bool = False
    se_reduction: int | None = None
    replace_stride_with_dilation: Sequence[bool] = (False, False, False)
    multi_grid: Sequence[int] | None = None
    zero_init_residual: bool = False
    stem_width: int = 64
    width: int = 64
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    dropout_rate: float = 0.0
    include_top: bool = True
    remat: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        if len(self.layers) != 4:
            raise ValueError(f'layers must give 4 stage depths, got {self.layers!r}')
        if len(self.replace_stride_with_dilation) != 3:
            raise ValueError(
                f'replace_stride_with_dilation must be 3 bools (layer2..4), got {self.replace_stride_with_dilation!r}'
            )
        if self.multi_grid is not None and len(self.multi_grid) != self.layers[3]:
            raise ValueError(
                f'multi_grid needs one multiplier per block of layer4 ({self.layers[3]}), got {self.multi_grid!r}'
            )
        _resolve_block(self.block)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        norm = bind_norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        block = _resolve_block(self.block)
        bottleneck = _is_bottleneck(block)
        conv = functools.partial(self.conv, dtype=self.dtype)
        x = jnp.asarray(x, self.dtype)
        feats = {}
        feats['stage1'], x = imagenet_stem(x, conv, norm, act, self.stem_width)
        dilation = 1
        for stage, n in enumerate(self.layers):
            strides = 1 if stage == 0 else 2
            previous = dilation
            if stage > 0 and self.replace_stride_with_dilation[stage - 1]:
                dilation *= strides
                strides = 1
            for i in range(n):
                d = previous if i == 0 else dilation
                if stage == 3 and self.multi_grid is not None:
                    d = dilation * self.multi_grid[i]
                kwargs = {}
                if bottleneck:
                    kwargs = dict(
                        groups=self.groups, base_width=self.width_per_group, stride_on_1x1=self.stride_on_1x1
                    )
                unit = functools.partial(
                    block,
                    features=self.width * 2**stage,
                    strides=strides if i == 0 else 1,
                    dilation=d,
                    shortcut='B',
                    se_reduction=self.se_reduction,
                    zero_init_last=self.zero_init_residual,
                    conv=self.conv,
                    norm=norm,
                    activation=act,
                    dtype=self.dtype,
                    name=f'layer{stage + 1}_block{i}',
                    **kwargs,
                )
                x = remat_call(self.remat, self, lambda h: unit()(h), x)
            feats[f'stage{stage + 2}'] = x
        if not self.include_top:
            return feats
        logits = classifier_head(x, self.num_classes, self.dropout_rate, train, self.dtype, 'fc')
        return (logits, feats) if return_features else logits


# He et al. 2015, Table 1 (torchvision v1.5 bottlenecks).
ResNet18 = functools.partial(ResNet, layers=(2, 2, 2, 2), block='basic')
ResNet34 = functools.partial(ResNet, layers=(3, 4, 6, 3), block='basic')
ResNet50 = functools.partial(ResNet, layers=(3, 4, 6, 3), block='bottleneck')
ResNet101 = functools.partial(ResNet, layers=(3, 4, 23, 3), block='bottleneck')
ResNet152 = functools.partial(ResNet, layers=(3, 8, 36, 3), block='bottleneck')
# The paper's v1: stride on the first 1x1 of the downsampling bottleneck.
ResNet50V1 = functools.partial(ResNet50, stride_on_1x1=True)
ResNet101V1 = functools.partial(ResNet101, stride_on_1x1=True)
ResNet152V1 = functools.partial(ResNet152, stride_on_1x1=True)
# Xie et al. 2017, Table 1 (32x4d) and torchvision's larger ones.
ResNeXt50_32x4d = functools.partial(ResNet50, groups=32, width_per_group=4)
ResNeXt101_32x4d = functools.partial(ResNet101, groups=32, width_per_group=4)
ResNeXt101_32x8d = functools.partial(ResNet101, groups=32, width_per_group=8)
ResNeXt101_64x4d = functools.partial(ResNet101, groups=64, width_per_group=4)
# torchvision's Wide ResNet-50-2 / 101-2 (3x3 width doubled).
WideResNet50_2 = functools.partial(ResNet50, width_per_group=128)
WideResNet101_2 = functools.partial(ResNet101, width_per_group=128)
# Hu et al. 2018, Table 2 (r = 16).
SEResNet18 = functools.partial(ResNet18, se_reduction=16)
SEResNet34 = functools.partial(ResNet34, se_reduction=16)
SEResNet50 = functools.partial(ResNet50, se_reduction=16)
SEResNet101 = functools.partial(ResNet101, se_reduction=16)
SEResNet152 = functools.partial(ResNet152, se_reduction=16)
SEResNeXt50_32x4d = functools.partial(ResNeXt50_32x4d, se_reduction=16)
SEResNeXt101_32x4d = functools.partial(ResNeXt101_32x4d, se_reduction=16)

REGISTRY_ENTRIES = {
    'resnet': ResNet,
    'resnet18': ResNet18,
    'resnet34': ResNet34,
    'resnet50': ResNet50,
    'resnet101': ResNet101,
    'resnet152': ResNet152,
    'resnet50_v1': ResNet50V1,
    'resnet101_v1': ResNet101V1,
    'resnet152_v1': ResNet152V1,
    'resnext50_32x4d': ResNeXt50_32x4d,
    'resnext101_32x4d': ResNeXt101_32x4d,
    'resnext101_32x8d': ResNeXt101_32x8d,
    'resnext101_64x4d': ResNeXt101_64x4d,
    'wide_resnet50_2': WideResNet50_2,
    'wide_resnet101_2': WideResNet101_2,
    'se_resnet18': SEResNet18,
    'se_resnet34': SEResNet34,
    'se_resnet50': SEResNet50,
    'se_resnet101': SEResNet101,
    'se_resnet152': SEResNet152,
    'se_resnext50_32x4d': SEResNeXt50_32x4d,
    'se_resnext101_32x4d': SEResNeXt101_32x4d,
}
