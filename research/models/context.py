"""Multi-scale context aggregation by dilated convolutions.

Yu & Koltun 2016, "Multi-Scale Context Aggregation by Dilated Convolutions" (ICLR), Table 1: the
basic context module takes C feature maps (the score maps of a front-end, C = ``num_classes``) and
applies 3x3 convolutions with dilations 1, 1, 2, 4, 8, 16, 1 (each followed by ReLU) and a final 1x1
convolution, all C -> C channels (64 C^2 + 8 C parameters... exactly 7 (9 C^2 + C) + C^2 + C). The
receptive field grows to 67x67. Sec. 3 "identity initialization": every kernel starts as
k(t, a, b) = [t = 0][a = b] with zero biases, so the untrained module passes its input through
(for non-negative inputs: the ReLUs clip negative values, as in the paper).

``width_multipliers`` gives the paper's large module (2, 2, 4, 8, 16, 32, 32, 1 times C in Table 1;
identity init then copies the input into the first C channels). Zero 'same' padding keeps the
resolution (the paper pads the input by reflection instead). Usable standalone on score maps:
``create('context_module', num_classes=21).apply(v, scores)``; as a registered model it takes
(N, H, W, num_classes) inputs and returns float32 (N, H, W, num_classes). ``dilated_vgg16`` (the
paper's front end) and ``dilated_vgg16_context`` (front end + basic context module) take images.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.common import Conv, ModuleDef
from research.layers.pooling import max_pool
from research.layers.resample import upsample_bilinear


def identity_init(key, shape, dtype=jnp.float32):
    """Conv kernel (kh, kw, in, out) = [centre tap][in == out] (Yu & Koltun 2016, Sec. 3)."""
    kh, kw, cin, cout = shape
    k = jnp.zeros(shape, dtype)
    n = min(cin, cout)
    return k.at[kh // 2, kw // 2, jnp.arange(n), jnp.arange(n)].set(1)


class ContextModule(nn.Module):
    """Yu & Koltun's context module; ``dilations`` (the last one is the 1x1 output layer)."""

    num_classes: int = 21
    dilations: Sequence[int] = (1, 1, 2, 4, 8, 16, 1, 1)
    width_multipliers: Sequence[int] | None = None
    identity: bool = True
    conv: ModuleDef = Conv
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_aux: bool = False):
        if return_aux:
            raise ValueError('ContextModule has no auxiliary head')
        c = self.num_classes
        if x.shape[-1] != c:
            raise ValueError(f'the context module expects {c} input maps (num_classes), got {x.shape[-1]}')
        mult = (
            tuple(self.width_multipliers)
            if self.width_multipliers is not None
            else (1,) * len(self.dilations)
        )
        if len(mult) != len(self.dilations):
            raise ValueError('width_multipliers needs one entry per layer')
        init = {'kernel_init': identity_init} if self.identity else {}
        conv = functools.partial(self.conv, dtype=self.dtype, **init)
        h = jnp.asarray(x, self.dtype)
        n = len(self.dilations)
        for i, (d, m) in enumerate(zip(self.dilations, mult), start=1):
            if i < n:
                h = nn.relu(conv(c * m, (3, 3), padding=d, kernel_dilation=d, name=f'ctx_conv{i}')(h))
            else:
                h = conv(c, (1, 1), name=f'ctx_conv{i}')(h)
        return jnp.asarray(h, jnp.float32)


#: VGG-16 (Table 1, D) conv widths per block at base 64 (as research.models.fcn.VGG16_BLOCKS).
_VGG16 = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class DilatedVGG(nn.Module):
    """Yu & Koltun's front end (Sec. 4) with an optional context module: a segmentation model on images.

    VGG-16 with pool4 and pool5 removed, conv5 dilated by 2 and the fc6 convolution (7x7,
    ``fc_features``) dilated by 4, fc7 (1x1), dropout and a 1x1 classifier: score maps at output
    stride 8. ``context`` (True: the basic module, identity-initialised; ``context_multipliers`` gives
    the large one) refines the score maps; bilinear upsampling x8 to the input. Same padding (the
    paper reflects the input instead). ``base_features`` scales the VGG widths (64), for CPU runs.
    """

    num_classes: int = 21
    base_features: int = 64
    fc_features: int = 4096
    dropout_rate: float = 0.5
    context: bool = True
    context_dilations: Sequence[int] = (1, 1, 2, 4, 8, 16, 1, 1)
    context_multipliers: Sequence[int] | None = None
    conv: ModuleDef = Conv
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_aux: bool = False):
        if return_aux:
            raise ValueError('DilatedVGG has no auxiliary head')
        size = x.shape[1:3]
        conv = functools.partial(self.conv, dtype=self.dtype)
        h = jnp.asarray(x, self.dtype)
        for b, widths in enumerate(_VGG16, start=1):
            d = 2 if b == 5 else 1
            for i, w in enumerate(widths, start=1):
                w = w * self.base_features // 64
                h = nn.relu(conv(w, (3, 3), padding=d, kernel_dilation=d, name=f'conv{b}_{i}')(h))
            if b <= 3:
                h = max_pool(h, 2, 2, ceil_mode=True)
        h = nn.relu(conv(self.fc_features, (7, 7), padding=12, kernel_dilation=4, name='fc6')(h))
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        h = nn.relu(conv(self.fc_features, (1, 1), name='fc7')(h))
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        h = conv(self.num_classes, (1, 1), name='final')(h)
        if self.context:
            h = ContextModule(
                self.num_classes,
                self.context_dilations,
                self.context_multipliers,
                conv=self.conv,
                dtype=self.dtype,
                name='context',
            )(h)
        return jnp.asarray(upsample_bilinear(h, size=size), jnp.float32)


REGISTRY_ENTRIES = {
    'context_module': ContextModule,
    'dilated_vgg16': functools.partial(DilatedVGG, context=False),
    'dilated_vgg16_context': DilatedVGG,
}
