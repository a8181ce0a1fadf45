"""Fully convolutional networks.

Long, Shelhamer, Darrell 2015, "Fully Convolutional Networks for Semantic Segmentation" (CVPR),
Fig. 3 and Sec. 4, in the layout of the authors' Caffe models (fcn.berkeleyvision.org, voc-fcn*s):

- VGG-16 (Table 1) with conv1_1 padded by 100 (so any input size survives the 32x reduction and the
  7x7 fc6), ceil-mode 2x2 max pools, fc6/fc7 turned into convolutions (7x7x4096, 1x1x4096, ReLU,
  dropout 0.5) and a 1x1 ``score_fr`` classifier.
- FCN-32s: one transposed conv x32 (64x64, stride 32), cropped at offset 19.
- FCN-16s: score x2 (4x4/2) + ``score_pool4`` (1x1 on pool4, crop 5), then x16 (32x32/16, crop 27).
- FCN-8s: as 16s, fused again x2 with ``score_pool3`` (crop 9), then x8 (16x16/8, crop 31).
- Transposed convs have no bias and start as bilinear upsampling (Sec. 3.3: "initialize the 2x
  upsampling to bilinear interpolation"), kernel[..., o, i] = bilinear * [o == i]; the skip score
  layers start at zero (Sec. 4.2) so each net starts as its coarser parent. The crop offsets are
  Caffe's (they follow from the padding of 100); the output is cropped to the input size.
- ``base_features`` (64) and ``fc_features`` (4096) scale the widths (small nets for tests).

torchvision's ``fcn_resnet50`` / ``fcn_resnet101`` are a different model with the same name: a dilated
ResNet (output stride 8) with an ``FCNHead`` (3x3 conv to C/4, BN, ReLU, dropout 0.1, 1x1 conv) and
an auxiliary FCNHead on layer3 (``aux``), bilinear upsampling (``TorchvisionFCN``).

``__call__(x, train=False, return_aux=False)`` -> float32 logits (N, H, W, num_classes).
Parameter counts (21 classes; tested): fcn32s 136,152,917, fcn16s 134,815,994, fcn8s 134,489,759
(the transposed-conv kernels included); torchvision's fcn_resnet50 35,322,218 with aux (= torchvision;
32,957,013 without), fcn_resnet101 54,314,346.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from research.layers.common import BatchNorm, Conv, ModuleDef
from research.layers.conv import ConvTranspose
from research.layers.pooling import max_pool
from research.models.deeplab import FCNHead, _resize, _with_aux, backbone_of

#: VGG-16 (Table 1, D) conv widths per block at base 64.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def bilinear_kernel(size: int) -> np.ndarray:
    """Caffe/FCN ``upsample_filt``: the 2-D bilinear interpolation kernel of side ``size`` (2 x factor)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.arange(size, dtype=np.float64)
    f = 1 - np.abs(og - center) / factor
    return np.outer(f, f).astype(np.float32)


def bilinear_init(key, shape, dtype=jnp.float32):
    """Initialiser for a ``ConvTranspose`` kernel (kh, kw, out, in): bilinear on the channel diagonal."""
    kh, kw, out, inp = shape
    if kh != kw:
        raise ValueError(f'bilinear_init needs a square kernel, got {shape}')
    k = np.zeros(shape, np.float32)
    for c in range(min(out, inp)):
        k[:, :, c, c] = bilinear_kernel(kh)
    return jnp.asarray(k, dtype)


def _crop(x, offset: int, size):
    return x[:, offset : offset + size[0], offset : offset + size[1], :]


class FCN(nn.Module):
    """FCN-32s / 16s / 8s on VGG-16 (``stride`` 32, 16 or 8); see the module docstring."""

    num_classes: int = 21
    stride: int = 8
    base_features: int = 64
    fc_features: int = 4096
    dropout_rate: float = 0.5
    conv: ModuleDef = Conv
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_aux: bool = False):
        if self.stride not in (8, 16, 32):
            raise ValueError(f'FCN stride must be 8, 16 or 32; got {self.stride!r}')
        if return_aux:
            raise ValueError('FCN has no auxiliary head')
        size = x.shape[1:3]
        conv = functools.partial(self.conv, dtype=self.dtype)
        up = functools.partial(ConvTranspose, use_bias=False, kernel_init=bilinear_init, dtype=self.dtype)
        k = self.num_classes
        h = jnp.asarray(x, self.dtype)
        pools = {}
        for b, widths in enumerate(VGG16_BLOCKS, start=1):
            for i, w in enumerate(widths, start=1):
                pad = 100 if (b, i) == (1, 1) else 1
                w = w * self.base_features // 64
                h = nn.relu(conv(w, (3, 3), padding=((pad, pad), (pad, pad)), name=f'conv{b}_{i}')(h))
            h = max_pool(h, 2, 2, ceil_mode=True)
            pools[b] = h
        h = nn.relu(conv(self.fc_features, (7, 7), padding='VALID', name='fc6')(h))
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        h = nn.relu(conv(self.fc_features, (1, 1), name='fc7')(h))
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        score = conv(k, (1, 1), name='score_fr')(h)
        zeros = nn.initializers.zeros_init()
        if self.stride == 32:
            out = _crop(up(k, 64, strides=32, name='upscore')(score), 19, size)
        else:
            score = up(k, 4, strides=2, name='upscore2')(score)
            p4 = conv(k, (1, 1), kernel_init=zeros, name='score_pool4')(pools[4])
            score = score + _crop(p4, 5, score.shape[1:3])
            if self.stride == 16:
                out = _crop(up(k, 32, strides=16, name='upscore16')(score), 27, size)
            else:
                score = up(k, 4, strides=2, name='upscore_pool4')(score)
                p3 = conv(k, (1, 1), kernel_init=zeros, name='score_pool3')(pools[3])
                score = score + _crop(p3, 9, score.shape[1:3])
                out = _crop(up(k, 16, strides=8, name='upscore8')(score), 31, size)
        return jnp.asarray(out, jnp.float32)


class TorchvisionFCN(nn.Module):
    """torchvision's ``fcn_resnet50/101``: dilated ResNet (output stride 8), FCNHead on layer4, optional
    auxiliary FCNHead on layer3 (``aux``), bilinear upsampling (align_corners False) to the input.
    ``remat``: each backbone block under ``nn.remat`` (``ResNet.remat``)."""

    num_classes: int = 21
    layers: Sequence[int] = (3, 4, 6, 3)
    output_stride: int = 8
    block: str | ModuleDef = 'bottleneck'
    width: int = 64
    stem_width: int = 64
    aux: bool = True
    conv: ModuleDef = Conv
    norm: Any = BatchNorm
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_aux: bool = False):
        size = x.shape[1:3]
        feats = backbone_of(self)(x, train)
        y = FCNHead(self.num_classes, conv=self.conv, norm=self.norm, dtype=self.dtype, name='classifier')(
            feats['stage5'], train
        )
        return _with_aux(self, feats['stage4'], size, train, return_aux, _resize(y, size))


REGISTRY_ENTRIES = {
    'fcn32s': functools.partial(FCN, stride=32),
    'fcn16s': functools.partial(FCN, stride=16),
    'fcn8s': functools.partial(FCN, stride=8),
    'fcn_resnet18': functools.partial(TorchvisionFCN, layers=(2, 2, 2, 2), block='basic'),  # CPU-sized
    'fcn_resnet50': functools.partial(TorchvisionFCN, layers=(3, 4, 6, 3)),
    'fcn_resnet101': functools.partial(TorchvisionFCN, layers=(3, 4, 23, 3)),
}
