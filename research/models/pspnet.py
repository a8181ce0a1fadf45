"""PSPNet: Zhao, Shi, Qi, Wang, Jia 2017, "Pyramid Scene Parsing Network" (CVPR), Fig. 3, Sec. 3-4.

A dilated ResNet (output stride 8: layer3/layer4 strides replaced by dilation 2/4, Sec. 3.2) ->
pyramid pooling module (``PyramidPooling``: average pools to 1x1, 2x2, 3x3, 6x6 bins, each a 1x1
conv to C/4 = 512 with BN + ReLU, bilinear upsampling, concatenated with the input: 4096 channels)
-> 3x3 conv 512 + BN + ReLU -> dropout 0.1 -> 1x1 classifier -> bilinear upsampling x8. Deep
supervision (Sec. 3.3, Fig. 4): an auxiliary head on res4b22 (layer3; 3x3 conv 256, BN, ReLU,
dropout 0.1, 1x1 classifier; loss weight 0.4 in the paper, set by the loss), returned with
``return_aux=True``. The backbone is torchvision's ResNet (one 7x7 stem conv), not the authors'
deep-stem ResNet. 48,957,802 params at 21 classes (46,592,597 without aux). Bilinear interpolation uses align_corners=True as the authors' Caffe interp layer.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.blocks import PyramidPooling, conv_norm_act
from research.layers.common import BatchNorm, Conv, ModuleDef, bind_norm
from research.models.deeplab import _resize, backbone_of


class PSPNet(nn.Module):
    """PSPNet (see the module docstring). Fields: bins ((1, 2, 3, 6); () = the dilated-FCN baseline),
    pooling ('avg' / 'max', Table 1), bin_features (None = C/len(bins)), block / width / stem_width (backbone),
    head_features (512), aux_features (256), aux, dropout_rate (0.1), output_stride (8), layers, remat (each
    backbone block under ``nn.remat``, ``ResNet.remat``)."""

    num_classes: int = 21
    layers: Sequence[int] = (3, 4, 6, 3)
    output_stride: int = 8
    block: str | ModuleDef = 'bottleneck'
    width: int = 64
    stem_width: int = 64
    bins: Sequence[int] = (1, 2, 3, 6)
    bin_features: int | None = None
    pooling: str = 'avg'
    head_features: int = 512
    aux: bool = True
    aux_features: int = 256
    dropout_rate: float = 0.1
    align_corners: bool = True
    conv: ModuleDef = Conv
    norm: Any = BatchNorm
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_aux: bool = False):
        size = x.shape[1:3]
        norm = bind_norm(self.norm, train, self.dtype)
        conv = functools.partial(self.conv, dtype=self.dtype)
        feats = backbone_of(self)(x, train)
        y = PyramidPooling(
            self.bins,
            self.bin_features,
            self.align_corners,
            self.pooling,
            conv=self.conv,
            norm=self.norm,
            dtype=self.dtype,
            name='ppm',
        )(feats['stage5'], train=train)
        y = conv_norm_act(
            y, conv, norm, nn.relu, self.head_features, 3, name='head_conv', norm_name='head_bn'
        )
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = conv(self.num_classes, (1, 1), name='cls')(y)
        logits = _resize(y, size, self.align_corners)
        if self.aux and (return_aux or self.is_initializing()):
            a = conv_norm_act(
                feats['stage4'],
                conv,
                norm,
                nn.relu,
                self.aux_features,
                3,
                name='aux_conv',
                norm_name='aux_bn',
            )
            a = nn.Dropout(self.dropout_rate, deterministic=not train)(a)
            a = conv(self.num_classes, (1, 1), name='aux_cls')(a)
            if return_aux:
                return logits, {'aux': _resize(a, size, self.align_corners)}
        elif return_aux:
            raise ValueError('PSPNet built with aux=False has no auxiliary head')
        return logits


REGISTRY_ENTRIES = {
    'pspnet_resnet18': functools.partial(PSPNet, layers=(2, 2, 2, 2), block='basic'),  # CPU-sized (width=16)
    'pspnet_resnet50': functools.partial(PSPNet, layers=(3, 4, 6, 3)),
    'pspnet_resnet101': functools.partial(PSPNet, layers=(3, 4, 23, 3)),
}
