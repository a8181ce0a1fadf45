"""Receptive-field growth: per layer of any model (from ``research.layers.summarize``), and the
lecture picture of a stack of dilated 3x3 convolutions (Yu & Koltun 2016, "Multi-Scale Context
Aggregation by Dilated Convolutions", Fig. 1: rates 1, 2, 4 give receptive fields 3, 7, 15: linear
parameter growth, exponential receptive-field growth).

The picture shows two things per layer: the theoretical receptive field of the centre output
unit (the box, from ``summarize``) and the input pixels that actually reach it (the gradient
support with all-positive kernels): equal-rate stacks such as (2, 2, 2) leave holes ("gridding").
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import storage
from research.layers.conv import ConvND
from research.layers.summary import summarize


class DilatedStack(nn.Module):
    """3x3 convs with the given dilation ``rates``, 'same' padding, stride 1 (``features`` channels)."""

    rates: tuple[int, ...] = (1, 2, 4)
    features: int = 1
    kernel_init: object = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, r in enumerate(self.rates):
            x = ConvND(
                self.features,
                (3, 3),
                padding='same',
                dilation=r,
                use_bias=False,
                kernel_init=self.kernel_init,
                name=f'conv{i + 1}',
            )(x)
        return x


def layer_receptive_fields(model, input_shape: Sequence[int]) -> list[tuple[str, int, int]]:
    """(layer path, receptive field, jump) along the first spatial axis for each spatial row of
    ``summarize(model, input_shape)`` (convs and pools), in execution order."""
    s = summarize(model, tuple(input_shape))
    out = []
    for layer in s.layers:
        if (
            layer.rf is not None
            and layer.spatial
            and layer.kind in ('conv', 'conv_transpose', 'conv_local', 'pool')
        ):
            out.append((layer.path, int(layer.rf[0]), int(layer.jump[0]) if layer.jump else 1))
    return out


def dilated_receptive_fields(rates: Sequence[int], size: int = 33) -> list[int]:
    """Receptive field after each conv of a dilated 3x3 stack, from ``summarize``: rates (1, 2, 4) -> [3, 7, 15]."""
    return [rf for _, rf, _ in layer_receptive_fields(DilatedStack(tuple(rates)), (1, size, size, 1))]


def dilated_supports(rates: Sequence[int], size: int = 33) -> list[np.ndarray]:
    """Per layer, the [size, size] boolean mask of input pixels with a nonzero gradient on the
    centre output unit of that layer (all-ones kernels, so no cancellation)."""
    masks = []
    for n in range(1, len(rates) + 1):
        model = DilatedStack(tuple(rates[:n]), kernel_init=nn.initializers.ones)
        v = model.init(jax.random.key(0), jnp.zeros((1, size, size, 1)))

        def centre(x, v=v, model=model):
            return model.apply(v, x)[0, size // 2, size // 2, 0]

        g = jax.grad(centre)(jnp.zeros((1, size, size, 1)))
        masks.append(np.asarray(g[0, :, :, 0]) != 0)
    return masks


def plot_dilation(
    rates: Sequence[int], path, size: int = 33, compare: Sequence[int] | None = None
) -> list[int]:
    """Figure: one row per rate sequence (``rates``, then ``compare``, default all 1s and all 2s:
    the gridding case), one panel per layer with the input pixels reaching the centre unit and its
    receptive-field box; returns the RFs of ``rates``."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = [tuple(rates)]
    for extra in [tuple(compare)] if compare else [(1,) * len(rates), (2,) * len(rates)]:
        if extra != rows[0]:
            rows.append(extra)
    n = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(2.0 * n, 2.3 * len(rows) + 0.4), squeeze=False)
    for i, rr in enumerate(rows):
        rfs = dilated_receptive_fields(rr, size)
        masks = dilated_supports(rr, size)
        for j in range(n):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(rr):
                ax.axis('off')
                continue
            ax.imshow(masks[j], cmap='Blues', vmin=0, vmax=1.4, interpolation='nearest')
            lo = size // 2 - rfs[j] // 2 - 0.5
            ax.add_patch(Rectangle((lo, lo), rfs[j], rfs[j], fill=False, edgecolor='crimson', lw=1.5))
            ax.plot([size // 2], [size // 2], 'k.', ms=3)
            ax.set_title(f'layer {j + 1}: d={rr[j]}\nRF {rfs[j]}x{rfs[j]}', fontsize=9)
        axes[i][0].set_ylabel('rates ' + ','.join(map(str, rr)), fontsize=9)
    fig.suptitle('3x3 convs: input pixels reaching the centre unit (blue), receptive field (box)', fontsize=9)
    fig.tight_layout()
    storage.save_figure(fig, path, dpi=80)
    plt.close(fig)
    return dilated_receptive_fields(rates, size)


def model_rf_figure(model, input_shape: Sequence[int], title: str = ''):
    """(matplotlib figure, rows): receptive field (and jump) after each conv/pool layer of ``model``,
    input size marked, integer ticks on both axes."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = layer_receptive_fields(model, input_shape)
    rf = [r for _, r, _ in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.18 * len(rows) + 2), 3.2))
    ax.step(range(1, len(rf) + 1), rf, where='mid', color='tab:blue', label='receptive field')
    ax.plot(
        range(1, len(rf) + 1),
        [j for _, _, j in rows],
        color='tab:orange',
        lw=1,
        label='jump (stride product)',
    )
    ax.axhline(input_shape[1], color='gray', ls='--', lw=1, label=f'input {input_shape[1]} px')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layer numbers and pixels are integers
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel('conv / pool layer (execution order)')
    ax.set_ylabel('pixels')
    ax.set_title(title or f'{type(model).__name__}: receptive field per layer', fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, rows


def plot_model_rf(model, input_shape: Sequence[int], path, title: str = '') -> list[tuple[str, int, int]]:
    """Figure: receptive field (and jump) after each conv/pool layer of ``model``, input size
    marked; returns the rows."""
    import matplotlib.pyplot as plt

    fig, rows = model_rf_figure(model, input_shape, title)
    storage.save_figure(fig, path, dpi=80)
    plt.close(fig)
    return rows
