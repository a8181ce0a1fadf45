"""SqueezeNet: Iandola, Han, Moskewicz, Ashraf, Dally, Keutzer 2016, "SqueezeNet: AlexNet-level
accuracy with 50x fewer parameters and <0.5MB model size", Table 1 (architecture), Fig. 1 (fire
module), Sec. 6 / Fig. 2 / Table 3 (bypass variants).

Fire module: squeeze 1x1 (s1x1) -> ReLU -> [expand 1x1 (e1x1) | expand 3x3 (e3x3)] -> ReLU,
concatenated. Layouts as torchvision (converts its weights):

- ``squeezenet1_0`` (Table 1): conv1 96 7x7/2 -> pool -> fire2-4 -> pool -> fire5-8 -> pool ->
  fire9 -> dropout 0.5 -> conv10 1x1 (num_classes) -> ReLU -> global avg pool. 1,248,424 params,
  0.819 GMACs at 224 px.
- ``squeezenet1_1`` (the authors' v1.1, 2.4x cheaper): conv1 64 3x3/2, pools after conv1, fire3
  and fire5. 1,235,496 params, 0.349 GMACs.

Max pools are 3x3/2 with ceil_mode (Caffe). ``bypass`` (Sec. 6, Table 3): 'none'; 'simple' adds
the fire module's input to its output around fire3, 5, 7 and 9 (where channels match; no extra
params); 'complex' also bypasses fire2, 4, 6 and 8 through a 1x1 conv (+ bias) to the output
channels (Fig. 2 right). Table 3 top-1: 57.5% / 60.4% / 58.8% (none / simple / complex).

Features (``return_features=True``): 'stage1' conv1 (stride 2), 'stage2' .. 'stage4' the last
fire module before each later pool and fire9 (strides 4, 8, 16); SqueezeNet has no stride-32 map
(three pools after a stride-2 conv), so 'stage5' is absent. Sizes at 224 px: v1.0 109, 54, 27,
13; v1.1 111, 55, 27, 13.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from research.layers.common import Conv, ModuleDef, bind_norm, resolve_activation
from research.layers.blocks import _norm, conv_norm_act
from research.layers.pooling import max_pool
from research.layers.remat import remat_call
from research.layers.stems import imagenet_stem

BYPASSES = ('none', 'simple', 'complex')

#: (squeeze, expand1x1, expand3x3) of fire2 .. fire9 (Table 1; the same in v1.0 and v1.1).
FIRE_CHANNELS = {
    'fire2': (16, 64, 64),
    'fire3': (16, 64, 64),
    'fire4': (32, 128, 128),
    'fire5': (32, 128, 128),
    'fire6': (48, 192, 192),
    'fire7': (48, 192, 192),
    'fire8': (64, 256, 256),
    'fire9': (64, 256, 256),
}

#: conv1 (features, kernel) and the fire modules after which a max pool follows, per version.
VERSIONS = {
    '1_0': {'conv1': (96, 7), 'pool_after': ('conv1', 'fire4', 'fire8')},
    '1_1': {'conv1': (64, 3), 'pool_after': ('conv1', 'fire3', 'fire5')},
}


class Fire(nn.Module):
    """Fire module (Iandola et al. 2016, Fig. 1, Sec. 3.2), torchvision names: squeeze,
    expand1x1, expand3x3 (3x3 padded 1). ``bypass``: None, 'simple' (identity, needs in = out
    channels) or 'complex' (1x1 conv 'bypass'); added after the concatenation (Fig. 2)."""

    squeeze: int
    expand1x1: int
    expand3x3: int
    bypass: str | None = None
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = None
    activation: str | Callable = nn.relu
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        norm = _norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype)

        def unit(h, c, k, name, activate=True):
            return conv_norm_act(
                h, conv, norm, act if activate else None, c, k, name=name, norm_name=f'{name}_bn'
            )

        s = unit(x, self.squeeze, 1, 'squeeze')
        y = jnp.concatenate(
            [unit(s, self.expand1x1, 1, 'expand1x1'), unit(s, self.expand3x3, 3, 'expand3x3')], axis=-1
        )
        if self.bypass == 'simple':
            if x.shape[-1] != y.shape[-1]:
                raise ValueError(f'simple bypass needs equal channels, got {x.shape[-1]} -> {y.shape[-1]}')
            y = y + x
        elif self.bypass == 'complex':
            y = y + unit(x, y.shape[-1], 1, 'bypass', activate=False)
        elif self.bypass is not None:
            raise ValueError(f"unknown bypass {self.bypass!r}; expected None, 'simple' or 'complex'")
        return y


class SqueezeNet(nn.Module):
    """SqueezeNet v1.0 / v1.1 (Iandola et al. 2016, Table 1); see the module docstring.

    Args (fields):
      version: '1_0' or '1_1'.
      bypass: 'none' (default, torchvision), 'simple' or 'complex' (Sec. 6).
      dropout_rate: before conv10 (0.5). conv, norm (None as the paper; a norm drops the conv
        biases), activation, dtype: ablation knobs. conv10 is initialised N(0, 0.01) as in
        torchvision and the authors' Caffe model.
    """

    version: str = '1_0'
    num_classes: int = 1000
    bypass: str = 'none'
    dropout_rate: float = 0.5
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = None
    activation: str | Callable = nn.relu
    remat: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.version not in VERSIONS:
            raise ValueError(
                f'unknown SqueezeNet version {self.version!r}; expected one of {tuple(VERSIONS)}'
            )
        if self.bypass not in BYPASSES:
            raise ValueError(f'unknown bypass {self.bypass!r}; expected one of {BYPASSES}')
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        spec = VERSIONS[self.version]
        norm = bind_norm(self.norm, train, self.dtype)
        act = resolve_activation(self.activation)
        x = jnp.asarray(x, self.dtype)
        feats = {}
        c1, k1 = spec['conv1']
        conv = functools.partial(self.conv, dtype=self.dtype)
        feats['stage1'], x = imagenet_stem(
            x,
            conv,
            norm,
            act,
            c1,
            kernel=k1,
            padding='VALID',
            pool_padding=0,
            ceil_mode=True,
            norm_name='conv1_bn',
        )
        stage = 2
        for i, (name, ch) in enumerate(FIRE_CHANNELS.items()):
            bypass = None
            if self.bypass == 'simple' and i % 2 == 1 or self.bypass == 'complex':
                bypass = 'simple' if i % 2 == 1 else 'complex'
            unit = functools.partial(
                Fire,
                *ch,
                bypass=bypass,
                conv=self.conv,
                norm=norm,
                activation=act,
                dtype=self.dtype,
                name=name,
            )
            x = remat_call(self.remat, self, lambda h: unit()(h), x)
            if name in spec['pool_after']:
                feats[f'stage{stage}'] = x
                stage += 1
                x = max_pool(x, 3, 2, ceil_mode=True)
        feats[f'stage{stage}'] = x
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = self.conv(
            self.num_classes,
            (1, 1),
            kernel_init=nn.initializers.normal(0.01),
            bias_init=nn.initializers.zeros_init(),
            dtype=self.dtype,
            name='conv10',
        )(x)
        logits = jnp.mean(act(x), axis=(1, 2))
        logits = jnp.asarray(logits, jnp.float32)
        return (logits, feats) if return_features else logits


SqueezeNet1_0 = functools.partial(SqueezeNet, version='1_0')
SqueezeNet1_1 = functools.partial(SqueezeNet, version='1_1')

# Iandola et al. 2016, Table 1 (v1.0) and the authors' v1.1; bypass variants of Table 3 as knobs.
REGISTRY_ENTRIES = {
    'squeezenet1_0': SqueezeNet1_0,
    'squeezenet1_1': SqueezeNet1_1,
}
