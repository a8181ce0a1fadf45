"""DeepLabv3, DeepLabv3+ and LR-ASPP, plus the dilated backbones and heads the segmentation models share.

- Chen, Papandreou, Schroff, Adam 2017, "Rethinking Atrous Convolution for Semantic Image
  Segmentation" (DeepLabv3), Sec. 3.3 and Fig. 5: a ResNet whose last stages trade stride for
  dilation (``output_stride`` 8 / 16 / 32: Table 1), ``multi_grid`` rates in the last stage (Sec. 3.2,
  Table 3), then ASPP (a 1x1 conv, three 3x3 atrous convs, image pooling; ``rates`` (6, 12, 18) at
  output stride 16, doubled at 8), then a 1x1 classifier and bilinear upsampling to the input.
  torchvision's ``deeplabv3_resnet50`` (the default here) uses output stride 8, rates (12, 24, 36),
  ASPP dropout 0.5, an extra 3x3 conv-BN-ReLU after ASPP and an auxiliary ``FCNHead`` on layer3.
- Chen, Zhu, Papandreou, Schroff, Adam 2018, "Encoder-Decoder with Atrous Separable Convolution"
  (DeepLabv3+), Fig. 2 / Sec. 3.1: the ASPP output (output stride 16) is upsampled x4 and
  concatenated with low-level features (ResNet ``stage2`` = conv2_x, stride 4) reduced to 48 channels
  by a 1x1 conv (Table 1), then two 3x3 convs (256) refine it (Table 2) before the classifier.
- torchvision's ``deeplabv3_mobilenet_v3_large``: the DeepLabv3 head (and aux FCNHead) on the dilated
  MobileNetV3-Large below (``DeepLabV3MobileNet``).
- Howard et al. 2019, "Searching for MobileNetV3", Sec. 6.1.1 and Fig. 10: LR-ASPP on a dilated
  MobileNetV3-Large (last stage rate 2, output stride 16): 1x1 conv-BN-ReLU (128) on the high
  features gated by a global-pool 1x1 conv + sigmoid, upsampled to the stride-8 features and summed
  with a 1x1 classifier of those (torchvision ``lraspp_mobilenet_v3_large`` layout).

All models: ``__call__(x, train=False, return_aux=False)`` on NHWC images returns float32 logits
(N, H, W, num_classes) at the input resolution; with ``aux`` (an auxiliary head) and
``return_aux=True`` it returns ``(logits, {'aux': aux_logits})``. The auxiliary head's parameters
exist whenever ``aux=True`` (so torchvision's ``aux_loss=True`` weights convert), it is only
evaluated when asked for.

Parameter counts (21 classes; tested in tests/test_segmentation_models.py): deeplabv3_resnet50
42,004,074 with the aux head (= torchvision, aux_loss=True; 39,638,869 without), deeplabv3_resnet101
60,996,202, deeplabv3plus_resnet50 40,352,181, deeplabv3plus_resnet101 59,344,309,
lraspp_mobilenet_v3_large 3,221,538 (= torchvision), deeplabv3_mobilenet_v3_large 11,029,328 with the aux
head (= torchvision; 11,025,477 without).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.blocks import ASPP, conv_norm_act
from research.layers.common import BatchNorm, Conv, ModuleDef, bind_norm
from research.layers.resample import upsample_bilinear
from research.models.mobilenet import MobileNetV3, v3_layers
from research.models.resnet import ResNet


def dilation_for_output_stride(output_stride: int) -> tuple[bool, bool, bool]:
    """torchvision's ``replace_stride_with_dilation`` for a ResNet of output stride 8, 16 or 32."""
    table = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}
    if output_stride not in table:
        raise ValueError(f'output_stride must be 8, 16 or 32; got {output_stride!r}')
    return table[output_stride]


