"""Inception v3 and v4.

Inception v3: Szegedy, Vanhoucke, Ioffe, Shlens, Wojna 2016, "Rethinking the Inception
Architecture for Computer Vision", Table 1, Figs. 5-7 (modules A/C/E), Fig. 10 (grid reduction),
Sec. 4 (auxiliary classifier). Default = torchvision's ``inception_v3`` (the released TF-slim
model; converts its weights): 299 px, BasicConv2d = conv (no bias) -> BN eps 1e-3 -> ReLU,
dropout 0.5, auxiliary head after Mixed_6e (``aux_logits=True`` by default as torchvision:
27,161,264 params incl. the 3,326,696 of the aux head, 5.713 GMACs). Where the released model
(and so torchvision and this default) differs from Table 1: the stem is conv 3x3/2 32, 3x3 32,
3x3 64 (padded), pool, 1x1 80, 3x3 192, pool (Table 1: 3x3 80, 3x3/2 192, 3x3 288, no second
pool), and the 17x17 grid has 4 Fig. 6 modules (Mixed_6b-e), not Table 1's 5; there is no knob
for the Table 1 variant. Auxiliary logits are returned in the feature dict ('aux') and sown to
'intermediates' ('aux_logits') (train mode only, as torchvision computes them only when training).

Inception v4: Szegedy, Ioffe, Vanhoucke, Alemi 2017, "Inception-v4, Inception-ResNet and the
Impact of Residual Connections on Learning", Fig. 9 (overall), Fig. 3 (stem), Figs. 4-6
(Inception-A/B/C), Fig. 7 (Reduction-A, k=192 l=224 m=256 n=384), Fig. 8 (Reduction-B). Layout
and BN (eps 1e-3) as the TF-slim release / timm's ``inception_v4``: 42,679,816 params at 1000
classes (= timm's and keras-hub's published count), 299 px, dropout 0.2 before the classifier.
Module names follow timm (branch0, branch1_0, ...), grouped as stem_*, mixed_3a, mixed_4a,
mixed_5a, inception_a{1-4}, reduction_a, inception_b{1-7}, reduction_b, inception_c{1-3}.

Features (``return_features=True``), spatial sizes at 299 px: v3 'stage1' Conv2d_2b (147),
'stage2' Conv2d_4a (71), 'stage3' Mixed_5d (35), 'stage4' Mixed_6e (17), 'stage5' Mixed_7c (8);
v4 'stage1' stem conv3 (147), 'stage2' mixed_4a (71), 'stage3' inception_a4 (35), 'stage4'
inception_b7 (17), 'stage5' inception_c3 (8) -- output strides 2..32 with 'valid' convs, so the
sizes are not exactly H/2^k.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from research.layers.common import Conv, ModuleDef, bind_norm, resolve_activation
from research.layers.heads import classifier_head
from research.layers.pooling import avg_pool, max_pool
from research.layers.remat import remat_call
from research.models.googlenet import BasicConv2d, BatchNormEps3, transform_input


def _cat(*xs):
    return jnp.concatenate(xs, axis=-1)


class _InceptionBase(nn.Module):
    """Shared fields of the Inception v3/v4 modules; ``conv_block`` is a configured BasicConv2d."""

    conv_block: ModuleDef = BasicConv2d

    def c(self, name, features, kernel, strides=1, padding=0):
        return self.conv_block(features, kernel, strides, padding, name=name)


# --------------------------------------------------------------------------- Inception v3 modules


class InceptionA(_InceptionBase):
    """v3 Fig. 5 (35x35; the 5x5 kept as in the release): 1x1 64 | 1x1 48 -> 5x5 64 | 1x1 64 ->
    3x3 96 -> 3x3 96 | avg pool 3x3 -> 1x1 ``pool_features``."""

    pool_features: int = 32

    @nn.compact
    def __call__(self, x):
        b1 = self.c('branch1x1', 64, 1)(x)
        b5 = self.c('branch5x5_2', 64, 5, padding=2)(self.c('branch5x5_1', 48, 1)(x))
        b3 = self.c('branch3x3dbl_1', 64, 1)(x)
        b3 = self.c('branch3x3dbl_3', 96, 3, padding=1)(self.c('branch3x3dbl_2', 96, 3, padding=1)(b3))
        bp = self.c('branch_pool', self.pool_features, 1)(avg_pool(x, 3, 1, padding=1))
        return _cat(b1, b5, b3, bp)


class InceptionB(_InceptionBase):
    """v3 Fig. 10 grid reduction 35 -> 17: 3x3/2 384 | 1x1 64 -> 3x3 96 -> 3x3/2 96 | max pool."""

    @nn.compact
    def __call__(self, x):
        b3 = self.c('branch3x3', 384, 3, 2)(x)
        bd = self.c('branch3x3dbl_1', 64, 1)(x)
        bd = self.c('branch3x3dbl_3', 96, 3, 2)(self.c('branch3x3dbl_2', 96, 3, padding=1)(bd))
        return _cat(b3, bd, max_pool(x, 3, 2))


class InceptionC(_InceptionBase):
    """v3 Fig. 6 (17x17, n=7 factorisation) with ``channels_7x7`` c7 in the 7x7 branches."""

    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = self.c('branch1x1', 192, 1)(x)
        b7 = self.c('branch7x7_1', c7, 1)(x)
        b7 = self.c('branch7x7_2', c7, (1, 7), padding=(0, 3))(b7)
        b7 = self.c('branch7x7_3', 192, (7, 1), padding=(3, 0))(b7)
        bd = self.c('branch7x7dbl_1', c7, 1)(x)
        bd = self.c('branch7x7dbl_2', c7, (7, 1), padding=(3, 0))(bd)
        bd = self.c('branch7x7dbl_3', c7, (1, 7), padding=(0, 3))(bd)
        bd = self.c('branch7x7dbl_4', c7, (7, 1), padding=(3, 0))(bd)
        bd = self.c('branch7x7dbl_5', 192, (1, 7), padding=(0, 3))(bd)
        bp = self.c('branch_pool', 192, 1)(avg_pool(x, 3, 1, padding=1))
        return _cat(b1, b7, bd, bp)


class InceptionD(_InceptionBase):
    """v3 grid reduction 17 -> 8: 1x1 192 -> 3x3/2 320 | 1x1 192 -> 1x7 -> 7x1 -> 3x3/2 192 | max pool."""

    @nn.compact
    def __call__(self, x):
        b3 = self.c('branch3x3_2', 320, 3, 2)(self.c('branch3x3_1', 192, 1)(x))
        b7 = self.c('branch7x7x3_1', 192, 1)(x)
        b7 = self.c('branch7x7x3_2', 192, (1, 7), padding=(0, 3))(b7)
        b7 = self.c('branch7x7x3_3', 192, (7, 1), padding=(3, 0))(b7)
        b7 = self.c('branch7x7x3_4', 192, 3, 2)(b7)
        return _cat(b3, b7, max_pool(x, 3, 2))


class InceptionE(_InceptionBase):
    """v3 Fig. 7 (8x8, expanded filter bank): 1x1 320 | 1x1 384 -> (1x3 | 3x1) 384 | 1x1 448 ->
    3x3 384 -> (1x3 | 3x1) 384 | avg pool -> 1x1 192."""

    @nn.compact
    def __call__(self, x):
        b1 = self.c('branch1x1', 320, 1)(x)
        b3 = self.c('branch3x3_1', 384, 1)(x)
        b3 = _cat(
            self.c('branch3x3_2a', 384, (1, 3), padding=(0, 1))(b3),
            self.c('branch3x3_2b', 384, (3, 1), padding=(1, 0))(b3),
        )
        bd = self.c('branch3x3dbl_2', 384, 3, padding=1)(self.c('branch3x3dbl_1', 448, 1)(x))
        bd = _cat(
            self.c('branch3x3dbl_3a', 384, (1, 3), padding=(0, 1))(bd),
            self.c('branch3x3dbl_3b', 384, (3, 1), padding=(1, 0))(bd),
        )
        bp = self.c('branch_pool', 192, 1)(avg_pool(x, 3, 1, padding=1))
        return _cat(b1, b3, bd, bp)


class InceptionAux(_InceptionBase):
    """v3 auxiliary classifier (Sec. 4, torchvision layout): avg pool 5x5/3 -> 1x1 128 -> 5x5 768
    -> global avg pool -> FC."""

    num_classes: int = 1000

    @nn.compact
    def __call__(self, x):
        x = avg_pool(x, 5, 3)
        x = self.c('conv1', 768, 5)(self.c('conv0', 128, 1)(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=x.dtype, name='fc')(x)


class InceptionV3(nn.Module):
    """Inception v3 (Szegedy et al. 2016, Table 1), torchvision layout; see the module docstring.

    Args (fields): aux_logits (the auxiliary head, on as torchvision), transform_input (as
    torchvision's pretrained model), dropout_rate (0.5), conv, norm (BN eps 1e-3; None = conv +
    bias), activation, dtype.
    """

    num_classes: int = 1000
    aux_logits: bool = True
    transform_input: bool = False
    dropout_rate: float = 0.5
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNormEps3
    activation: str | Callable = nn.relu
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        norm = bind_norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        cb = functools.partial(BasicConv2d, conv=self.conv, norm=norm, activation=act, dtype=self.dtype)
        x = jnp.asarray(x, self.dtype)
        if self.transform_input:
            x = transform_input(x)
        feats = {}
        x = cb(32, 3, 2, name='Conv2d_1a_3x3')(x)
        x = cb(32, 3, name='Conv2d_2a_3x3')(x)
        x = feats['stage1'] = cb(64, 3, padding=1, name='Conv2d_2b_3x3')(x)
        x = max_pool(x, 3, 2)
        x = cb(80, 1, name='Conv2d_3b_1x1')(x)
        x = feats['stage2'] = cb(192, 3, name='Conv2d_4a_3x3')(x)
        x = max_pool(x, 3, 2)
        for name, pf in (('Mixed_5b', 32), ('Mixed_5c', 64), ('Mixed_5d', 64)):
            x = remat_call(self.remat, self, lambda h: InceptionA(cb, pool_features=pf, name=name)(h), x)
        feats['stage3'] = x
        x = remat_call(self.remat, self, lambda h: InceptionB(cb, name='Mixed_6a')(h), x)
        for name, c7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160), ('Mixed_6e', 192)):
            x = remat_call(self.remat, self, lambda h: InceptionC(cb, channels_7x7=c7, name=name)(h), x)
        feats['stage4'] = x
        if self.aux_logits:
            aux = InceptionAux(cb, num_classes=self.num_classes, name='AuxLogits')
            if train or self.is_initializing():
                y = jnp.asarray(aux(x), jnp.float32)
                if train:
                    self.sow('intermediates', 'aux_logits', y)
                    feats['aux'] = y
        x = remat_call(self.remat, self, lambda h: InceptionD(cb, name='Mixed_7a')(h), x)
        x = remat_call(self.remat, self, lambda h: InceptionE(cb, name='Mixed_7b')(h), x)
        x = feats['stage5'] = remat_call(self.remat, self, lambda h: InceptionE(cb, name='Mixed_7c')(h), x)
        logits = classifier_head(x, self.num_classes, self.dropout_rate, train, self.dtype, 'fc')
        return (logits, feats) if return_features else logits


# --------------------------------------------------------------------------- Inception v4 modules


class Mixed3a(_InceptionBase):
    """v4 stem (Fig. 3), first split: max pool 3x3/2 | 3x3/2 96 -> 160 channels."""

    @nn.compact
    def __call__(self, x):
        return _cat(max_pool(x, 3, 2), self.c('conv', 96, 3, 2)(x))


class Mixed4a(_InceptionBase):
    """v4 stem (Fig. 3), second split: 1x1 64 -> 3x3 96 | 1x1 64 -> 7x1 64 -> 1x7 64 -> 3x3 96
    (valid) -> 192 channels."""

    @nn.compact
    def __call__(self, x):
        b0 = self.c('branch0_1', 96, 3)(self.c('branch0_0', 64, 1)(x))
        b1 = self.c('branch1_0', 64, 1)(x)
        b1 = self.c('branch1_1', 64, (1, 7), padding=(0, 3))(b1)
        b1 = self.c('branch1_2', 64, (7, 1), padding=(3, 0))(b1)
        return _cat(b0, self.c('branch1_3', 96, 3)(b1))


class Mixed5a(_InceptionBase):
    """v4 stem (Fig. 3), third split: 3x3/2 192 | max pool 3x3/2 -> 384 channels."""

    @nn.compact
    def __call__(self, x):
        return _cat(self.c('conv', 192, 3, 2)(x), max_pool(x, 3, 2))


def _avg_pool_no_pad(x):
    return avg_pool(x, 3, 1, padding=1, count_include_pad=False)


class InceptionV4A(_InceptionBase):
    """Fig. 4 (35x35): 1x1 96 | 1x1 64 -> 3x3 96 | 1x1 64 -> 3x3 96 -> 3x3 96 | avg pool -> 1x1 96."""

    @nn.compact
    def __call__(self, x):
        b0 = self.c('branch0', 96, 1)(x)
        b1 = self.c('branch1_1', 96, 3, padding=1)(self.c('branch1_0', 64, 1)(x))
        b2 = self.c('branch2_1', 96, 3, padding=1)(self.c('branch2_0', 64, 1)(x))
        b2 = self.c('branch2_2', 96, 3, padding=1)(b2)
        b3 = self.c('branch3', 96, 1)(_avg_pool_no_pad(x))
        return _cat(b0, b1, b2, b3)


class ReductionV4A(_InceptionBase):
    """Fig. 7 (35 -> 17), k=192, l=224, m=256, n=384: 3x3/2 n | 1x1 k -> 3x3 l -> 3x3/2 m | max pool."""

    @nn.compact
    def __call__(self, x):
        b0 = self.c('branch0', 384, 3, 2)(x)
        b1 = self.c('branch1_1', 224, 3, padding=1)(self.c('branch1_0', 192, 1)(x))
        b1 = self.c('branch1_2', 256, 3, 2)(b1)
        return _cat(b0, b1, max_pool(x, 3, 2))


class InceptionV4B(_InceptionBase):
    """Fig. 5 (17x17): 1x1 384 | 1x1 192 -> 1x7 224 -> 7x1 256 | 1x1 192 -> 7x1 192 -> 1x7 224 ->
    7x1 224 -> 1x7 256 | avg pool -> 1x1 128."""

    @nn.compact
    def __call__(self, x):
        b0 = self.c('branch0', 384, 1)(x)
        b1 = self.c('branch1_0', 192, 1)(x)
        b1 = self.c('branch1_1', 224, (1, 7), padding=(0, 3))(b1)
        b1 = self.c('branch1_2', 256, (7, 1), padding=(3, 0))(b1)
        b2 = self.c('branch2_0', 192, 1)(x)
        b2 = self.c('branch2_1', 192, (7, 1), padding=(3, 0))(b2)
        b2 = self.c('branch2_2', 224, (1, 7), padding=(0, 3))(b2)
        b2 = self.c('branch2_3', 224, (7, 1), padding=(3, 0))(b2)
        b2 = self.c('branch2_4', 256, (1, 7), padding=(0, 3))(b2)
        b3 = self.c('branch3', 128, 1)(_avg_pool_no_pad(x))
        return _cat(b0, b1, b2, b3)


class ReductionV4B(_InceptionBase):
    """Fig. 8 (17 -> 8): 1x1 192 -> 3x3/2 192 | 1x1 256 -> 1x7 256 -> 7x1 320 -> 3x3/2 320 | max pool."""

    @nn.compact
    def __call__(self, x):
        b0 = self.c('branch0_1', 192, 3, 2)(self.c('branch0_0', 192, 1)(x))
        b1 = self.c('branch1_0', 256, 1)(x)
        b1 = self.c('branch1_1', 256, (1, 7), padding=(0, 3))(b1)
        b1 = self.c('branch1_2', 320, (7, 1), padding=(3, 0))(b1)
        b1 = self.c('branch1_3', 320, 3, 2)(b1)
        return _cat(b0, b1, max_pool(x, 3, 2))


class InceptionV4C(_InceptionBase):
    """Fig. 6 (8x8): 1x1 256 | 1x1 384 -> (1x3 | 3x1) 256 | 1x1 384 -> 3x1 448 -> 1x3 512 ->
    (1x3 | 3x1) 256 | avg pool -> 1x1 256."""

    @nn.compact
    def __call__(self, x):
        b0 = self.c('branch0', 256, 1)(x)
        b1 = self.c('branch1_0', 384, 1)(x)
        b1 = _cat(
            self.c('branch1_1a', 256, (1, 3), padding=(0, 1))(b1),
            self.c('branch1_1b', 256, (3, 1), padding=(1, 0))(b1),
        )
        b2 = self.c('branch2_0', 384, 1)(x)
        b2 = self.c('branch2_1', 448, (3, 1), padding=(1, 0))(b2)
        b2 = self.c('branch2_2', 512, (1, 3), padding=(0, 1))(b2)
        b2 = _cat(
            self.c('branch2_3a', 256, (1, 3), padding=(0, 1))(b2),
            self.c('branch2_3b', 256, (3, 1), padding=(1, 0))(b2),
        )
        b3 = self.c('branch3', 256, 1)(_avg_pool_no_pad(x))
        return _cat(b0, b1, b2, b3)


class InceptionV4(nn.Module):
    """Inception v4 (Szegedy et al. 2017, Fig. 9): stem, 4 x Inception-A, Reduction-A,
    7 x Inception-B, Reduction-B, 3 x Inception-C, average pool, dropout (keep 0.8), FC.

    Args (fields): num_classes, dropout_rate (0.2), conv, norm (BN eps 1e-3), activation, dtype.
    """

    num_classes: int = 1000
    dropout_rate: float = 0.2
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNormEps3
    activation: str | Callable = nn.relu
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        norm = bind_norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        cb = functools.partial(BasicConv2d, conv=self.conv, norm=norm, activation=act, dtype=self.dtype)
        x = jnp.asarray(x, self.dtype)
        feats = {}
        x = cb(32, 3, 2, name='stem_conv1')(x)
        x = cb(32, 3, name='stem_conv2')(x)
        x = feats['stage1'] = cb(64, 3, padding=1, name='stem_conv3')(x)
        x = remat_call(self.remat, self, lambda h: Mixed3a(cb, name='mixed_3a')(h), x)
        x = feats['stage2'] = remat_call(self.remat, self, lambda h: Mixed4a(cb, name='mixed_4a')(h), x)
        x = remat_call(self.remat, self, lambda h: Mixed5a(cb, name='mixed_5a')(h), x)
        for i in range(4):
            x = remat_call(self.remat, self, lambda h: InceptionV4A(cb, name=f'inception_a{i + 1}')(h), x)
        feats['stage3'] = x
        x = remat_call(self.remat, self, lambda h: ReductionV4A(cb, name='reduction_a')(h), x)
        for i in range(7):
            x = remat_call(self.remat, self, lambda h: InceptionV4B(cb, name=f'inception_b{i + 1}')(h), x)
        feats['stage4'] = x
        x = remat_call(self.remat, self, lambda h: ReductionV4B(cb, name='reduction_b')(h), x)
        for i in range(3):
            x = remat_call(self.remat, self, lambda h: InceptionV4C(cb, name=f'inception_c{i + 1}')(h), x)
        feats['stage5'] = x
        logits = classifier_head(x, self.num_classes, self.dropout_rate, train, self.dtype, 'fc')
        return (logits, feats) if return_features else logits


# Szegedy et al. 2016 (v3, Table 1) and 2017 (v4, Fig. 9).
REGISTRY_ENTRIES = {
    'inception_v3': InceptionV3,
    'inception_v4': InceptionV4,
}
