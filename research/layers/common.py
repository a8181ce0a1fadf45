"""Defaults shared by layers and models: conv/norm constructors, init, and knob resolvers.

Conventions (all models): NHWC float inputs, ``__call__(x, train=False, return_features=False)``,
BatchNorm with PyTorch's defaults (momentum 0.9 in Flax's convention == 0.1 in PyTorch's,
epsilon 1e-5), conv kernels He/Kaiming normal, fan_out, untruncated (torchvision's ResNet init).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

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

#: BatchNorm with PyTorch's defaults (running stats live in the 'batch_stats' collection).
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)

_NORMS: dict[str, ModuleDef | None] = {
    'batch': BatchNorm,
    'bn': BatchNorm,
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
            f"unknown activation {activation!r}; known: {', '.join(sorted(_ACTIVATIONS))}"
        ) from None


def resolve_norm(norm: str | ModuleDef | None) -> ModuleDef | None:
    """Accepts a module constructor, None, or one of 'batch', 'group', 'layer', 'none'."""
    if norm is None or not isinstance(norm, str):
        return norm
    try:
        return _NORMS[norm]
    except KeyError:
        raise ValueError(f"unknown norm {norm!r}; known: {', '.join(sorted(_NORMS))}") from None


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
