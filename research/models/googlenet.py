"""GoogLeNet (Inception v1): Szegedy et al. 2015, "Going Deeper with Convolutions", Table 1 and
Fig. 3, built from ``research.layers.blocks.InceptionModule``.

Default = torchvision's ``googlenet`` (converts its weights): every conv is ``BasicConv2d``
(conv without bias -> BN with eps 1e-3 -> ReLU), the "5x5" branch uses a 3x3 kernel
(``branch3_kernel=3``, a known torchvision/Caffe-port discrepancy), no LRN, max pools with
ceil_mode, dropout 0.2 before the classifier. 6,624,904 params without the auxiliary heads,
1.498 GMACs at 224 px. ``aux_logits=True`` adds the two auxiliary classifiers (after 4a and 4d:
adaptive avg pool 4x4 -> 1x1 conv 128 -> FC 1024 -> dropout 0.7 -> FC, torchvision layout;
3,188,968 + 3,191,016 params at 1000 classes).

``googlenet_paper``: Table 1 as published: 5x5 convs in the third branch, convs with bias and
no BN (the paper predates BN), local response normalisation after pool1 and after conv3 (Fig. 3;
Caffe's LRN with alpha/n, n=5, alpha=1e-4, beta=0.75, k=1), dropout 0.4. 6,998,552 params at 1000
classes without the auxiliary heads (Table 1's "params" column sums to about 6.8M; its
per-layer figures do not all match a plain count, e.g. 2.7K for the 7x7x3x64 conv1).

``transform_input=True`` maps torchvision-normalised inputs to the (x - 0.5) / 0.5 scaling of
the original weights, as torchvision does for its pretrained GoogLeNet and Inception v3.

Features (``return_features=True``): 'stage1' conv1 (stride 2), 'stage2' conv3 (4), 'stage3'
inception3b (8), 'stage4' inception4e (16), 'stage5' inception5b (32): 112, 56, 28, 14, 7 at
224 px; with aux heads on, also 'aux1' and 'aux2' (their logits).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.blocks import InceptionModule, _norm, conv_norm_act
from research.layers.common import BatchNorm, Conv, ModuleDef, bind_norm, resolve_activation
from research.layers.heads import classifier_head
from research.layers.pooling import adaptive_avg_pool, max_pool
from research.layers.remat import remat_call
from research.layers.stems import imagenet_stem
from research.models.alexnet import local_response_norm

#: torchvision's ``BasicConv2d`` norm: BatchNorm with eps 0.001 (GoogLeNet and Inception v3).
BatchNormEps3 = functools.partial(BatchNorm, epsilon=1e-3)

#: Table 1: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj) per inception module.
INCEPTION_V1_TABLE = {
    '3a': (64, 96, 128, 16, 32, 32),
    '3b': (128, 128, 192, 32, 96, 64),
    '4a': (192, 96, 208, 16, 48, 64),
    '4b': (160, 112, 224, 24, 64, 64),
    '4c': (128, 128, 256, 24, 64, 64),
    '4d': (112, 144, 288, 32, 64, 64),
    '4e': (256, 160, 320, 32, 128, 128),
    '5a': (256, 160, 320, 32, 128, 128),
    '5b': (384, 192, 384, 48, 128, 128),
}


class BasicConv2d(nn.Module):
    """torchvision's ``BasicConv2d``: conv (no bias) -> norm -> activation, i.e. ``conv_norm_act``
    as a module, so that its submodules 'conv' and 'bn' nest under its name as torchvision's do.
    ``norm=None`` gives conv + bias -> activation. Kernel, strides, padding: int or pair (padding
    symmetric per dim, torch style)."""

    features: int
    kernel_size: int | Sequence[int] = 1
    strides: int | Sequence[int] = 1
    padding: int | Sequence[int] = 0
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNormEps3
    activation: str | Callable = nn.relu
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        return conv_norm_act(
            x,
            functools.partial(self.conv, dtype=self.dtype),
            _norm(self.norm, train, self.dtype),
            resolve_activation(self.activation),
            self.features,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            name='conv',
            norm_name='bn',
        )


class GoogLeNetAux(nn.Module):
    """Auxiliary classifier (Szegedy et al. 2015, Sec. 5; torchvision ``InceptionAux``): adaptive
    avg pool 4x4 -> 1x1 conv 128 -> flatten (C, H, W) -> FC 1024 -> ReLU -> dropout -> FC."""

    num_classes: int
    dropout_rate: float = 0.7
    conv_block: ModuleDef = BasicConv2d

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = adaptive_avg_pool(x, 4)
        x = self.conv_block(128, name='conv')(x, train)
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(1024, dtype=x.dtype, name='fc1')(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=x.dtype, name='fc2')(x)


def transform_input(x):
    """torchvision's ``_transform_input``: ImageNet mean/std normalisation -> (x - 0.5) / 0.5."""
    mean = jnp.asarray([0.485, 0.456, 0.406], x.dtype)
    std = jnp.asarray([0.229, 0.224, 0.225], x.dtype)
    return x * (std / 0.5) + (mean - 0.5) / 0.5


