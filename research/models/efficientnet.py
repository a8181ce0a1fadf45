"""EfficientNet B0-B7: Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks", Table 1 (B0), Sec. 3.3 (compound scaling: depth alpha^phi, width beta^phi,
resolution gamma^phi with alpha 1.2, beta 1.1, gamma 1.15). torchvision ``efficientnet_b*`` layout.

B0 (Table 1): 3x3 conv 32 /2 -> 7 stages of MBConv (expansion, kernel, stride, channels,
layers: MBConv1 k3 16 x1, MBConv6 k3 24 x2 /2, k5 40 x2 /2, k3 80 x3 /2, k5 112 x3, k5 192 x4
/2, k3 320 x1) -> 1x1 conv 1280 -> pool -> dropout -> FC. Every MBConv has SE (squeeze = 1/4 of
the block's input channels, SiLU inside, sigmoid gate) and SiLU; residual blocks have stochastic
depth (rate 0.2 * block index / number of blocks, as torchvision and the TF reference).

Scaling: channels make_divisible(c * width, 8), layers ceil(n * depth). The published B1-B7
(width, depth, resolution) are *not* beta^phi, alpha^phi, 224 gamma^phi for any single phi:

=====  ====================  ================================  ============================
       published (w, d, r)   phi fitted to w / d / r            computed at integer phi
=====  ====================  ================================  ============================
B1     1.0, 1.1, 240         0.00 / 0.52 / 0.49                phi=1: 1.10, 1.20, 258
B2     1.1, 1.2, 260         1.00 / 1.00 / 1.07                phi=2: 1.21, 1.44, 296
B3     1.2, 1.4, 300         1.91 / 1.85 / 2.09                phi=3: 1.33, 1.73, 341
B4     1.4, 1.8, 380         3.53 / 3.22 / 3.78                phi=4: 1.46, 2.07, 392
B5     1.6, 2.2, 456         4.93 / 4.32 / 5.09                phi=5: 1.61, 2.49, 450
B6     1.8, 2.6, 528         6.17 / 5.24 / 6.14                phi=6: 1.77, 2.99, 518
B7     2.0, 3.1, 600         7.27 / 6.21 / 7.05                phi=7: 1.95, 3.58, 596
=====  ====================  ================================  ============================

so the named variants use the published table (``VARIANTS``, as the TF reference and
torchvision do) and ``compound_scaling(phi)`` gives the formula's values for other phi
(``create('efficientnet', **compound_scaling(phi))``).

Differences from the paper / TF reference (defaults follow torchvision so weights convert):
BN epsilon / momentum are torch's defaults 1e-5 / 0.1 (Flax 0.9) for B0-B4 and 1e-3 / 0.01
(Flax 0.99) for B5-B7 in torchvision; the TF reference uses 1e-3 / 0.99 (Flax convention) for
all (``norm_eps``, ``norm_momentum`` knobs). torchvision's B2 weights are evaluated at 288 px
(the paper's B2 resolution is 260). Features: 'stage1'..'stage5' = last map at output stride
2..32 (stage 1 MBConv1 output, stage 2 (24), stage 3 (40), stage 5 (112), head conv output).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.layers.blocks import MBConv, conv_norm_act
from research.layers.common import BatchNorm, Conv, ModuleDef, bind_norm, resolve_activation
from research.layers.heads import classifier_head
from research.layers.remat import remat_call
from research.models.mobilenet import make_divisible, norm_with, stage_features

__all__ = ['B0_SETTING', 'VARIANTS', 'EfficientNet', 'compound_scaling']

ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15

#: Table 1 (B0): (expansion, kernel, stride, in channels, out channels, layers) per MBConv stage.
B0_SETTING = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)

#: Published (width, depth, resolution, dropout) per variant (the TF reference's
#: ``efficientnet_params``; torchvision uses the same width/depth/dropout).
VARIANTS = {
    'b0': (1.0, 1.0, 224, 0.2),
    'b1': (1.0, 1.1, 240, 0.2),
    'b2': (1.1, 1.2, 260, 0.3),
    'b3': (1.2, 1.4, 300, 0.3),
    'b4': (1.4, 1.8, 380, 0.4),
    'b5': (1.6, 2.2, 456, 0.4),
    'b6': (1.8, 2.6, 528, 0.5),
    'b7': (2.0, 3.1, 600, 0.5),
}

#: Resolution torchvision's weights are evaluated at (its ``crop_size``); differs for B2 only.
TORCHVISION_RESOLUTION = {**{k: v[2] for k, v in VARIANTS.items()}, 'b2': 288}


def compound_scaling(phi: float, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA) -> dict:
    """Sec. 3.3, Eq. 3: depth alpha^phi, width beta^phi (resolution gamma^phi: ``resolution``
    is returned for the data pipeline, not a model argument; pop it before ``create``)."""
    return {
        'width_mult': beta**phi,
        'depth_mult': alpha**phi,
        'resolution': int(round(224 * gamma**phi)),
    }


class EfficientNet(nn.Module):
    """EfficientNet (Tan & Le 2019, Table 1 + compound scaling), torchvision layout.

    Knobs: ``width_mult``, ``depth_mult`` (Sec. 3.3); ``dropout_rate`` before the FC;
    ``drop_path_rate`` (stochastic depth, max rate, linear in the block index; training only,
    rng 'dropout'); ``se_ratio`` (0 = no SE); ``activation`` (SiLU = swish); ``norm``,
    ``norm_eps``, ``norm_momentum`` (Flax convention); ``setting`` (the B0 table).
    Names: stem_conv/stem_bn = features.0, block<s>_<j> = features.<s>.<j> (s = 1..7),
    head_conv/head_bn = features.8, classifier = classifier.1.
    """

    width_mult: float = 1.0
    depth_mult: float = 1.0
    num_classes: int = 1000
    dropout_rate: float = 0.2
    drop_path_rate: float = 0.2
    se_ratio: float = 0.25
    setting: Sequence[tuple[int, int, int, int, int, int]] = B0_SETTING
    conv: ModuleDef = Conv
    norm: str | ModuleDef | None = BatchNorm
    norm_eps: float | None = 1e-5
    norm_momentum: float | None = 0.9
    activation: str | Callable = nn.silu
    remat: bool = False
    dtype: Any = jnp.float32

    def stages(self) -> list[tuple[int, int, int, int, int, int]]:
        """(expansion, kernel, stride, in, out, layers) after width/depth scaling."""
        w, d = self.width_mult, self.depth_mult
        return [
            (e, k, s, make_divisible(i * w, 8), make_divisible(o * w, 8), int(math.ceil(n * d)))
            for e, k, s, i, o, n in self.setting
        ]

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        base_norm = norm_with(self.norm, self.norm_eps, self.norm_momentum)
        norm = bind_norm(base_norm, train, self.dtype)
        act = resolve_activation(self.activation)
        conv = functools.partial(self.conv, dtype=self.dtype)
        stages = self.stages()
        x = jnp.asarray(x, self.dtype)
        x = conv_norm_act(
            x, conv, norm, act, stages[0][3], 3, strides=2, name='stem_conv', norm_name='stem_bn'
        )
        stride = 2
        maps = [(stride, x)]
        total = sum(st[5] for st in stages)
        block_id = 0
        for si, (e, k, s, _, o, n) in enumerate(stages, start=1):
            for j in range(n):
                c_in = x.shape[-1]
                stride *= s if j == 0 else 1
                unit = functools.partial(
                    MBConv,
                    o,
                    strides=s if j == 0 else 1,
                    expansion=e,
                    kernel_size=k,
                    hidden_features=make_divisible(c_in * e, 8),
                    se_features=max(1, int(c_in * self.se_ratio)) if self.se_ratio else None,
                    drop_path_rate=self.drop_path_rate * block_id / total,
                    conv=self.conv,
                    norm=base_norm,
                    activation=act,
                    dtype=self.dtype,
                    name=f'block{si}_{j}',
                )
                x = remat_call(self.remat, self, lambda h: unit()(h, train=train), x)
                block_id += 1
            maps.append((stride, x))
        x = conv_norm_act(x, conv, norm, act, 4 * stages[-1][4], 1, name='head_conv', norm_name='head_bn')
        maps.append((stride, x))
        feats = stage_features({}, maps)
        logits = classifier_head(x, self.num_classes, self.dropout_rate, train, self.dtype, 'classifier')
        return (logits, feats) if return_features else logits


def _variant(name: str):
    w, d, _, p = VARIANTS[name]
    kw = dict(width_mult=w, depth_mult=d, dropout_rate=p)
    if name in ('b5', 'b6', 'b7'):  # torchvision: BatchNorm2d(eps=1e-3, momentum=0.01) from B5 on
        kw.update(norm_eps=1e-3, norm_momentum=0.99)
    return functools.partial(EfficientNet, **kw)


EfficientNetB0 = _variant('b0')
EfficientNetB1 = _variant('b1')
EfficientNetB2 = _variant('b2')
EfficientNetB3 = _variant('b3')
EfficientNetB4 = _variant('b4')
EfficientNetB5 = _variant('b5')
EfficientNetB6 = _variant('b6')
EfficientNetB7 = _variant('b7')

# Tan & Le 2019, Table 1 and Sec. 3.3 / Table 2 (torchvision variants).
REGISTRY_ENTRIES = {
    'efficientnet': EfficientNet,
    'efficientnet_b0': EfficientNetB0,
    'efficientnet_b1': EfficientNetB1,
    'efficientnet_b2': EfficientNetB2,
    'efficientnet_b3': EfficientNetB3,
    'efficientnet_b4': EfficientNetB4,
    'efficientnet_b5': EfficientNetB5,
    'efficientnet_b6': EfficientNetB6,
    'efficientnet_b7': EfficientNetB7,
}
