"""Defaults shared by layers and models: conv/norm constructors, init, and knob resolvers.

Conventions (all models): NHWC float inputs, ``__call__(x, train=False, return_features=False)``,
BatchNorm with PyTorch's defaults (momentum 0.9 in Flax's convention == 0.1 in PyTorch's,
epsilon 1e-5) and PyTorch's running-variance update (unbiased batch variance), conv kernels
He/Kaiming normal, fan_out, untruncated (torchvision's ResNet init).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import flax.linen.normalization as _flax_norm
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# The per-platform ops the layers use (the CPU forms live in the backend module).
from research.kernels.cpu import (  # noqa: F401  (re-exported: the layers' public API)
    SHIFT_MAX_CHANNELS,
    SHIFT_MAX_TAPS,
    conv_general_dilated,
    materialize,
    native_convolutions,
)

ModuleDef = Any

#: torchvision's ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

#: Flax's ``nn.Conv`` (its own default init) computing through
#: :func:`research.kernels.cpu.conv_general_dilated`: ``lax.conv_general_dilated``, except in a program
#: lowered for CPU, where a first layer takes the shift-and-add forward and, within ``use_onednn``
#: (``train.cpu_conv``), oneDNN computes dense convolutions. Models that keep Flax's or a paper's init use
#: this rather than ``nn.Conv``.
FlaxConv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)

#: Conv with the project's default init and ``FlaxConv``'s per-platform convolution. Callers pass
#: ``use_bias`` (False before a norm layer).
Conv = functools.partial(FlaxConv, kernel_init=conv_kernel_init)


class BatchNorm(nn.BatchNorm):
    """``flax.linen.BatchNorm`` with PyTorch's defaults and PyTorch's running-variance rule.

    Defaults: momentum 0.9 (Flax's convention; torch's ``momentum=0.1``), epsilon 1e-5. In train mode
    the input is normalised with the biased batch variance (as both frameworks do), and the running
    variance is updated as torch's ``BatchNorm2d`` updates it, with the *unbiased* batch variance::

        var_run <- momentum * var_run + (1 - momentum) * var_batch * n / (n - 1)

    where n is the number of values per channel the statistics reduce over: batch x H x W of the
    layer's input (the global batch under ``jit`` over a mesh; times the axis size when ``axis_name``
    reduces across devices; the count of ``mask``-ed positions with a mask; one group's under the
    ghost-BN ``vmap``). With n = 1 the update takes the (zero) batch variance unchanged (torch raises).

    ``unbiased_running_var=False`` keeps Flax's rule (the biased batch variance, factor 1): a field,
    so ``functools.partial(BatchNorm, unbiased_running_var=False)`` or, from a config, the norm name
    ``'batch_biased'`` (``--config.model.norm=batch_biased`` for models with a ``norm`` field).

    Same variables as ``nn.BatchNorm`` (params ``scale``/``bias``, batch_stats ``mean``/``var``, float32
    statistics under a bfloat16 ``dtype``), same auto-name (``BatchNorm_0``), and an ``nn.BatchNorm``
    subclass (summaries count it as a norm layer). The factor is one scalar multiply per channel.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    unbiased_running_var: bool = True

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask: jax.Array | None = None):
        use_running_average = nn.merge_param(
            'use_running_average', self.use_running_average, use_running_average
        )
        feature_axes = _flax_norm._canonicalize_axes(x.ndim, self.axis)
        reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
        feature_shape = [x.shape[ax] for ax in feature_axes]
        stat_dtype = jnp.float32 if self.force_float32_reductions else self.param_dtype
        ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, stat_dtype), feature_shape)
        ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, stat_dtype), feature_shape)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
            if not self.force_float32_reductions:
                mean, var = jnp.asarray(mean, self.param_dtype), jnp.asarray(var, self.param_dtype)
        else:
            axis_name = self.axis_name if not self.is_initializing() else None
            mean, var = _flax_norm._compute_stats(
                x,
                reduction_axes,
                dtype=self.dtype,
                axis_name=axis_name,
                axis_index_groups=self.axis_index_groups,
                use_fast_variance=self.use_fast_variance,
                mask=mask,
                force_float32_reductions=self.force_float32_reductions,
            )
            if not self.is_initializing():
                update = var
                if self.unbiased_running_var:
                    n = _reduced_count(x, reduction_axes, mask, axis_name, self.axis_index_groups, var.dtype)
                    update = var * jnp.where(n > 1, n / jnp.maximum(n - 1, 1), 1)
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * update
        return _flax_norm._normalize(
            self,
            x,
            mean,
            var,
            reduction_axes,
            feature_axes,
            self.dtype,
            self.param_dtype,
            self.epsilon,
            self.use_bias,
            self.use_scale,
            self.bias_init,
            self.scale_init,
            self.force_float32_reductions,
        )