class GoogLeNet(nn.Module):
    """GoogLeNet (Szegedy et al. 2015, Table 1); see the module docstring.

    Args (fields):
      branch3_kernel: kernel of the third ("5x5") branch: 3 (torchvision) or 5 (paper).
      lrn: LRN after pool1 and conv3 (paper, Fig. 3); off in torchvision.
      aux_logits: the two auxiliary classifiers (train-time heads; their logits are in the
        feature dict as 'aux1', 'aux2' and sown to 'intermediates' as 'aux1_logits',
        'aux2_logits'; the loss must add them,
        weight 0.3 in the paper).
      transform_input: see the module docstring. dropout_rate: before the classifier (0.2
        torchvision, 0.4 paper). aux_dropout_rate: 0.7.
      conv, norm (default BN eps 1e-3; None = conv + bias), activation, dtype: ablation knobs.
      remat: each inception module under ``nn.remat`` (same parameters and values, less activation
        memory for about one more forward pass; ``research.layers.remat``).
    """

    num_classes: int = 1000
    branch3_kernel: int = 3
    lrn: bool = False
    aux_logits: bool = False
    transform_input: bool = False
    dropout_rate: float = 0.2
    aux_dropout_rate: float = 0.7
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNormEps3
    activation: str | Callable = nn.relu
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        norm = bind_norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        basic = functools.partial(BasicConv2d, conv=self.conv, norm=norm, activation=act, dtype=self.dtype)
        x = jnp.asarray(x, self.dtype)
        if self.transform_input:
            x = transform_input(x)
        feats = {}

        def inception(h, key):
            unit = functools.partial(
                InceptionModule,
                *INCEPTION_V1_TABLE[key],
                branch3_kernel=self.branch3_kernel,
                conv=self.conv,
                norm=norm,
                activation=act,
                dtype=self.dtype,
                name=f'inception{key}',
            )
            return remat_call(self.remat, self, lambda y: unit()(y), h)

        def aux(h, name):
            y = GoogLeNetAux(self.num_classes, self.aux_dropout_rate, conv_block=basic, name=name)(h, train)
            y = jnp.asarray(y, jnp.float32)
            self.sow('intermediates', f'{name}_logits', y)
            feats[name] = y

        feats['stage1'], x = imagenet_stem(
            x, self.conv, norm, act, 64, block=basic, pool_padding=0, ceil_mode=True
        )
        if self.lrn:
            x = local_response_norm(x, k=1.0, alpha_over_size=True)
        x = basic(64, 1, name='conv2')(x)
        x = feats['stage2'] = basic(192, 3, 1, 1, name='conv3')(x)
        if self.lrn:
            x = local_response_norm(x, k=1.0, alpha_over_size=True)
        x = max_pool(x, 3, 2, ceil_mode=True)
        x = inception(x, '3a')
        x = feats['stage3'] = inception(x, '3b')
        x = max_pool(x, 3, 2, ceil_mode=True)
        x = inception(x, '4a')
        if self.aux_logits:
            aux(x, 'aux1')
        x = inception(inception(x, '4b'), '4c')
        x = inception(x, '4d')
        if self.aux_logits:
            aux(x, 'aux2')
        x = feats['stage4'] = inception(x, '4e')
        x = max_pool(x, 2, 2, ceil_mode=True)
        x = inception(x, '5a')
        x = feats['stage5'] = inception(x, '5b')
        logits = classifier_head(x, self.num_classes, self.dropout_rate, train, self.dtype, 'fc')
        return (logits, feats) if return_features else logits


# The published network: 5x5 branch, conv + bias (no BN), LRN, dropout 0.4.
GoogLeNetPaper = functools.partial(GoogLeNet, branch3_kernel=5, norm=None, lrn=True, dropout_rate=0.4)

# Szegedy et al. 2015, Table 1.
REGISTRY_ENTRIES = {
    'googlenet': GoogLeNet,
    'googlenet_paper': GoogLeNetPaper,
}
