"""Reusable CNN blocks (Flax Linen, NHWC): residual, inception, dense, dual-path, mobile, shuffle,
and segmentation context modules, each with the ablation knobs of its paper as fields.

Conventions (shared by every block here and by ``research.models``):

- ``conv``: a conv constructor (default ``research.layers.common.Conv``: nn.Conv with He fan-out
  init); blocks pass ``use_bias=False`` when a norm follows, explicit symmetric padding (torch's
  ``padding=k // 2 * dilation``), and ``feature_group_count`` for grouped/depthwise convs.
- ``norm``: a norm constructor, a name ('batch', 'group', 'layer', 'none') or None (no norm:
  convs get a bias). ``__call__(x, train=None)``: with ``train`` given the norm is bound to
  train/eval mode here (``bind_norm``); with ``train=None`` it is used as given -- models bind it
  once and pass it down, like ``CifarResNet`` -- and an unbound BatchNorm defaults to eval mode.
- ``activation``: a callable or a name (``resolve_activation``).
- Parameter names follow torchvision where it has the block (conv1/bn1/..., proj_conv/proj_bn for
  the projection shortcut, as in ``research.models.resnet_cifar``).

Parameter counts (BN = scale + bias, 2 per channel; checked in tests/test_layers_blocks.py):
``BasicBlock(64)`` on 64 channels 73,984; ``Bottleneck(64)`` on 256 channels 70,400;
``SqueezeExcite`` on C channels, ratio r: 2 C^2/r + C/r + C.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers.conv import channel_shuffle
from research.layers.pooling import adaptive_avg_pool, adaptive_max_pool, avg_pool, max_pool
from research.layers.resample import upsample_bilinear
from research.layers.common import (
    BatchNorm,
    Conv,
    ModuleDef,
    bind_norm,
    materialize,
    resolve_activation,
    resolve_norm,
)

__all__ = [
    'ASPP',
    'PREACT_ORDERINGS',
    'SHORTCUTS',
    'BasicBlock',
    'Bottleneck',
    'DenseBlock',
    'DenseLayer',
    'DualPathBlock',
    'InceptionModule',
    'InvertedResidual',
    'MBConv',
    'PreActBlock',
    'PyramidPooling',
    'ResNeXtBlock',
    'ShuffleUnitV1',
    'ShuffleUnitV2',
    'SqueezeExcite',
    'Transition',
    'drop_path',
    'conv_norm_act',
    'residual_shortcut',
]

SHORTCUTS = ('A', 'B', 'C')
PREACT_ORDERINGS = ('a', 'b', 'c', 'd', 'e')


# --------------------------------------------------------------------------- helpers


def _binds_mode(norm) -> bool:
    f = norm
    while isinstance(f, functools.partial):
        if 'use_running_average' in f.keywords:
            return True
        f = f.func
    return False


def _norm(norm, train: bool | None, dtype: Any = None) -> ModuleDef | None:
    """The norm constructor for this call (see the module docstring for ``train=None``)."""
    if train is not None:
        return bind_norm(norm, train, dtype)
    norm = resolve_norm(norm)
    if norm is None or _binds_mode(norm):
        return norm
    return bind_norm(norm, False, dtype)


def _pad(kernel: int, dilation: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
    p = dilation * (kernel - 1) // 2
    return ((p, p), (p, p))


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def conv_norm_act(
    x,
    conv,
    norm,
    act,
    features,
    kernel,
    *,
    strides=1,
    groups=1,
    dilation=1,
    padding=None,
    use_bias=None,
    name,
    norm_name,
):
    """conv -> norm -> act, the unit most CNNs are made of; call it inside a compact method.

    ``conv``, ``norm``: constructors (the norm already bound to train/eval mode; None = no norm),
    ``act``: a callable (None = linear). ``kernel``, ``strides``, ``dilation``: int or (h, w).
    ``padding``: None = torch's ``dilation * (k - 1) // 2`` per side (the same size for odd
    kernels at stride 1), an int or (h, w) for symmetric padding, or what the conv takes as is
    ('VALID', ((top, bottom), (left, right))). ``use_bias``: None = only without a norm.
    Submodules ``name`` (the conv) and ``norm_name``, side by side in the caller's scope.
    """
    kernel, dilation = _pair(kernel), _pair(dilation)
    if padding is None:
        padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    if isinstance(padding, int):
        padding = (padding, padding)
    if not isinstance(padding, str) and all(isinstance(p, int) for p in padding):
        padding = tuple((p, p) for p in padding)
    x = conv(
        features,
        kernel,
        strides=_pair(strides),
        padding=padding,
        kernel_dilation=dilation,
        feature_group_count=groups,
        use_bias=norm is None if use_bias is None else use_bias,
        name=name,
    )(x)
    if norm is not None:
        x = norm(name=norm_name)(x)
    return act(x) if act is not None else x


def shortcut_a(x: jax.Array, features: int, strides: int = 1) -> jax.Array:
    """Option A shortcut: subsample x[:, ::s, ::s] and zero-pad channels up to ``features``.

    Zero channels are split evenly before/after the identity channels, as in the widely used
    PyTorch reference (``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes//4, planes//4))``), so
    its checkpoints port directly. Parameter-free.
    """
    if strides > 1:
        x = x[:, ::strides, ::strides, :]
    extra = features - x.shape[-1]
    if extra < 0:
        raise ValueError(f'option-A shortcut cannot reduce channels ({x.shape[-1]} -> {features})')
    if extra:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return x


def residual_shortcut(
    x, features: int, strides: int, shortcut: str | None, conv, norm, *, project_norm=True, project_bias=None
):
    """He et al. 2015, Sec. 3.3 shortcuts; call inside a compact method. None = no shortcut.

    'A': identity, subsampled and zero-padded where the shape changes (no params); 'B': 1x1-conv
    projection (+ norm, torchvision's ``downsample``) where it changes, identity elsewhere; 'C':
    projection everywhere. Submodule names: proj_conv, proj_bn. ``project_bias``: bias on the
    projection conv (None = only when it has no norm).
    """
    if shortcut is None:
        return None
    if shortcut not in SHORTCUTS:
        raise ValueError(f'unknown shortcut {shortcut!r}; expected one of {SHORTCUTS} or None')
    changes = strides != 1 or x.shape[-1] != features
    if shortcut == 'C' or (shortcut == 'B' and changes):
        use_norm = norm is not None and project_norm
        r = conv(
            features,
            (1, 1),
            strides=(strides, strides),
            padding='VALID',
            use_bias=(not use_norm) if project_bias is None else project_bias,
            name='proj_conv',
        )(x)
        return norm(name='proj_bn')(r) if use_norm else r
    return shortcut_a(x, features, strides)


# --------------------------------------------------------------------------- squeeze-and-excitation


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu, Shen, Sun 2018, "Squeeze-and-Excitation Networks", Fig. 2-3).

    Global average pool -> FC to C/r (+ bias) -> ``activation`` -> FC to C (+ bias) -> ``gate``
    -> rescale x. Params 2 C^2/r + C/r + C. ``reduction`` r (16 in the paper, Table 10);
    ``squeeze_features`` overrides C // r (EfficientNet: 1/4 of the block's *input* channels);
    ``gate`` sigmoid (paper) or e.g. a hard sigmoid (MobileNetV3).
    """

    reduction: int = 16
    squeeze_features: int | None = None
    activation: str | Callable = nn.relu
    gate: str | Callable = nn.sigmoid
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        s = self.squeeze_features or max(1, c // self.reduction)
        y = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)), keepdims=True)
        y = resolve_activation(self.activation)(nn.Dense(s, dtype=self.dtype, name='fc1')(y))
        y = resolve_activation(self.gate)(nn.Dense(c, dtype=self.dtype, name='fc2')(y))
        return x * y


