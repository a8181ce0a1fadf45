"""Encoder-decoder segmentation nets that upsample with max-pooling indices.

- SegNet: Badrinarayanan, Kendall, Cipolla 2017, "SegNet: A Deep Convolutional Encoder-Decoder
  Architecture for Image Segmentation" (TPAMI), Fig. 2-3, Sec. 3: the 13 convs of VGG-16 (3x3,
  BN, ReLU) as encoder, 2x2/2 max pools that store their argmax ("pooling indices"); a mirrored
  decoder in which every stage first max-unpools with the indices of its encoder stage (Fig. 3:
  values land at the remembered positions, zeros elsewhere) and then densifies with 3x3 conv-BN-ReLU
  (widths mirror the encoder: 512x3, 512-512-256, 256-256-128, 128-64, 64), and a final 3x3 conv
  to ``num_classes`` (the softmax classifier's input). No fully connected layers: 29,455,125 params at 21 classes
  (the paper's 29.5 M).
- DeconvNet: Noh, Hong, Han 2015, "Learning Deconvolution Network for Semantic Segmentation"
  (ICCV), Fig. 2 / Table 1: VGG-16 convs with BN, fc6 (7x7 conv, valid: 7x7 -> 1x1) and fc7 (1x1,
  4096), a 7x7 deconvolution back to 7x7x512, then per stage unpooling (indices of the mirrored
  pool) and 3x3 deconvolutions (transposed convs, stride 1) with BN + ReLU, and a 1x1 score layer.
  The 7x7 fc6 needs a 224 px input (pool5 7x7); ``fc_kernel`` adapts it to other sizes (pool5's size).
  251,805,653 params at 21 classes (the paper's 252 M).

``base_features`` scales every width (64 = the papers); ``__call__(x, train=False)`` returns float32
logits (N, H, W, num_classes) at the input size (unpooling restores odd sizes exactly).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.layers.blocks import conv_norm_act
from research.layers.common import BatchNorm, Conv, ModuleDef, bind_norm
from research.layers.conv import ConvTranspose
from research.layers.pooling import max_pool_with_indices, max_unpool
from research.models.fcn import VGG16_BLOCKS

#: Decoder widths per stage, deepest first (SegNet Fig. 2 / DeconvNet Table 1).
DECODER_BLOCKS = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64, 64))


def _encoder(module, x, conv, norm, scale):
    """VGG-16 conv-BN-ReLU stages with 2x2/2 max pools; returns x and [(indices, pre-pool size)].
    The pre-pool maps are sown as 'intermediates'/'enc<b>'."""
    pools = []
    for b, widths in enumerate(VGG16_BLOCKS, start=1):
        for i, w in enumerate(widths, start=1):
            x = conv_norm_act(
                x,
                conv,
                norm,
                nn.relu,
                w * scale // 64,
                3,
                use_bias=True,
                name=f'conv{b}_{i}',
                norm_name=f'bn{b}_{i}',
            )
        size = x.shape[1:3]
        module.sow('intermediates', f'enc{b}', x)
        x, idx = max_pool_with_indices(x, 2, 2)
        pools.append((idx, size))
    return x, pools


class SegNet(nn.Module):
    """SegNet (see the module docstring). Sows 'intermediates': enc<b> (encoder map before pool b),
    dec_in<b> / unpool<b> (decoder map before / after unpooling with pool b's indices)."""

    num_classes: int = 21
    base_features: int = 64
    conv: ModuleDef = Conv
    norm: Any = BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_aux: bool = False, return_indices: bool = False):
        if return_aux:
            raise ValueError('SegNet has no auxiliary head')
        norm = bind_norm(self.norm, train, self.dtype)
        conv = functools.partial(self.conv, dtype=self.dtype)
        x, pools = _encoder(self, jnp.asarray(x, self.dtype), conv, norm, self.base_features)
        n = len(DECODER_BLOCKS)
        for s, widths in enumerate(DECODER_BLOCKS):
            b = n - s
            idx, size = pools[b - 1]
            self.sow('intermediates', f'dec_in{b}', x)
            x = max_unpool(x, idx, size)
            self.sow('intermediates', f'unpool{b}', x)
            for i, w in enumerate(widths, start=1):
                last = s == n - 1 and i == len(widths)
                if last:
                    x = conv(self.num_classes, (3, 3), padding=1, name='classifier')(x)
                else:
                    x = conv_norm_act(
                        x,
                        conv,
                        norm,
                        nn.relu,
                        w * self.base_features // 64,
                        3,
                        use_bias=True,
                        name=f'dec{b}_{i}',
                        norm_name=f'dec_bn{b}_{i}',
                    )
        x = jnp.asarray(x, jnp.float32)
        return (x, pools) if return_indices else x


class DeconvNet(nn.Module):
    """DeconvNet (see the module docstring). ``fc_kernel`` = pool5's spatial size (7 at 224 px)."""

    num_classes: int = 21
    base_features: int = 64
    fc_features: int = 4096
    fc_kernel: int = 7
    conv: ModuleDef = Conv
    norm: Any = BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_aux: bool = False):
        if return_aux:
            raise ValueError('DeconvNet has no auxiliary head')
        norm = bind_norm(self.norm, train, self.dtype)
        conv = functools.partial(self.conv, dtype=self.dtype)
        deconv = functools.partial(ConvTranspose, dtype=self.dtype)
        size = x.shape[1:3]
        x, pools = _encoder(self, jnp.asarray(x, self.dtype), conv, norm, self.base_features)
        if x.shape[1:3] != (self.fc_kernel, self.fc_kernel):
            raise ValueError(
                f'DeconvNet: pool5 is {x.shape[1]}x{x.shape[2]} but fc_kernel={self.fc_kernel} '
                f'(the paper: 224 px inputs, fc_kernel 7)'
            )
        k = self.fc_kernel
        x = nn.relu(norm(name='bn6')(conv(self.fc_features, (k, k), padding='VALID', name='fc6')(x)))
        x = nn.relu(norm(name='bn7')(conv(self.fc_features, (1, 1), name='fc7')(x)))
        x = deconv(512 * self.base_features // 64, k, name='deconv6')(x)  # 1x1 -> kxk
        x = nn.relu(norm(name='debn6')(x))
        n = len(DECODER_BLOCKS)
        for s, widths in enumerate(DECODER_BLOCKS):
            b = n - s
            idx, psize = pools[b - 1]
            x = max_unpool(x, idx, psize)
            for i, w in enumerate(widths, start=1):
                x = deconv(w * self.base_features // 64, 3, padding=1, name=f'deconv{b}_{i}')(x)
                x = nn.relu(norm(name=f'debn{b}_{i}')(x))
        x = conv(self.num_classes, (1, 1), name='score')(x)
        assert x.shape[1:3] == size
        return jnp.asarray(x, jnp.float32)


REGISTRY_ENTRIES = {'segnet': SegNet, 'deconvnet': DeconvNet}
