"""AlexNet: Krizhevsky, Sutskever, Hinton 2012, "ImageNet Classification with Deep Convolutional
Neural Networks", Sec. 3 and Fig. 2.

Two variants (``variant``):

- 'torchvision' (default, converts torchvision weights): the single-tower "one weird trick"
  layout (Krizhevsky 2014) torchvision ships: conv 64 11x11/4 -> pool -> conv 192 5x5 -> pool ->
  conv 384 -> conv 256 -> conv 256 (3x3) -> pool -> adaptive avg pool 6x6 -> dropout, FC 4096 ->
  dropout, FC 4096 -> FC 1000; no LRN. 61,100,840 params, 0.714 GMACs at 224 px.
- 'paper' (``alexnet_paper``): Fig. 2's 96, 256, 384, 384, 256 channels; local response
  normalisation (Sec. 3.3: k=2, n=5, alpha=1e-4, beta=0.75) after the ReLUs of conv1 and conv2,
  each followed by overlapping 3x3/2 max pooling (Sec. 3.4); the two-GPU split as grouped
  convolutions (``groups=2`` on conv2, conv4 and conv5, whose kernels only see the maps of
  their own GPU; conv3 and the FC layers connect across). 60,965,224 params at 1000 classes
  (the paper's "60 million"). Conv1 keeps torchvision's padding 2, so a 224-px input gives the
  paper's 55x55 first map (the paper's 224 only works as 227 without padding).

Features (``return_features=True``): 'stage2' (conv1, stride 4), 'stage3' (conv2, stride 8),
'stage4' (conv5, stride 16), 'stage5' (pool5, stride 32); there is no stride-2 map (conv1 has
stride 4), so 'stage1' is absent. Spatial sizes at 224 px: 55, 27, 13, 6.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from research.layers.blocks import conv_norm_act
from research.layers.common import Conv, ModuleDef, bind_norm, resolve_activation
from research.layers.pooling import adaptive_avg_pool, max_pool

VARIANTS = ('torchvision', 'paper')

_CHANNELS = {'torchvision': (64, 192, 384, 256, 256), 'paper': (96, 256, 384, 384, 256)}


def local_response_norm(
    x: jax.Array,
    size: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 2.0,
    alpha_over_size: bool = False,
) -> jax.Array:
    """Local response normalisation across channels (Krizhevsky et al. 2012, Sec. 3.3), NHWC:

    ``b_i = a_i / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a_j^2)^beta``.

    Defaults are the paper's (k=2, n=5, alpha=1e-4, beta=0.75). ``alpha_over_size=True`` divides
    alpha by n as ``torch.nn.LocalResponseNorm`` and Caffe do. The window is ``size // 2`` channels
    before and ``(size - 1) // 2`` after (symmetric for odd n), zero outside the channel range.
    """
    sq = jnp.square(x.astype(jnp.float32))
    pad = [(0, 0)] * (x.ndim - 1) + [(size // 2, (size - 1) // 2)]
    window = (1,) * (x.ndim - 1) + (size,)
    s = lax.reduce_window(sq, 0.0, lax.add, window, (1,) * x.ndim, pad)
    a = alpha / size if alpha_over_size else alpha
    return (x / jnp.power(k + a * s, beta).astype(x.dtype)).astype(x.dtype)


class AlexNet(nn.Module):
    """AlexNet (Krizhevsky et al. 2012, Fig. 2); see the module docstring for the two variants.

    Args (fields):
      variant: 'torchvision' (default) or 'paper' -- sets the defaults of the knobs below.
      channels: the five conv widths (None = the variant's).
      lrn: LRN after conv1 and conv2 (None = the variant's: off / on).
      groups: the two-tower split on conv2, conv4, conv5 (None = the variant's: 1 / 2).
      classifier_width: the two hidden FC layers (4096).
      dropout_rate: before fc6 and fc7 (0.5, Sec. 4.2; rng 'dropout').
      conv, norm, activation, dtype: ablation knobs; ``norm`` (default None, as both variants)
        adds a norm after every conv, whose bias is then dropped.
    """

    num_classes: int = 1000
    variant: str = 'torchvision'
    channels: tuple[int, ...] | None = None
    lrn: bool | None = None
    groups: int | None = None
    classifier_width: int = 4096
    dropout_rate: float = 0.5
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = None
    activation: str | Callable = nn.relu
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f'unknown AlexNet variant {self.variant!r}; expected one of {VARIANTS}')
        if self.channels is not None and len(self.channels) != 5:
            raise ValueError(f'AlexNet needs 5 conv widths, got {self.channels!r}')
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        paper = self.variant == 'paper'
        channels = self.channels or _CHANNELS[self.variant]
        lrn = paper if self.lrn is None else self.lrn
        groups = (2 if paper else 1) if self.groups is None else self.groups
        norm = bind_norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype)
        x = jnp.asarray(x, self.dtype)
        feats = {}
        # (features, kernel, stride, padding, groups) of conv1..conv5.
        spec = [(11, 4, 2, 1), (5, 1, 2, groups), (3, 1, 1, 1), (3, 1, 1, groups), (3, 1, 1, groups)]
        for i, (c, (k, s, p, g)) in enumerate(zip(channels, spec), start=1):
            x = conv_norm_act(
                x, conv, norm, act, c, k, strides=s, padding=p, groups=g, name=f'conv{i}', norm_name=f'bn{i}'
            )
            if i <= 2:
                if lrn:
                    x = local_response_norm(x)
                feats[f'stage{i + 1}'] = x
                x = max_pool(x, 3, 2)
        feats['stage4'] = x
        x = feats['stage5'] = max_pool(x, 3, 2)
        x = adaptive_avg_pool(x, 6)
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch's (C, H, W) flatten
        for name in ('fc6', 'fc7'):
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = act(nn.Dense(self.classifier_width, dtype=self.dtype, name=name)(x))
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name='fc8')(x)
        logits = jnp.asarray(logits, jnp.float32)
        return (logits, feats) if return_features else logits


AlexNetPaper = functools.partial(AlexNet, variant='paper')

# Krizhevsky et al. 2012, Fig. 2 (paper) and torchvision's single-tower layout (default).
REGISTRY_ENTRIES = {
    'alexnet': AlexNet,
    'alexnet_paper': AlexNetPaper,
}
