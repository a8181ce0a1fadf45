"""VGG: Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", Table 1 (configurations A-E), Table 2 (parameter counts).

torchvision layout (converts its weights): the conv stack (3x3/1 convs, padding 1, ReLU, 2x2/2
max pools after each block), adaptive average pool to 7x7, then FC 4096 -> ReLU -> dropout -> FC
4096 -> ReLU -> dropout -> FC 1000. ``batch_norm=True`` adds BN after every conv (the "_bn"
models; not in the paper, which predates BN). Names are the Caffe model's: conv{block}_{i}
(bn{block}_{i}), fc6, fc7, fc8.

``cfg`` entries: an int = 3x3 conv with that many channels, ``(channels, kernel)`` = a conv of
another size (config C's 1x1 convs), 'M' = max pool, 'LRN' = local response normalisation
(config A-LRN, Krizhevsky et al.'s k=2, n=5, alpha=1e-4, beta=0.75). Counts at 1000 classes:
vgg11 132,863,336 (A), vgg11_lrn = A, vgg13 133,047,848 (B), vgg16_c 133,638,952 (C), vgg16
138,357,544 (D), vgg19 143,667,240 (E); with BN +5,504 / +5,888 / +8,448 / +11,008 for A, B,
D, E (2 per BN channel; torchvision keeps the conv biases before BN; Table 2: 133, 133, 134,
138, 144 million).

Features (``return_features=True``): the last map at each output stride, i.e. the map before
each max pool from the second on ('stage1' = conv2_x at stride 2 ... 'stage4' = conv5_x at 16)
and 'stage5' = pool5 (stride 32). At 224 px: 112, 56, 28, 14, 7.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.blocks import conv_norm_act
from research.layers.common import BatchNorm, Conv, ModuleDef, bind_norm, resolve_activation
from research.layers.pooling import adaptive_avg_pool, max_pool
from research.layers.remat import remat_call
from research.models.alexnet import local_response_norm

M = 'M'
#: Table 1 configurations (torchvision's cfgs "A", "B", "D", "E"; "C" and "A-LRN" as the paper).
CFGS: dict[str, tuple] = {
    'A': (64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M),
    'A-LRN': (64, 'LRN', M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M),
    'B': (64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M),
    'C': (64, 64, M, 128, 128, M, 256, 256, (256, 1), M, 512, 512, (512, 1), M, 512, 512, (512, 1), M),
    'D': (64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M),
    'E': (64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512, M),
}


def _conv_spec(v) -> tuple[int, int]:
    return (v, 3) if isinstance(v, int) else (int(v[0]), int(v[1]))


def layer_names(cfg: Sequence) -> list[tuple[str, Any]]:
    """(Flax name, cfg entry) per conv of ``cfg``: conv{block}_{i}, blocks split by 'M'."""
    out, block, i = [], 1, 0
    for v in cfg:
        if v == M:
            block, i = block + 1, 0
        elif v != 'LRN':
            i += 1
            out.append((f'conv{block}_{i}', v))
    return out


def conv_stages(cfg: Sequence) -> list[tuple[tuple[tuple[str | None, Any], ...], bool]]:
    """``cfg`` split at its max pools: per stage ((Flax name or None for 'LRN', cfg entry), ...) and
    whether a max pool ends it (the units of ``remat``)."""
    names = iter(layer_names(cfg))
    stages, layers = [], []
    for v in cfg:
        if v == M:
            stages.append((tuple(layers), True))
            layers = []
        else:
            layers.append((None, v) if v == 'LRN' else next(names))
    if layers:
        stages.append((tuple(layers), False))
    return stages


class VGG(nn.Module):
    """VGG (Simonyan & Zisserman 2015, Table 1), torchvision layout; see the module docstring.

    Args (fields):
      cfg: the conv stack (``CFGS['D']`` etc., see the module docstring).
      batch_norm: BN after every conv (torchvision's ``vgg*_bn``); shorthand for ``norm``.
      norm: overrides ``batch_norm`` when given (a constructor or a name; 'none' = no norm).
      classifier_width: the two hidden FC layers (4096); pool_size: the adaptive pool (7).
      dropout_rate: after fc6 and fc7 (0.5, Sec. 3.1; rng 'dropout').
      conv_bias: convs keep their bias even before BN (True, as torchvision's ``vgg*_bn``).
      conv, activation, dtype: ablation knobs.
      remat: each conv stage (its convs up to and including its max pool) under ``nn.remat``; VGG
        has no blocks, so its stages are the units (same parameters and values, less activation
        memory for about one more forward pass; ``research.layers.remat``).
    """

    cfg: tuple = CFGS['D']
    batch_norm: bool = False
    num_classes: int = 1000
    classifier_width: int = 4096
    pool_size: int = 7
    dropout_rate: float = 0.5
    conv_bias: bool = True
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = None
    activation: str | Callable = nn.relu
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        norm = self.norm if self.norm is not None else (BatchNorm if self.batch_norm else None)
        norm = bind_norm(norm, train, self.dtype)
        act = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype)
        x = jnp.asarray(x, self.dtype)
        feats = {}

        def stage(h, layers, pool):
            """One conv stage: its convs (and LRN), then its max pool; (the map before the pool, after)."""
            for name, v in layers:
                if v == 'LRN':
                    h = local_response_norm(h)
                    continue
                c, k = _conv_spec(v)
                bias = self.conv_bias or norm is None
                h = conv_norm_act(
                    h, conv, norm, act, c, k, use_bias=bias, name=name, norm_name=name.replace('conv', 'bn')
                )
            return (h, max_pool(h, 2, 2)) if pool else (h, h)

        pools = 0
        for layers, pool in conv_stages(self.cfg):
            before, x = remat_call(self.remat, self, lambda h: stage(h, layers, pool), x)
            if pool:
                if pools:
                    feats[f'stage{pools}'] = before
                pools += 1
        feats[f'stage{pools}'] = x
        x = adaptive_avg_pool(x, self.pool_size)
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch's (C, H, W) flatten
        for name in ('fc6', 'fc7'):
            x = act(nn.Dense(self.classifier_width, dtype=self.dtype, name=name)(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name='fc8')(x)
        logits = jnp.asarray(logits, jnp.float32)
        return (logits, feats) if return_features else logits


VGG11 = functools.partial(VGG, cfg=CFGS['A'])
VGG11LRN = functools.partial(VGG, cfg=CFGS['A-LRN'])
VGG13 = functools.partial(VGG, cfg=CFGS['B'])
VGG16C = functools.partial(VGG, cfg=CFGS['C'])
VGG16 = functools.partial(VGG, cfg=CFGS['D'])
VGG19 = functools.partial(VGG, cfg=CFGS['E'])

# Simonyan & Zisserman 2015, Table 1: A (vgg11), A-LRN, B (vgg13), C, D (vgg16), E (vgg19).
REGISTRY_ENTRIES = {
    'vgg': VGG,
    'vgg11': VGG11,
    'vgg11_bn': functools.partial(VGG11, batch_norm=True),
    'vgg11_lrn': VGG11LRN,
    'vgg13': VGG13,
    'vgg13_bn': functools.partial(VGG13, batch_norm=True),
    'vgg16': VGG16,
    'vgg16_bn': functools.partial(VGG16, batch_norm=True),
    'vgg16_c': VGG16C,
    'vgg19': VGG19,
    'vgg19_bn': functools.partial(VGG19, batch_norm=True),
}