# --------------------------------------------------------------------------- ResNet family


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2015, Fig. 5 left; torchvision ``BasicBlock``).

    3x3 conv (stride) -> norm -> act -> 3x3 conv -> norm [-> SE] (+ shortcut) -> act. Output
    ``features`` channels. ``dilation``: of both 3x3 convs (torchvision's BasicBlock refuses
    dilation > 1; used by ``research.models.resnet`` with ``replace_stride_with_dilation``). ``shortcut``: 'B' (torchvision, default), 'A', 'C' or None (plain
    net); see ``residual_shortcut``. ``se_reduction``: SE-ResNet (Hu et al. 2018) with that
    ratio, None = off. ``zero_init_last``: last norm scale starts at 0 (Goyal et al. 2017), so
    the block starts as the identity (then ``act``). Same parameter names and counts as
    the CIFAR ResNets of ``research.models.resnet_cifar`` (which use this block with shortcut 'A').
    """

    features: int
    strides: int = 1
    shortcut: str | None = 'B'
    se_reduction: int | None = None
    zero_init_last: bool = False
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    dtype: Any = jnp.float32
    dilation: int = 1

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        norm = _norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype)
        d = self.dilation
        y = conv_norm_act(
            x,
            conv,
            norm,
            act,
            self.features,
            3,
            strides=self.strides,
            dilation=d,
            name='conv1',
            norm_name='bn1',
        )
        last_norm = _zero_scale(norm) if self.zero_init_last else norm
        y = conv_norm_act(
            y, conv, last_norm, None, self.features, 3, dilation=d, name='conv2', norm_name='bn2'
        )
        if self.se_reduction:
            y = SqueezeExcite(self.se_reduction, activation=act, dtype=self.dtype, name='se')(y)
        r = residual_shortcut(x, self.features, self.strides, self.shortcut, conv, norm)
        return materialize(act(y + r)) if r is not None else act(y)


def _zero_scale(norm):
    if norm is None:
        return None
    return functools.partial(norm, scale_init=nn.initializers.zeros_init())


class Bottleneck(nn.Module):
    """ResNet bottleneck (He et al. 2015, Fig. 5 right; torchvision ``Bottleneck``).

    1x1 (width) -> 3x3 (width, stride, ``groups``, ``dilation``) -> 1x1 (features * expansion),
    each followed by norm, act after the first two; [SE]; + shortcut; act. ``features`` is
    torchvision's ``planes``: output = 4 * features. width = int(features * base_width / 64) *
    groups (ResNeXt, Xie et al. 2017: ``groups`` = cardinality C, ``base_width`` = d; Wide ResNet:
    base_width=128). Stride on the 3x3 ("ResNet v1.5", torchvision); ``stride_on_1x1=True`` puts
    it on the first 1x1 as in the original paper / Caffe model (v1). ``shortcut``/``se_reduction``/
    ``zero_init_last`` as in ``BasicBlock``.
    """

    features: int
    strides: int = 1
    groups: int = 1
    base_width: int = 64
    expansion: int = 4
    dilation: int = 1
    stride_on_1x1: bool = False
    shortcut: str | None = 'B'
    se_reduction: int | None = None
    zero_init_last: bool = False
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    dtype: Any = jnp.float32

    @property
    def width(self) -> int:
        return int(self.features * (self.base_width / 64.0)) * self.groups

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        norm = _norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype)
        out = self.features * self.expansion
        s1, s3 = (self.strides, 1) if self.stride_on_1x1 else (1, self.strides)
        y = conv_norm_act(x, conv, norm, act, self.width, 1, strides=s1, name='conv1', norm_name='bn1')
        y = conv_norm_act(
            y,
            conv,
            norm,
            act,
            self.width,
            3,
            strides=s3,
            groups=self.groups,
            dilation=self.dilation,
            name='conv2',
            norm_name='bn2',
        )
        last_norm = _zero_scale(norm) if self.zero_init_last else norm
        y = conv_norm_act(y, conv, last_norm, None, out, 1, name='conv3', norm_name='bn3')
        if self.se_reduction:
            y = SqueezeExcite(self.se_reduction, activation=act, dtype=self.dtype, name='se')(y)
        r = residual_shortcut(x, out, self.strides, self.shortcut, conv, norm)
        return materialize(act(y + r)) if r is not None else act(y)


class ResNeXtBlock(Bottleneck):
    """ResNeXt block (Xie et al. 2017, "Aggregated Residual Transformations", Fig. 3c, Table 1):
    the bottleneck with a grouped 3x3, cardinality C = ``groups`` and bottleneck width d =
    ``base_width`` (width C * d * features / 64; ResNeXt-50 32x4d: groups=32, base_width=4, so
    128 at features=64). Fig. 3(a)/(b) are equivalent reformulations of this one."""

    groups: int = 32
    base_width: int = 4

    @property
    def cardinality(self) -> int:
        return self.groups


class PreActBlock(nn.Module):
    """Residual unit with the activation orderings of He et al. 2016, "Identity Mappings in Deep
    Residual Networks", Fig. 4 (W = weight layer, BN = norm, + = addition):

    (a) original      W-BN-ReLU-W-BN, +, ReLU
    (b) BN after add  W-BN-ReLU-W, +, BN-ReLU
    (c) ReLU before   W-BN-ReLU-W-BN-ReLU, +
    (d) ReLU-only pre-activation   ReLU-W-BN-ReLU-W-BN, +
    (e) full pre-activation (the paper's proposal)   BN-ReLU-W-BN-ReLU-W, +

    Basic (two 3x3 W, ``features`` out) or ``bottleneck`` (1x1 -> 3x3 -> 1x1 with width
    features // 4, the paper's ResNet-164). Stride on the 3x3. Every ordering has one norm per
    weight layer except the last, plus one more ((a), (c), (d): after the last W; (b): after the
    add; (e): before the first W, on the *input* channels), so all five have the same parameter
    count when in = out channels. Shortcut 'B' (default) projects with a 1x1 conv where the shape
    changes; in (d)/(e) it takes the pre-activated input and is a plain conv with bias, no norm
    (as in the authors' Torch code; ``shortcut_bias=False`` drops that bias, as the authors'
    PyTorch Wide ResNet code), in (a)-(c) conv + norm. ``dropout_rate``: dropout right before the
    last weight layer (Wide ResNet, Zagoruyko & Komodakis 2016, Fig. 1d: BN-ReLU-conv-BN-ReLU-
    dropout-conv); active only when ``train=True`` is passed to the call.
    """

    features: int
    strides: int = 1
    ordering: str = 'e'
    bottleneck: bool = False
    shortcut: str | None = 'B'
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    dtype: Any = jnp.float32
    shortcut_bias: bool = True
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        if self.ordering not in PREACT_ORDERINGS:
            raise ValueError(f'unknown ordering {self.ordering!r}; expected one of {PREACT_ORDERINGS}')
        o = self.ordering
        norm = _norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype)

        def bn(h, name):
            return norm(name=name)(h) if norm is not None else h

        if self.bottleneck:
            w = self.features // 4
            layers = [(w, 1, 1), (w, 3, self.strides), (self.features, 1, 1)]
        else:
            layers = [(self.features, 3, self.strides), (self.features, 3, 1)]
        n_bn = 0
        h = x
        if o == 'd':
            h = act(h)
        elif o == 'e':
            h = act(bn(h, f'bn{(n_bn := n_bn + 1)}'))
        pre = h
        for i, (f, k, s) in enumerate(layers):
            last = i == len(layers) - 1
            if last and self.dropout_rate:
                h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
            h = conv(f, (k, k), strides=(s, s), padding=_pad(k), use_bias=norm is None, name=f'conv{i + 1}')(
                h
            )
            if not last:
                h = act(bn(h, f'bn{(n_bn := n_bn + 1)}'))
            elif o in 'acd':
                h = bn(h, f'bn{(n_bn := n_bn + 1)}')
                if o == 'c':
                    h = act(h)
        changes = self.strides != 1 or x.shape[-1] != self.features
        projects = self.shortcut == 'C' or (self.shortcut == 'B' and changes)
        src = pre if projects and o in 'de' else x
        r = residual_shortcut(
            src,
            self.features,
            self.strides,
            self.shortcut,
            conv,
            norm,
            project_norm=o in 'abc',
            project_bias=None if o in 'abc' or self.shortcut_bias else False,
        )
        h = h + r if r is not None else h
        if o == 'a':
            h = act(h)
        elif o == 'b':
            h = act(bn(h, f'bn{(n_bn := n_bn + 1)}'))
        return materialize(h) if r is not None else h


# --------------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Module):
    """DenseNet composite function H_l (Huang et al. 2017, "Densely Connected Convolutional
    Networks", Sec. 3): [BN-ReLU-1x1 conv (bn_size * k)] -> BN-ReLU-3x3 conv (k) [-> dropout],
    concatenated to the input. ``bottleneck`` = the "B" of DenseNet-B/BC (bn_size 4)."""

    growth_rate: int
    bottleneck: bool = True
    bn_size: int = 4
    dropout_rate: float = 0.0
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        norm = _norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype, use_bias=norm is None)
        y = x
        if self.bottleneck:
            y = act(norm(name='norm1')(y)) if norm is not None else act(y)
            y = conv(self.bn_size * self.growth_rate, (1, 1), padding='VALID', name='conv1')(y)
        y = act(norm(name='norm2')(y)) if norm is not None else act(y)
        y = conv(self.growth_rate, (3, 3), padding=_pad(3), name='conv2')(y)
        if self.dropout_rate:
            y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        return jnp.concatenate([x, y], axis=-1)


class DenseBlock(nn.Module):
    """DenseNet dense block (Huang et al. 2017, Fig. 1, Table 1): ``num_layers`` DenseLayers of
    growth rate k; output channels C_in + num_layers * k. Layers are named layer1, layer2, ..."""

    num_layers: int
    growth_rate: int = 32
    bottleneck: bool = True
    bn_size: int = 4
    dropout_rate: float = 0.0
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        norm = _norm(self.norm, train, self.dtype)
        for i in range(self.num_layers):
            x = DenseLayer(
                growth_rate=self.growth_rate,
                bottleneck=self.bottleneck,
                bn_size=self.bn_size,
                dropout_rate=self.dropout_rate,
                conv=self.conv,
                norm=norm,
                activation=self.activation,
                dtype=self.dtype,
                name=f'layer{i + 1}',
            )(x, train)
        return x


class Transition(nn.Module):
    """DenseNet transition layer (Huang et al. 2017, Sec. 3 "Pooling layers" and "Compression"):
    BN-ReLU-1x1 conv to floor(theta * C) channels -> 2x2 average pool, stride 2. ``compression``
    theta (0.5 for DenseNet-C/BC, 1 for plain DenseNet); ``features`` overrides the count."""

    compression: float = 0.5
    features: int | None = None
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        norm = _norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        out = self.features or int(self.compression * x.shape[-1])
        y = act(norm(name='norm')(x)) if norm is not None else act(x)
        y = self.conv(out, (1, 1), padding='VALID', use_bias=norm is None, dtype=self.dtype, name='conv')(y)
        return avg_pool(y, 2, 2)


# --------------------------------------------------------------------------- DPN


class DualPathBlock(nn.Module):
    """Dual path block (Chen et al. 2017, "Dual Path Networks", Fig. 2e, Table 1), pre-activation
    (BN-ReLU-conv) units as in the authors' MXNet code.

    Input: a tensor or a (residual, dense) pair. The bottleneck 1x1 (``bottleneck_width``) ->
    grouped 3x3 (``groups``, stride) -> 1x1 to ``features`` + ``increment`` channels; the first
    ``features`` are added to the residual path, the other ``increment`` concatenated to the
    dense path. ``project`` (set on the first block of a stage, required when the input is a
    tensor): a BN-ReLU-1x1 conv (stride) of the concatenated input makes the residual path
    (``features``) and the initial dense path (2 * ``increment``). Returns (residual, dense);
    concatenate them for the stage output.
    """

    features: int
    bottleneck_width: int
    increment: int
    groups: int = 32
    strides: int = 1
    project: bool = False
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        norm = _norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype, use_bias=norm is None)

        def bn_act_conv(h, features, k, s, groups, name):
            h = act(norm(name=f'{name}_bn')(h)) if norm is not None else act(h)
            return conv(
                features, (k, k), strides=(s, s), padding=_pad(k), feature_group_count=groups, name=name
            )(h)

        x_in = jnp.concatenate(x, axis=-1) if isinstance(x, (tuple, list)) else x
        if self.project or not isinstance(x, (tuple, list)):
            if not self.project:
                raise ValueError(
                    'DualPathBlock on a single tensor needs project=True (first block of a stage)'
                )
            xs = bn_act_conv(x_in, self.features + 2 * self.increment, 1, self.strides, 1, 'proj')
            resid, dense = xs[..., : self.features], xs[..., self.features :]
        else:
            resid, dense = x
        y = bn_act_conv(x_in, self.bottleneck_width, 1, 1, 1, 'conv1')
        y = bn_act_conv(y, self.bottleneck_width, 3, self.strides, self.groups, 'conv2')
        y = bn_act_conv(y, self.features + self.increment, 1, 1, 1, 'conv3')
        return materialize(resid + y[..., : self.features]), jnp.concatenate(
            [dense, y[..., self.features :]], axis=-1
        )


# --------------------------------------------------------------------------- Inception


class InceptionModule(nn.Module):
    """Inception module (Szegedy et al. 2015, "Going Deeper with Convolutions", Fig. 2b, Table 1).

    Fields are Table 1's columns: ``ch1x1`` (#1x1), ``ch3x3_reduce`` -> ``ch3x3``, ``ch5x5_reduce``
    -> ``ch5x5``, and ``pool_proj`` after a 3x3/1 max pool; outputs concatenated (64+128+32+32 =
    256 for inception (3a)). Each conv is conv -> norm -> act (torchvision's BasicConv2d: no
    bias + BN; ``norm=None`` gives the paper's conv + bias + ReLU). ``branch3_kernel``: the
    paper's 5 (torchvision's GoogLeNet uses 3 there, a known discrepancy).
    """

    ch1x1: int
    ch3x3_reduce: int
    ch3x3: int
    ch5x5_reduce: int
    ch5x5: int
    pool_proj: int
    branch3_kernel: int = 5
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        norm = _norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype)

        def unit(h, features, k, name):
            return conv_norm_act(h, conv, norm, act, features, k, name=f'{name}_conv', norm_name=f'{name}_bn')

        b1 = unit(x, self.ch1x1, 1, 'b1')
        b2 = unit(unit(x, self.ch3x3_reduce, 1, 'b2_reduce'), self.ch3x3, 3, 'b2')
        b3 = unit(unit(x, self.ch5x5_reduce, 1, 'b3_reduce'), self.ch5x5, self.branch3_kernel, 'b3')
        b4 = unit(max_pool(x, 3, 1, padding=1), self.pool_proj, 1, 'b4')
        return jnp.concatenate([b1, b2, b3, b4], axis=-1)


# --------------------------------------------------------------------------- mobile blocks


class InvertedResidual(nn.Module):
    """Inverted residual / MBConv (Sandler et al. 2018, MobileNetV2, Table 1; Tan & Le 2019,
    EfficientNet, with SE).

    [1x1 expand to ``expansion`` * C_in -> norm -> act] -> k x k depthwise (stride) -> norm -> act
    [-> SE] -> 1x1 project to ``features`` -> norm (linear bottleneck). Residual add only when
    stride is 1 and C_in == features. ``se_ratio``: SE squeeze = max(1, int(C_in * se_ratio))
    (EfficientNet: 0.25, SiLU inside, sigmoid gate); 0 = off (MobileNetV2). ``activation``: ReLU6
    (MobileNetV2, default) or SiLU (EfficientNet).

    MobileNetV3 / EfficientNet extras (defaults leave the block as above): ``hidden_features``
    overrides C_in * ``expansion`` (V3's explicit expanded widths; the expand conv is skipped
    whenever hidden == C_in); ``se_features`` sets the SE squeeze width directly (V3:
    make_divisible(hidden / 4, 8)) and turns SE on; ``se_activation`` the SE's inner activation
    (default: the block's; V3 uses ReLU inside even in hard-swish blocks); ``dilation`` of the
    depthwise conv; ``drop_path_rate``: stochastic depth (Huang et al. 2016) on the residual
    branch, per example ("row" mode, survivors scaled by 1/(1-p), torchvision's
    ``StochasticDepth``), only when called with ``train=True`` (rng 'dropout').
    """

    features: int
    strides: int = 1
    expansion: int = 6
    kernel_size: int = 3
    se_ratio: float = 0.0
    se_gate: str | Callable = nn.sigmoid
    hidden_features: int | None = None
    se_features: int | None = None
    se_activation: str | Callable | None = None
    dilation: int = 1
    drop_path_rate: float = 0.0
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        norm = _norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype)
        c_in = x.shape[-1]
        hidden = self.hidden_features or c_in * self.expansion
        y = x
        if hidden != c_in:
            y = conv_norm_act(y, conv, norm, act, hidden, 1, name='expand_conv', norm_name='expand_bn')
        y = conv_norm_act(
            y,
            conv,
            norm,
            act,
            hidden,
            self.kernel_size,
            strides=self.strides,
            groups=hidden,
            dilation=self.dilation,
            name='dw_conv',
            norm_name='dw_bn',
        )
        if self.se_features or self.se_ratio:
            s = self.se_features or max(1, int(c_in * self.se_ratio))
            se_act = act if self.se_activation is None else self.se_activation
            y = SqueezeExcite(
                squeeze_features=s, activation=se_act, gate=self.se_gate, dtype=self.dtype, name='se'
            )(y)
        y = conv_norm_act(y, conv, norm, None, self.features, 1, name='project_conv', norm_name='project_bn')
        if self.strides == 1 and c_in == self.features:
            if self.drop_path_rate and train:
                y = drop_path(y, self.drop_path_rate, self.make_rng('dropout'))
            y = materialize(y + x)
        return y


def drop_path(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """Stochastic depth (Huang et al. 2016), per example: zero a residual branch with
    probability ``rate`` and scale survivors by 1 / (1 - rate) (torchvision "row" mode)."""
    keep = 1.0 - rate
    if keep <= 0.0:
        return jnp.zeros_like(x)
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


#: EfficientNet's name for the inverted residual block.
MBConv = InvertedResidual


class ShuffleUnitV1(nn.Module):
    """ShuffleNet unit (Zhang et al. 2018, "ShuffleNet", Fig. 2b/c, Table 1).

    1x1 group conv (``groups`` g; ungrouped when ``group_first=False``, as for the first unit of
    Stage 2) -> norm -> act -> channel shuffle -> 3x3 depthwise (stride) -> norm -> 1x1 group conv
    -> norm. Stride 1: add the input (needs C_in == features), then act. Stride 2: concatenate with
    a 3x3/2 average pool of the input (the conv path makes features - C_in channels), then act.
    Bottleneck channels = features // 4 (the paper's 1/4 of the unit's output).
    """

    features: int
    groups: int = 3
    strides: int = 1
    group_first: bool = True
    bottleneck_ratio: float = 0.25
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        norm = _norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype)
        c_in = x.shape[-1]
        out = self.features - c_in if self.strides > 1 else self.features
        if self.strides == 1 and c_in != self.features:
            raise ValueError(f'stride-1 ShuffleNet unit needs in == out channels ({c_in} != {self.features})')
        mid = int(self.features * self.bottleneck_ratio)
        g1 = self.groups if self.group_first else 1
        y = conv_norm_act(x, conv, norm, act, mid, 1, groups=g1, name='gconv1', norm_name='bn1')
        y = channel_shuffle(y, self.groups)
        y = conv_norm_act(
            y, conv, norm, None, mid, 3, strides=self.strides, groups=mid, name='dwconv', norm_name='bn2'
        )
        y = conv_norm_act(y, conv, norm, None, out, 1, groups=self.groups, name='gconv2', norm_name='bn3')
        if self.strides > 1:
            return act(jnp.concatenate([avg_pool(x, 3, self.strides, padding=1), y], axis=-1))
        return materialize(act(x + y))


class ShuffleUnitV2(nn.Module):
    """ShuffleNet V2 unit (Ma et al. 2018, "ShuffleNet V2", Fig. 3c/d; torchvision InvertedResidual).

    Stride 1: channel split in half; one half passes through, the other goes 1x1 -> norm -> act ->
    3x3 depthwise -> norm -> 1x1 -> norm -> act; concatenate; channel shuffle (2 groups). Stride 2:
    no split; left branch 3x3/2 depthwise -> norm -> 1x1 -> norm -> act, right branch as above
    with stride 2; each branch makes features // 2 channels.
    """

    features: int
    strides: int = 1
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        norm = _norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype)
        b = self.features // 2
        s = self.strides
        if s == 1:
            if x.shape[-1] != self.features:
                raise ValueError(
                    f'stride-1 ShuffleNet V2 unit needs in == out channels ({x.shape[-1]} != {self.features})'
                )
            left, right = jnp.split(x, 2, axis=-1)
        else:
            left = conv_norm_act(
                x,
                conv,
                norm,
                None,
                x.shape[-1],
                3,
                strides=s,
                groups=x.shape[-1],
                name='b1_dw',
                norm_name='b1_bn1',
            )
            left = conv_norm_act(left, conv, norm, act, b, 1, name='b1_conv', norm_name='b1_bn2')
            right = x
        right = conv_norm_act(right, conv, norm, act, b, 1, name='b2_conv1', norm_name='b2_bn1')
        right = conv_norm_act(
            right, conv, norm, None, b, 3, strides=s, groups=b, name='b2_dw', norm_name='b2_bn2'
        )
        right = conv_norm_act(right, conv, norm, act, b, 1, name='b2_conv2', norm_name='b2_bn3')
        return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


# --------------------------------------------------------------------------- segmentation context


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (Chen et al. 2017, "Rethinking Atrous Convolution for
    Semantic Image Segmentation" (DeepLabv3), Sec. 3.3, Fig. 5; torchvision ``ASPP``).

    Branches, each conv -> norm -> act to ``features`` (256): a 1x1 conv; 3x3 convs with dilation
    ``rates`` ((6, 12, 18) at output stride 16; double them at 8); image pooling (global average
    -> 1x1 conv -> bilinear upsample back). Concatenate -> 1x1 projection -> norm -> act [->
    dropout, 0.5 in torchvision]. Params (C_in, F, n rates): C_in F (2 + 9 n) + F^2 (n + 2) +
    2 F (n + 3) with BN.
    """

    features: int = 256
    rates: Sequence[int] = (6, 12, 18)
    dropout_rate: float = 0.0
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        norm = _norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype)
        f = self.features
        outs = [conv_norm_act(x, conv, norm, act, f, 1, name='b0_conv', norm_name='b0_bn')]
        for i, rate in enumerate(self.rates):
            outs.append(
                conv_norm_act(
                    x, conv, norm, act, f, 3, dilation=rate, name=f'b{i + 1}_conv', norm_name=f'b{i + 1}_bn'
                )
            )
        p = jnp.mean(x, axis=(1, 2), keepdims=True)
        p = conv_norm_act(p, conv, norm, act, f, 1, name='pool_conv', norm_name='pool_bn')
        outs.append(upsample_bilinear(p, size=x.shape[1:3]))
        y = jnp.concatenate(outs, axis=-1)
        y = conv_norm_act(y, conv, norm, act, f, 1, name='proj_conv', norm_name='proj_bn')
        if self.dropout_rate:
            y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        return y


class PyramidPooling(nn.Module):
    """Pyramid pooling module (Zhao et al. 2017, "Pyramid Scene Parsing Network", Sec. 3.2, Fig. 3).

    For each bin size b in ``bins`` (1, 2, 3, 6): adaptive average pool to b x b (torch's bins) ->
    1x1 conv to ``features`` (default C / len(bins)) -> norm -> act -> bilinear upsample to the
    input size; concatenate with the input (C + len(bins) * features channels, 2C by default).
    ``align_corners`` True as in the authors' Caffe interp layer (torch's default is False).
    ``pooling``: 'avg' (the paper's choice) or 'max' (Table 1's other rows). ``bins=()``: no pyramid,
    the input passes through (Table 1's dilated-FCN baseline).
    """

    bins: Sequence[int] = (1, 2, 3, 6)
    features: int | None = None
    align_corners: bool = True
    pooling: str = 'avg'
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    activation: str | Callable = nn.relu
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        norm = _norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype)
        pools = {'avg': adaptive_avg_pool, 'max': adaptive_max_pool}
        if self.pooling not in pools:
            raise ValueError(f"PyramidPooling pooling must be 'avg' or 'max'; got {self.pooling!r}")
        f = self.features or x.shape[-1] // max(len(self.bins), 1)
        outs = [x]
        for b in self.bins:
            p = pools[self.pooling](x, b)
            p = conv_norm_act(p, conv, norm, act, f, 1, name=f'bin{b}_conv', norm_name=f'bin{b}_bn')
            outs.append(upsample_bilinear(p, size=x.shape[1:3], align_corners=self.align_corners))
        return jnp.concatenate(outs, axis=-1)
