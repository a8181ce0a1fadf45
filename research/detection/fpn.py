"""Feature pyramid network (Lin et al. 2017, "Feature Pyramid Networks for Object Detection", Fig. 3),
in torchvision's layout so its weights convert: a 1x1 lateral conv (``inner_blocks_i``) per input level,
a nearest-neighbour top-down pathway added to the laterals, a 3x3 output conv (``layer_blocks_i``) per
level, and an optional extra block: ``'maxpool'`` (P6 = 1x1 max pool with stride 2 of the top output:
Faster / Mask R-CNN) or ``'p6p7'`` (RetinaNet Sec. 4: P6 = 3x3/2 conv, P7 = 3x3/2 conv of ReLU(P6);
P6 from ``p6p7_from`` = ``'p5'`` (torchvision's ``retinanet_resnet50_fpn``: ``LastLevelP6P7(256, 256)``)
or ``'c5'`` (the paper, and torchvision's v2 model)).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers import upsample_nearest
from research.layers.common import FlaxConv
from research.layers.pooling import max_pool

__all__ = ['FeaturePyramidNetwork']

# torchvision's FPN init: kaiming_uniform_(a=1) weights, zero bias.
_FPN_INIT = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')


class FeaturePyramidNetwork(nn.Module):
    """``__call__(features)``: ``features`` is a sequence of NHWC maps, finest first (C2..C5 or
    C3..C5), the first at level ``min_level``; returns ``{'p<l>': map}`` finest first, every map with
    ``out_channels`` channels, plus the ``extra`` level(s)."""

    out_channels: int = 256
    min_level: int = 2
    extra: str | None = 'maxpool'
    p6p7_from: str = 'p5'
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> dict[str, jax.Array]:
        if self.extra not in (None, 'maxpool', 'p6p7'):
            raise ValueError(f"FPN extra must be None, 'maxpool' or 'p6p7'; got {self.extra!r}")
        feats = [jnp.asarray(f, self.dtype) for f in features]
        conv = lambda k, s, name: FlaxConv(  # noqa: E731
            self.out_channels,
            (k, k),
            (s, s),
            padding=[(k // 2, k // 2)] * 2,
            kernel_init=_FPN_INIT,
            dtype=self.dtype,
            name=name,
        )
        n = len(feats)
        last = conv(1, 1, f'inner_blocks_{n - 1}')(feats[-1])
        outs = [conv(3, 1, f'layer_blocks_{n - 1}')(last)]
        for i in range(n - 2, -1, -1):
            lateral = conv(1, 1, f'inner_blocks_{i}')(feats[i])
            last = lateral + upsample_nearest(last, size=lateral.shape[1:3])
            outs.insert(0, conv(3, 1, f'layer_blocks_{i}')(last))
        if self.extra == 'maxpool':
            outs.append(max_pool(outs[-1], 1, 2))
        elif self.extra == 'p6p7':
            if self.p6p7_from not in ('p5', 'c5'):
                raise ValueError(f"FPN p6p7_from must be 'p5' or 'c5'; got {self.p6p7_from!r}")
            src = outs[-1] if self.p6p7_from == 'p5' else feats[-1]
            p6 = conv(3, 2, 'p6')(src)
            outs += [p6, conv(3, 2, 'p7')(nn.relu(p6))]
        return {f'p{self.min_level + i}': o for i, o in enumerate(outs)}
