"""MobileNets v1, v2, v3 (Flax Linen, NHWC).

- v1: Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
  Applications", Table 1 (architecture), Sec. 3.2-3.3 (width multiplier alpha, resolution
  multiplier rho), Tables 6-7 (alpha 1.0/0.75/0.5/0.25: 4.2/2.6/1.3/0.5 M params, 569/325/149/41
  M MACs at 224). No torchvision model.
- v2: Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks", Table 2;
  torchvision ``mobilenet_v2`` layout (3,504,872 params, 0.301 GMACs).
- v3: Howard et al. 2019, "Searching for MobileNetV3", Tables 1 (large) and 2 (small);
  torchvision ``mobilenet_v3_large`` / ``_small`` layout (5,483,032 / 2,542,856 params, 0.217 /
  0.057 GMACs).

Features (``return_features=True``): 'stage1'..'stage5' = the last map at output stride 2, 4, 8,
16, 32 (the stride-32 map is the last conv's output; with v3 ``dilated=True`` stage5 is the
last-stage output at output stride 16). v2/v3 also return 'features<i>': the output of torchvision's ``features[i]`` (what
its ``IntermediateLayerGetter`` picks, e.g. LR-ASPP's 'low' = features4 and 'high' = features16
for v3 large).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers.blocks import InvertedResidual, conv_norm_act
from research.layers.common import (
    BatchNorm,
    Conv,
    ModuleDef,
    _module_fields,
    bind_norm,
    resolve_activation,
    resolve_norm,
)
from research.layers.heads import classifier_head
from research.layers.remat import remat_call

__all__ = [
    'MobileNetV1',
    'MobileNetV2',
    'MobileNetV3',
    'V3_LARGE',
    'V3_SMALL',
    'make_divisible',
    'norm_with',
    'stage_features',
]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Nearest multiple of ``divisor`` (at least ``min_value``), never more than 10% below ``v``
    (the TF MobileNet code's ``_make_divisible``, torchvision's too)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def norm_with(norm, epsilon: float | None = None, momentum: float | None = None):
    """``norm`` (constructor or name) with ``epsilon`` / ``momentum`` (Flax convention: torch
    momentum m is 1 - m here) set where the norm layer has those fields; None keeps its default."""
    norm = resolve_norm(norm)
    if norm is None:
        return None
    fields = _module_fields(norm)
    kw = {}
    if epsilon is not None and 'epsilon' in fields:
        kw['epsilon'] = epsilon
    if momentum is not None and 'momentum' in fields:
        kw['momentum'] = momentum
    return functools.partial(norm, **kw) if kw else norm


def stage_features(feats: dict, maps: Sequence[tuple[int, jax.Array]]) -> dict:
    """Fills 'stage1'..'stage5' with the last of ``maps`` ((nominal output stride, map) pairs in
    execution order) at stride 2, 4, 8, 16, 32."""
    for stride, m in maps:
        for s in range(1, 6):
            if stride == 2**s:
                feats[f'stage{s}'] = m
    return feats


# --------------------------------------------------------------------------- v1

#: Howard et al. 2017, Table 1: (stride of the depthwise conv, pointwise output channels) per
#: depthwise separable layer. The table's second-to-last row reads "Conv dw / s2" on a 7x7 input;
#: every implementation (and the 7x7 output size the table itself lists) uses stride 1 there.
V1_LAYERS = (
    (1, 64),
    (2, 128),
    (1, 128),
    (2, 256),
    (1, 256),
    (2, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (2, 1024),
    (1, 1024),
)


class MobileNetV1(nn.Module):
    """MobileNet v1, Howard et al. 2017, Table 1: 3x3 conv 32 /2, then 13 depthwise separable layers
    (3x3 depthwise -> BN -> ReLU -> 1x1 pointwise -> BN -> ReLU), global average pool, FC.

    Knobs: ``width_multiplier`` alpha (Sec. 3.2; every layer's channels ``int(c * alpha)``, at
    least ``min_depth`` as in the TF-slim reference); the resolution multiplier rho (Sec. 3.3) is
    just the input size (224 rho: 224/192/160/128). ``activation`` ReLU (paper; TF-slim uses
    ReLU6). ``separable=False`` replaces each separable layer by a full 3x3 conv (Table 4's
    "Conv MobileNet": 29.3 M params, 4866 M MACs; here 29,294,088 and 4,867.3 M, of which the FC
    is 1.0 M). ``dropout_rate`` before the FC (not in the paper). ``norm_eps`` /
    ``norm_momentum`` (Flax convention): None = the project's torch defaults (TF-slim: 1e-3 /
    0.9997). Counts at 224 (1000 classes, BN
    included): 4,231,976 / 2,585,560 / 1,331,592 / 470,072 params and 568.74 / 325.40 / 149.50 /
    41.03 M MACs for alpha 1 / .75 / .5 / .25: Tables 6-7's 4.2 / 2.6 / 1.3 / 0.5 M and 569 /
    325 / 149 / 41 M after the paper's rounding (0.47 M -> 0.5 M; 149.497 M -> 149 M). With
    ``norm=None`` (conv biases instead of BN) alpha 1 has 4,221,032 params, still 4.2 M.
    """

    width_multiplier: float = 1.0
    num_classes: int = 1000
    min_depth: int = 8
    separable: bool = True
    dropout_rate: float = 0.0
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    norm_eps: float | None = None
    norm_momentum: float | None = None
    activation: str | Callable = nn.relu
    remat: bool = False
    dtype: Any = jnp.float32

    def channels(self, c: int) -> int:
        return max(int(c * self.width_multiplier), self.min_depth)

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        norm = bind_norm(norm_with(self.norm, self.norm_eps, self.norm_momentum), train, self.dtype)
        act = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype)
        x = jnp.asarray(x, self.dtype)
        x = conv_norm_act(
            x, conv, norm, act, self.channels(32), 3, strides=2, name='stem_conv', norm_name='stem_bn'
        )
        stride = 2
        maps = [(stride, x)]

        def layer(x, i, s, c):
            if not self.separable:
                return conv_norm_act(
                    x,
                    conv,
                    norm,
                    act,
                    self.channels(c),
                    3,
                    strides=s,
                    name=f'layer{i}_conv',
                    norm_name=f'layer{i}_bn',
                )
            x = conv_norm_act(
                x,
                conv,
                norm,
                act,
                x.shape[-1],
                3,
                strides=s,
                groups=x.shape[-1],
                name=f'layer{i}_dw_conv',
                norm_name=f'layer{i}_dw_bn',
            )
            return conv_norm_act(
                x, conv, norm, act, self.channels(c), 1, name=f'layer{i}_pw_conv', norm_name=f'layer{i}_pw_bn'
            )

        for i, (s, c) in enumerate(V1_LAYERS, start=1):
            stride *= s
            x = remat_call(self.remat, self, lambda h: layer(h, i, s, c), x)
            maps.append((stride, x))
        feats = stage_features({}, maps)
        logits = classifier_head(x, self.num_classes, self.dropout_rate, train, self.dtype, 'classifier')
        return (logits, feats) if return_features else logits


# --------------------------------------------------------------------------- v2

#: Sandler et al. 2018, Table 2: (expansion t, channels c, repeats n, first stride s).
V2_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
    """MobileNet v2, Sandler et al. 2018, Table 2 (torchvision layout): 3x3 conv 32 /2 -> 17
    inverted residuals (``research.layers.blocks.InvertedResidual``, ReLU6, linear bottleneck)
    -> 1x1 conv 1280 -> pool -> dropout -> FC.

    ``width_mult``: channels make_divisible(c * width_mult, ``round_nearest``); the last conv is
    1280 * max(1, width_mult) (Sec. 6.1: not reduced below 1280). ``dropout_rate`` 0.2 as
    torchvision (the paper does not state one). ``norm_eps``/``norm_momentum`` (Flax momentum;
    torch 0.1 == 0.9 here): torchvision defaults 1e-5 / 0.9; the TF reference uses 1e-3 / 0.997.
    Module names: stem_conv/stem_bn = features.0, block<i> = features.<i>, head_conv/head_bn =
    features.18, classifier = classifier.1.
    """

    width_mult: float = 1.0
    num_classes: int = 1000
    round_nearest: int = 8
    dropout_rate: float = 0.2
    setting: Sequence[tuple[int, int, int, int]] = V2_SETTING
    last_channel: int = 1280
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    norm_eps: float | None = 1e-5
    norm_momentum: float | None = 0.9
    activation: str | Callable = nn.relu6
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        base_norm = norm_with(self.norm, self.norm_eps, self.norm_momentum)
        norm = bind_norm(base_norm, train, self.dtype)
        act = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype)
        x = jnp.asarray(x, self.dtype)
        feats: dict = {}
        stem = make_divisible(32 * self.width_mult, self.round_nearest)
        x = conv_norm_act(x, conv, norm, act, stem, 3, strides=2, name='stem_conv', norm_name='stem_bn')
        stride = 2
        maps = [(stride, x)]
        feats['features0'] = x
        i = 1
        for t, c, n, s in self.setting:
            out = make_divisible(c * self.width_mult, self.round_nearest)
            for j in range(n):
                stride *= s if j == 0 else 1
                unit = functools.partial(
                    InvertedResidual,
                    out,
                    strides=s if j == 0 else 1,
                    expansion=t,
                    hidden_features=int(round(x.shape[-1] * t)),
                    conv=self.conv,
                    norm=norm,
                    activation=act,
                    dtype=self.dtype,
                    name=f'block{i}',
                )
                x = remat_call(self.remat, self, lambda h: unit()(h), x)
                maps.append((stride, x))
                feats[f'features{i}'] = x
                i += 1
        last = make_divisible(self.last_channel * max(1.0, self.width_mult), self.round_nearest)
        x = conv_norm_act(x, conv, norm, act, last, 1, name='head_conv', norm_name='head_bn')
        maps.append((stride, x))
        feats[f'features{i}'] = x
        stage_features(feats, maps)
        logits = classifier_head(x, self.num_classes, self.dropout_rate, train, self.dtype, 'classifier')
        return (logits, feats) if return_features else logits


# --------------------------------------------------------------------------- v3

#: Howard et al. 2019, Table 1 (large) / Table 2 (small), torchvision's ``_mobilenet_v3_conf``:
#: (kernel, expanded, out, SE, activation 'RE'/'HS', stride); the stem is 16 channels, HS.
V3_LARGE = (
    (3, 16, 16, False, 'RE', 1),
    (3, 64, 24, False, 'RE', 2),
    (3, 72, 24, False, 'RE', 1),
    (5, 72, 40, True, 'RE', 2),
    (5, 120, 40, True, 'RE', 1),
    (5, 120, 40, True, 'RE', 1),
    (3, 240, 80, False, 'HS', 2),
    (3, 200, 80, False, 'HS', 1),
    (3, 184, 80, False, 'HS', 1),
    (3, 184, 80, False, 'HS', 1),
    (3, 480, 112, True, 'HS', 1),
    (3, 672, 112, True, 'HS', 1),
    (5, 672, 160, True, 'HS', 2),
    (5, 960, 160, True, 'HS', 1),
    (5, 960, 160, True, 'HS', 1),
)
V3_SMALL = (
    (3, 16, 16, True, 'RE', 2),
    (3, 72, 24, False, 'RE', 2),
    (3, 88, 24, False, 'RE', 1),
    (5, 96, 40, True, 'HS', 2),
    (5, 240, 40, True, 'HS', 1),
    (5, 240, 40, True, 'HS', 1),
    (5, 120, 48, True, 'HS', 1),
    (5, 144, 48, True, 'HS', 1),
    (5, 288, 96, True, 'HS', 2),
    (5, 576, 96, True, 'HS', 1),
    (5, 576, 96, True, 'HS', 1),
)
_V3 = {'large': (V3_LARGE, 1280), 'small': (V3_SMALL, 1024)}


def v3_layers(arch: str, width_mult: float = 1.0, reduced_tail: bool = False, dilated: bool = False):
    """torchvision's ``_mobilenet_v3_conf``: per block (kernel, in, expanded, out, se, act, stride,
    dilation) with width_mult applied (make_divisible by 8), and the classifier width. The last
    stage (from the last stride-2 block) is halved with ``reduced_tail`` and dilated (rate 2,
    stride 1) with ``dilated``."""
    setting, last = _V3[arch]
    div = 2 if reduced_tail else 1
    last_s2 = max(i for i, row in enumerate(setting) if row[5] == 2)

    def adj(c):
        return make_divisible(c * width_mult, 8)

    rows = []
    c_in = 16
    for i, (k, e, o, se, a, s) in enumerate(setting):
        tail = i >= last_s2
        if tail:
            o = o // div
            if i > last_s2:
                e = e // div
        rows.append((k, adj(c_in), adj(e), adj(o), se, a, s, 2 if (tail and dilated) else 1))
        c_in = o
    return rows, adj(last // div)


class MobileNetV3(nn.Module):
    """MobileNet v3, Howard et al. 2019, Tables 1-2 (torchvision layout). Stem 3x3 conv 16 /2
    (hard-swish) -> bneck blocks (``InvertedResidual``: ReLU or hard-swish per row; SE with
    squeeze make_divisible(expanded / 4, 8), ReLU inside and a hard-sigmoid gate) -> 1x1 conv
    6 x last out (960 / 576) + HS -> pool -> Linear(1280 / 1024) -> HS -> dropout -> Linear.

    Knobs: ``arch`` 'large' / 'small'; ``width_mult`` (make_divisible by 8); ``se`` on/off;
    ``activation``: the 'HS' layers' activation (hard-swish; e.g. 'relu' for the paper's
    nonlinearity ablation, Table 5), ReLU layers stay ReLU; ``reduced_tail`` (halve the last stage,
    Sec. 6.1.1 for segmentation) and ``dilated`` (last stage at rate 2 and stride 1: output stride
    16, for LR-ASPP), as torchvision; ``norm_eps`` 1e-3 and ``norm_momentum`` 0.99 (Flax convention,
    torch's 0.01) as torchvision; ``dropout_rate`` 0.2. Names: stem_conv/stem_bn = features.0,
    block<i> = features.<i>, head_conv/head_bn = features.<n+1>, fc1 / fc2 = classifier.0 / .3.
    ``include_top=False``: no pool/classifier; ``__call__`` returns the features dict (the LR-ASPP
    backbone).
    """

    arch: str = 'large'
    width_mult: float = 1.0
    num_classes: int = 1000
    se: bool = True
    reduced_tail: bool = False
    dilated: bool = False
    dropout_rate: float = 0.2
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    norm_eps: float | None = 1e-3
    norm_momentum: float | None = 0.99
    activation: str | Callable = nn.hard_swish
    include_top: bool = True
    remat: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.arch not in _V3:
            raise ValueError(f"MobileNetV3 arch must be 'large' or 'small'; got {self.arch!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        norm = bind_norm(norm_with(self.norm, self.norm_eps, self.norm_momentum), train, self.dtype)
        hs = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype)
        rows, last_channel = v3_layers(self.arch, self.width_mult, self.reduced_tail, self.dilated)
        x = jnp.asarray(x, self.dtype)
        feats: dict = {}
        x = conv_norm_act(x, conv, norm, hs, rows[0][1], 3, strides=2, name='stem_conv', norm_name='stem_bn')
        stride = 2  # nominal: with ``dilated`` the last stage counts as stride 32 (stage5)
        maps = [(stride, x)]
        feats['features0'] = x
        for i, (k, _, e, o, se, a, s, d) in enumerate(rows, start=1):
            stride *= s
            unit = functools.partial(
                InvertedResidual,
                o,
                strides=1 if d > 1 else s,
                kernel_size=k,
                hidden_features=e,
                dilation=d,
                se_features=make_divisible(e // 4, 8) if (se and self.se) else None,
                se_activation=nn.relu,
                se_gate=nn.hard_sigmoid,
                conv=self.conv,
                norm=norm,
                activation=hs if a == 'HS' else nn.relu,
                dtype=self.dtype,
                name=f'block{i}',
            )
            x = remat_call(self.remat, self, lambda h: unit()(h), x)
            maps.append((stride, x))
            feats[f'features{i}'] = x
        x = conv_norm_act(x, conv, norm, hs, 6 * rows[-1][3], 1, name='head_conv', norm_name='head_bn')
        maps.append((stride, x))
        feats[f'features{len(rows) + 1}'] = x
        stage_features(feats, maps)
        if not self.include_top:
            return feats
        x = jnp.mean(x, axis=(1, 2))
        x = hs(nn.Dense(last_channel, dtype=self.dtype, name='fc1')(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name='fc2')(x)
        logits = jnp.asarray(logits, jnp.float32)
        return (logits, feats) if return_features else logits


# --------------------------------------------------------------------------- variants

MobileNetV1_075 = functools.partial(MobileNetV1, width_multiplier=0.75)
MobileNetV1_050 = functools.partial(MobileNetV1, width_multiplier=0.5)
MobileNetV1_025 = functools.partial(MobileNetV1, width_multiplier=0.25)
MobileNetV3Large = functools.partial(MobileNetV3, arch='large')
MobileNetV3Small = functools.partial(MobileNetV3, arch='small')

REGISTRY_ENTRIES = {
    # Howard et al. 2017, Tables 6-7.
    'mobilenet_v1': MobileNetV1,
    'mobilenet_v1_075': MobileNetV1_075,
    'mobilenet_v1_050': MobileNetV1_050,
    'mobilenet_v1_025': MobileNetV1_025,
    # Sandler et al. 2018, Table 2 (torchvision).
    'mobilenet_v2': MobileNetV2,
    # Howard et al. 2019, Tables 1-2 (torchvision).
    'mobilenet_v3_large': MobileNetV3Large,
    'mobilenet_v3_small': MobileNetV3Small,
}