def _reduced_count(x, reduction_axes, mask, axis_name, axis_index_groups, dtype):
    """n of the running-variance correction: values per channel over ``reduction_axes`` (and devices)."""
    if mask is None:
        n = jnp.asarray(float(np.prod([x.shape[a] for a in reduction_axes])), dtype)
    else:
        m = jnp.broadcast_to(jnp.asarray(mask, bool), x.shape)
        n = jnp.sum(m, axis=reduction_axes, dtype=dtype)
    if axis_name is not None:
        n = lax.psum(n, axis_name, axis_index_groups=axis_index_groups)
    return n


_NORMS: dict[str, ModuleDef | None] = {
    'batch': BatchNorm,
    'bn': BatchNorm,
    'batch_biased': functools.partial(BatchNorm, unbiased_running_var=False),  # Flax's running-variance rule
    'group': functools.partial(nn.GroupNorm, num_groups=8, epsilon=1e-5),
    'layer': functools.partial(nn.LayerNorm, epsilon=1e-5),
    'none': None,
}


def scaled_tanh(x):
    """LeCun et al. 1998, Appendix A: f(a) = A tanh(S a) with A = 1.7159, S = 2/3 (f(±1) = ±1)."""
    return 1.7159 * jnp.tanh(x * (2.0 / 3.0))


_ACTIVATIONS: dict[str, Callable] = {
    'relu': nn.relu,
    'gelu': nn.gelu,
    'silu': nn.silu,
    'swish': nn.swish,
    'elu': nn.elu,
    'leaky_relu': nn.leaky_relu,
    'tanh': jnp.tanh,
    'sigmoid': nn.sigmoid,
    'scaled_tanh': scaled_tanh,
    'identity': lambda x: x,
}


def resolve_activation(activation: str | Callable) -> Callable:
    """Accepts a callable or one of the names in ``_ACTIVATIONS`` (for config-driven creation)."""
    if callable(activation):
        return activation
    try:
        return _ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(
            f'unknown activation {activation!r}; known: {", ".join(sorted(_ACTIVATIONS))}'
        ) from None


def resolve_norm(norm: str | ModuleDef | None) -> ModuleDef | None:
    """Accepts a module constructor, None, or one of 'batch' ('bn'), 'batch_biased' (BatchNorm with
    Flax's biased running-variance update), 'group', 'layer', 'none'."""
    if norm is None or not isinstance(norm, str):
        return norm
    try:
        return _NORMS[norm]
    except KeyError:
        raise ValueError(f'unknown norm {norm!r}; known: {", ".join(sorted(_NORMS))}') from None


def _module_fields(constructor) -> set[str]:
    f = constructor
    while isinstance(f, functools.partial):
        f = f.func
    if isinstance(f, type) and dataclasses.is_dataclass(f):
        return {fld.name for fld in dataclasses.fields(f)}
    return set()


def bind_norm(norm: str | ModuleDef | None, train: bool, dtype: Any = None) -> ModuleDef | None:
    """Binds train/eval mode (``use_running_average``) and dtype where the norm layer has them.

    Returns None for "no normalisation" (callers then give their convs a bias).
    """
    norm = resolve_norm(norm)
    if norm is None:
        return None
    fields = _module_fields(norm)
    kwargs = {}
    if 'use_running_average' in fields:
        kwargs['use_running_average'] = not train
    if dtype is not None and 'dtype' in fields:
        kwargs['dtype'] = dtype
    return functools.partial(norm, **kwargs)