def ResNetBackbone(  # noqa: N802 (used like the module class it returns)
    layers: Sequence[int] = (3, 4, 6, 3),
    *,
    output_stride: int = 8,
    multi_grid: Sequence[int] | None = None,
    block: str | ModuleDef = 'bottleneck',
    width: int = 64,
    stem_width: int = 64,
    conv: ModuleDef = Conv,
    norm: str | ModuleDef | None = BatchNorm,
    dtype: Any = jnp.float32,
    remat: bool = False,
    name: str | None = None,
) -> ResNet:
    """``research.models.resnet.ResNet`` without pool and fc (``include_top=False``; same module names:
    conv1, bn1, layer{s}_block{i}), returning features 'stage1'..'stage5' (strides 2, 4, 8, 16, 32
    before dilation). ``output_stride`` 8 / 16 / 32 sets torchvision's ``replace_stride_with_dilation``;
    ``multi_grid`` (one multiplier per layer4 block, DeepLabv3 Sec. 3.2) multiplies layer4's dilation
    per block. ``block`` ('basic' / 'bottleneck'), ``width`` and ``stem_width``: ResNet's knobs (small
    backbones for CPU runs: ``block='basic', layers=(2, 2, 2, 2), width=16``). ``remat``: each residual
    block under ``nn.remat`` (``ResNet.remat``)."""
    return ResNet(
        layers=tuple(layers),
        block=block,
        width=width,
        stem_width=stem_width,
        replace_stride_with_dilation=dilation_for_output_stride(output_stride),
        multi_grid=multi_grid,
        include_top=False,
        conv=conv,
        norm=norm,
        dtype=dtype,
        remat=remat,
        name=name,
    )


class FCNHead(nn.Module):
    """torchvision ``FCNHead``: 3x3 conv (C_in / 4, no bias) -> BN -> ReLU -> dropout 0.1 -> 1x1 conv."""

    num_classes: int = 21
    dropout_rate: float = 0.1
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = bind_norm(self.norm, train, self.dtype)
        conv = functools.partial(self.conv, dtype=self.dtype)
        x = conv_norm_act(x, conv, norm, nn.relu, x.shape[-1] // 4, 3, name='conv', norm_name='bn')
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return conv(self.num_classes, (1, 1), name='cls')(x)


class DeepLabHead(nn.Module):
    """torchvision ``DeepLabHead``: ASPP -> 3x3 conv 256 (no bias) -> BN -> ReLU -> 1x1 classifier."""

    num_classes: int = 21
    rates: Sequence[int] = (12, 24, 36)
    features: int = 256
    aspp_dropout: float = 0.5
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = bind_norm(self.norm, train, self.dtype)
        conv = functools.partial(self.conv, dtype=self.dtype)
        x = ASPP(
            self.features,
            self.rates,
            self.aspp_dropout,
            conv=self.conv,
            norm=self.norm,
            dtype=self.dtype,
            name='aspp',
        )(x, train=train)
        x = conv_norm_act(x, conv, norm, nn.relu, self.features, 3, name='conv', norm_name='bn')
        return conv(self.num_classes, (1, 1), name='cls')(x)


def backbone_of(model) -> ResNet:
    """The dilated ResNet backbone of a segmentation model with the fields layers, output_stride,
    block, width, stem_width (and optionally multi_grid and remat), conv, norm, dtype."""
    return ResNetBackbone(
        model.layers,
        output_stride=model.output_stride,
        multi_grid=getattr(model, 'multi_grid', None),
        block=model.block,
        width=model.width,
        stem_width=model.stem_width,
        conv=model.conv,
        norm=model.norm,
        dtype=model.dtype,
        remat=getattr(model, 'remat', False),
        name='backbone',
    )


def _resize(x, size, align_corners=False):
    return jnp.asarray(upsample_bilinear(x, size=size, align_corners=align_corners), jnp.float32)


def _default_rates(output_stride: int) -> tuple[int, ...]:
    # DeepLabv3 Sec. 3.3: (6, 12, 18) at output stride 16, doubled at 8 (halved at 32).
    return {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}[output_stride]


class DeepLabV3(nn.Module):
    """DeepLabv3 (Chen et al. 2017, Fig. 5 / Sec. 3.3) in torchvision's layout; see the module docstring.

    Fields: num_classes; layers (ResNet depth: (3, 4, 6, 3) = 50, (3, 4, 23, 3) = 101); output_stride
    (8 as torchvision, 16 as the paper's training default, 32 = no atrous conv: Table 1); multi_grid
    (e.g. (1, 2, 4), Table 3; None = torchvision); rates (None = the output stride's default);
    aspp_dropout (0.5); head_features (ASPP and head width, 256); aux (auxiliary FCNHead on layer3, as
    torchvision's ``aux_loss=True``); block / width / stem_width (the backbone's, see ``ResNetBackbone``);
    remat (each backbone block under ``nn.remat``: same parameters and values, less activation memory).
    """

    num_classes: int = 21
    layers: Sequence[int] = (3, 4, 6, 3)
    output_stride: int = 8
    block: str | ModuleDef = 'bottleneck'
    width: int = 64
    stem_width: int = 64
    multi_grid: Sequence[int] | None = None
    rates: Sequence[int] | None = None
    aspp_dropout: float = 0.5
    head_features: int = 256
    aux: bool = True
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_aux: bool = False):
        size = x.shape[1:3]
        feats = backbone_of(self)(x, train)
        rates = tuple(self.rates) if self.rates is not None else _default_rates(self.output_stride)
        y = DeepLabHead(
            self.num_classes,
            rates,
            features=self.head_features,
            aspp_dropout=self.aspp_dropout,
            conv=self.conv,
            norm=self.norm,
            dtype=self.dtype,
            name='classifier',
        )(feats['stage5'], train)
        logits = _resize(y, size)
        return _with_aux(self, feats['stage4'], size, train, return_aux, logits)


