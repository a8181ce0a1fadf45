"""U-Net: Ronneberger, Fischer, Brox 2015, "U-Net: Convolutional Networks for Biomedical Image
Segmentation" (MICCAI), Fig. 1 and Sec. 2.

Contracting path: per level two 3x3 convs + ReLU, then 2x2/2 max pool, the features doubling per
level (64 ... 1024 at ``depth`` 4, ``base_features`` 64); dropout at the end of the contracting path
(Sec. 3.1: "Drop-out layers at the end of the contracting path", ``dropout_rate`` 0.5, rng 'dropout').
Expansive path: 2x2 "up-convolution" (transposed conv, stride 2) halving the features,
concatenation with the (cropped) feature map of the same level, two 3x3 convs + ReLU; a final 1x1
conv to ``num_classes``.

``padding='valid'`` is the paper: unpadded convs, so every conv loses 2 pixels and the skip features
are centre-cropped ("crop-and-concat"); the output is smaller than the input (572x572 in -> 388x388
out in Fig. 1; the paper tiles large images with overlap). Inputs must give even sizes before each
pool and a positive output: at depth 4 the input is 16 b + 124 and the output 16 b - 60, b >= 4
being the bottom map's side (572 -> 388 with b = 28; 284 -> 100; the smallest is 188 -> 4). ``padding='same'`` (``unet``, the common variant)
pads the convs, so the output has the input size (input divisible by 2**depth). ``norm`` None as the
paper (2015, no BN); 'batch' adds BN after every conv. 31,031,810 params at 2 classes (Fig. 1's
net), 31,033,045 at the default 21.

``overlap_tile=True`` (valid padding) is the paper's overlap-tile strategy (Fig. 2) for one tile:
the input is mirror-padded to the smallest size whose valid output covers it, and the output is
centre-cropped back to the input size, so the valid U-Net trains on dense labels of the input's size
(the ``unet_valid`` segmentation configs use it).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.layers.blocks import conv_norm_act
from research.layers.common import Conv, ModuleDef, bind_norm
from research.layers.conv import ConvTranspose
from research.layers.pooling import max_pool


def center_crop(x, size):
    """Centre crop of NHWC ``x`` to spatial ``size`` (the paper's crop for crop-and-concat)."""
    dh, dw = x.shape[1] - size[0], x.shape[2] - size[1]
    if dh < 0 or dw < 0:
        raise ValueError(f'cannot crop {x.shape[1:3]} to {tuple(size)}')
    return x[:, dh // 2 : dh // 2 + size[0], dw // 2 : dw // 2 + size[1], :]


def overlap_tile_input_size(size: int, depth: int = 4) -> int:
    """The smallest input side >= ``size`` (same parity) whose valid-padding output is >= ``size``."""
    padded = size
    while True:
        try:
            if unet_valid_output_size(padded, depth) >= size:
                return padded
        except ValueError:
            pass
        padded += 2


def unet_valid_output_size(size: int, depth: int = 4) -> int:
    """Output side of the valid-padding U-Net for an input side (572 -> 388 at depth 4)."""
    for _ in range(depth):
        size -= 4
        if size % 2:
            raise ValueError('input size gives an odd map before a pool')
        size //= 2
    size -= 4
    for _ in range(depth):
        size = 2 * size - 4
    if size <= 0:
        raise ValueError('input too small for the valid-padding U-Net (the output would be empty)')
    return size


class UNet(nn.Module):
    """U-Net (see the module docstring)."""

    num_classes: int = 21
    depth: int = 4
    base_features: int = 64
    padding: str = 'same'
    overlap_tile: bool = False
    dropout_rate: float = 0.5
    norm: Any = None
    conv: ModuleDef = Conv
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_aux: bool = False):
        if return_aux:
            raise ValueError('UNet has no auxiliary head')
        if self.padding not in ('same', 'valid'):
            raise ValueError(f"padding must be 'same' or 'valid'; got {self.padding!r}")
        pad = 1 if self.padding == 'same' else 0
        norm = bind_norm(self.norm, train, self.dtype)
        conv = functools.partial(self.conv, dtype=self.dtype)

        def double(h, f, name):
            for i in (1, 2):
                h = conv_norm_act(
                    h,
                    conv,
                    norm,
                    nn.relu,
                    f,
                    3,
                    padding=pad,
                    name=f'{name}_conv{i}',
                    norm_name=f'{name}_bn{i}',
                )
            return h

        h = jnp.asarray(x, self.dtype)
        in_size = h.shape[1:3]
        if self.overlap_tile and self.padding == 'valid':
            pads = []
            for n in in_size:
                extra = overlap_tile_input_size(n, self.depth) - n
                pads.append((extra // 2, extra - extra // 2))
            h = jnp.pad(h, ((0, 0), *pads, (0, 0)), mode='reflect')
        if self.padding == 'valid':  # refuse a size up front: an empty map has no valid conv to trace
            for n in h.shape[1:3]:
                try:
                    unet_valid_output_size(n, self.depth)
                except ValueError as e:
                    raise ValueError(f'U-Net: input {tuple(x.shape[1:3])}: {e}; see the docstring') from None
        skips = []
        for level in range(self.depth):
            h = double(h, self.base_features * 2**level, f'down{level + 1}')
            skips.append(h)
            if h.shape[1] % 2 or h.shape[2] % 2:
                raise ValueError(
                    f'U-Net: odd feature map {h.shape[1:3]} before pool {level + 1}; see the docstring'
                )
            h = max_pool(h, 2, 2)
        h = double(h, self.base_features * 2**self.depth, 'bottom')
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        for level in reversed(range(self.depth)):
            f = self.base_features * 2**level
            h = ConvTranspose(f, 2, strides=2, dtype=self.dtype, name=f'up{level + 1}_upconv')(h)
            h = jnp.concatenate([center_crop(skips[level], h.shape[1:3]), h], axis=-1)
            h = double(h, f, f'up{level + 1}')
        h = self.conv(self.num_classes, (1, 1), dtype=self.dtype, name='classifier')(h)
        if self.overlap_tile and self.padding == 'valid':
            h = center_crop(h, in_size)
        return jnp.asarray(h, jnp.float32)


REGISTRY_ENTRIES = {
    'unet': UNet,
    'unet_valid': functools.partial(UNet, padding='valid'),
}
