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
(N, H, W, num_classes) inputs and returns float32 (N, H, W, num_classes).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.common import Conv, ModuleDef


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


REGISTRY_ENTRIES = {'context_module': ContextModule}