def _with_aux(model, feats, size, train, return_aux, logits):
    if model.aux and (return_aux or model.is_initializing()):
        aux = FCNHead(
            model.num_classes, conv=model.conv, norm=model.norm, dtype=model.dtype, name='aux_classifier'
        )(feats, train)
        if return_aux:
            return logits, {'aux': _resize(aux, size)}
    elif return_aux:
        raise ValueError(f'{type(model).__name__} has no auxiliary head (aux=False)')
    return logits


def _v3_stages(arch: str, width_mult: float) -> list[int]:
    """torchvision's MobileNetV3 segmentation feature indices: 0, the strided blocks ('_is_cn', C1..C4),
    the last conv (``len(rows) + 1``)."""
    rows, _ = v3_layers(arch, width_mult, dilated=True)
    return [0] + [i for i, r in enumerate(rows, start=1) if r[6] == 2] + [len(rows) + 1]


class DeepLabV3MobileNet(nn.Module):
    """torchvision's ``deeplabv3_mobilenet_v3_large``: DeepLabv3's head (``DeepLabHead``: ASPP with rates
    (12, 24, 36), 3x3 conv 256, 1x1 classifier) on a dilated MobileNetV3-Large (last stage rate 2,
    output stride 16: its last conv, 960 channels), an auxiliary ``FCNHead`` on the stride-8 features
    (40 channels -> 10; ``aux``, torchvision's ``aux_loss``), bilinear upsampling to the input.
    11,029,328 parameters with the aux head at 21 classes (= torchvision; 11,025,477 without).
    ``remat``: each backbone block under ``nn.remat`` (``MobileNetV3.remat``)."""

    num_classes: int = 21
    arch: str = 'large'
    width_mult: float = 1.0
    rates: Sequence[int] = (12, 24, 36)
    aspp_dropout: float = 0.5
    head_features: int = 256
    aux: bool = True
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_aux: bool = False):
        size = x.shape[1:3]
        feats = MobileNetV3(
            arch=self.arch,
            width_mult=self.width_mult,
            dilated=True,
            include_top=False,
            conv=self.conv,
            norm=self.norm,
            dtype=self.dtype,
            remat=self.remat,
            name='backbone',
        )(x, train)
        stages = _v3_stages(self.arch, self.width_mult)
        y = DeepLabHead(
            self.num_classes,
            tuple(self.rates),
            features=self.head_features,
            aspp_dropout=self.aspp_dropout,
            conv=self.conv,
            norm=self.norm,
            dtype=self.dtype,
            name='classifier',
        )(feats[f'features{stages[-1]}'], train)
        logits = _resize(y, size)
        return _with_aux(self, feats[f'features{stages[-4]}'], size, train, return_aux, logits)


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ (Chen et al. 2018, Fig. 2): DeepLabv3's encoder (ResNet, ASPP, output stride 16 by
    default) and a decoder: ASPP output (256) upsampled to the stride-4 low-level features (ResNet
    stage2), those reduced by a 1x1 conv to ``low_level_features`` (48, Table 1), concatenated, two 3x3
    conv-BN-ReLU (256, Table 2), a 1x1 classifier and bilinear upsampling x4. ResNet instead of the
    paper's modified Xception (its ResNet-101 rows of Table 3); plain (not separable) convs. ``remat``:
    each backbone block under ``nn.remat`` (as ``DeepLabV3``)."""

    num_classes: int = 21
    layers: Sequence[int] = (3, 4, 6, 3)
    output_stride: int = 16
    block: str | ModuleDef = 'bottleneck'
    width: int = 64
    stem_width: int = 64
    multi_grid: Sequence[int] | None = None
    rates: Sequence[int] | None = None
    head_features: int = 256
    low_level_features: int = 48
    decoder_features: int = 256
    aspp_dropout: float = 0.1
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_aux: bool = False):
        if return_aux:
            raise ValueError('DeepLabV3Plus has no auxiliary head')
        size = x.shape[1:3]
        norm = bind_norm(self.norm, train, self.dtype)
        conv = functools.partial(self.conv, dtype=self.dtype)
        feats = backbone_of(self)(x, train)
        rates = tuple(self.rates) if self.rates is not None else _default_rates(self.output_stride)
        y = ASPP(
            self.head_features,
            rates,
            self.aspp_dropout,
            conv=self.conv,
            norm=self.norm,
            dtype=self.dtype,
            name='aspp',
        )(feats['stage5'], train=train)
        low = feats['stage2']
        low = conv_norm_act(
            low, conv, norm, nn.relu, self.low_level_features, 1, name='low_conv', norm_name='low_bn'
        )
        y = upsample_bilinear(y, size=low.shape[1:3])
        y = jnp.concatenate([y, low], axis=-1)
        for i in (1, 2):
            y = conv_norm_act(
                y, conv, norm, nn.relu, self.decoder_features, 3, name=f'dec{i}_conv', norm_name=f'dec{i}_bn'
            )
        y = conv(self.num_classes, (1, 1), name='cls')(y)
        return _resize(y, size)


class LRASPP(nn.Module):
    """Lite R-ASPP (Howard et al. 2019, Fig. 10) on a dilated MobileNetV3-Large, torchvision layout:
    low = features4 (stride 8, 40 ch), high = features16 (stride 16, 960 ch); ``inter_features`` 128.
    ``remat``: each backbone block under ``nn.remat`` (``MobileNetV3.remat``)."""

    num_classes: int = 21
    inter_features: int = 128
    arch: str = 'large'
    width_mult: float = 1.0
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_aux: bool = False):
        if return_aux:
            raise ValueError('LRASPP has no auxiliary head')
        size = x.shape[1:3]
        norm = bind_norm(self.norm, train, self.dtype)
        conv = functools.partial(self.conv, dtype=self.dtype)
        feats = MobileNetV3(
            arch=self.arch,
            width_mult=self.width_mult,
            dilated=True,
            include_top=False,
            conv=self.conv,
            norm=self.norm,
            dtype=self.dtype,
            remat=self.remat,
            name='backbone',
        )(x, train)
        stages = _v3_stages(self.arch, self.width_mult)  # torchvision's C1..C4 '_is_cn'
        low, high = feats[f'features{stages[-4]}'], feats[f'features{stages[-1]}']
        y = conv_norm_act(
            high, conv, norm, nn.relu, self.inter_features, 1, name='cbr_conv', norm_name='cbr_bn'
        )
        s = jnp.mean(high, axis=(1, 2), keepdims=True)
        s = nn.sigmoid(conv(self.inter_features, (1, 1), use_bias=False, name='scale_conv')(s))
        y = upsample_bilinear(y * s, size=low.shape[1:3])
        y = conv(self.num_classes, (1, 1), name='low_classifier')(low) + conv(
            self.num_classes, (1, 1), name='high_classifier'
        )(y)
        return _resize(y, size)


# ResNet-18 backbones (basic blocks; not in the papers): with ``width=16`` the CPU-sized models of the
# segmentation experiments and ablations.
DeepLabV3ResNet18 = functools.partial(DeepLabV3, layers=(2, 2, 2, 2), block='basic')
DeepLabV3PlusResNet18 = functools.partial(DeepLabV3Plus, layers=(2, 2, 2, 2), block='basic')
DeepLabV3ResNet50 = functools.partial(DeepLabV3, layers=(3, 4, 6, 3))
DeepLabV3ResNet101 = functools.partial(DeepLabV3, layers=(3, 4, 23, 3))
DeepLabV3PlusResNet50 = functools.partial(DeepLabV3Plus, layers=(3, 4, 6, 3))
DeepLabV3PlusResNet101 = functools.partial(DeepLabV3Plus, layers=(3, 4, 23, 3))

REGISTRY_ENTRIES = {
    'deeplabv3_resnet18': DeepLabV3ResNet18,
    'deeplabv3_resnet50': DeepLabV3ResNet50,
    'deeplabv3_resnet101': DeepLabV3ResNet101,
    'deeplabv3plus_resnet18': DeepLabV3PlusResNet18,
    'deeplabv3plus_resnet50': DeepLabV3PlusResNet50,
    'deeplabv3plus_resnet101': DeepLabV3PlusResNet101,
    'deeplabv3_mobilenet_v3_large': DeepLabV3MobileNet,
    'lraspp_mobilenet_v3_large': LRASPP,
}
