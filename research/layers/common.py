"""Defaults shared by layers and models: conv/norm constructors, init, and knob resolvers.

Conventions (all models): NHWC float inputs, ``__call__(x, train=False, return_features=False)``,
BatchNorm with PyTorch's defaults (momentum 0.9 in Flax's convention == 0.1 in PyTorch's,
epsilon 1e-5) and PyTorch's running-variance update (unbiased batch variance), conv kernels
He/Kaiming normal, fan_out, untruncated (torchvision's ResNet init).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import flax.linen.normalization as _flax_norm
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.kernels import onednn

ModuleDef = Any

#: torchvision's ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

#: Inputs with at most this many channels and kernels of at most SHIFT_MAX_TAPS taps x channels take
#: the shift-and-add forward on CPU (:func:`conv_general_dilated`).
SHIFT_MAX_CHANNELS = 3
SHIFT_MAX_TAPS = 27


def _shift_add_conv(x, w, strides, pads):
    """Dense conv of a few-channel input as a sum over taps and input channels of strided shifted
    slices times ``w[tap, c]`` (channels last, kernel (*F, C, K))."""
    nd = w.ndim - 2
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    out = [(x.shape[1 + i] - w.shape[i]) // strides[i] + 1 for i in range(nd)]
    y = None
    for tap in np.ndindex(*w.shape[:nd]):
        limit = tuple(t + (o - 1) * s + 1 for t, o, s in zip(tap, out, strides))
        sl = lax.slice(x, (0, *tap, 0), (x.shape[0], *limit, x.shape[-1]), (1, *strides, 1))
        for c in range(x.shape[-1]):
            term = sl[..., c : c + 1] * w[tap][c]
            y = term if y is None else y + term
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _shift_conv(x, w, strides, pads, dn):
    return _shift_add_conv(x, w, strides, pads)


def _shift_conv_fwd(x, w, strides, pads, dn):
    return _shift_add_conv(x, w, strides, pads), (x, w)


def _shift_conv_bwd(strides, pads, dn, res, g):
    x, w = res  # XLA's own convolution gradients (fast); the forward value is not recomputed
    _, vjp = jax.vjp(lambda x, w: lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=dn), x, w)
    return vjp(g)


_shift_conv.defvjp(_shift_conv_fwd, _shift_conv_bwd)


_NATIVE_CONV = contextvars.ContextVar('native_conv', default=False)


@contextlib.contextmanager
def native_convolutions():
    """Within this context :func:`conv_general_dilated` always emits ``lax.conv_general_dilated`` and
    :func:`materialize` adds no barrier (for tools that read layers off the traced program, e.g.
    ``layers.summary``)."""
    token = _NATIVE_CONV.set(True)
    try:
        yield
    finally:
        _NATIVE_CONV.reset(token)


def _channels_last(dn, nd: int) -> bool:
    """Channels-last input and output, (*F, C, K) kernel."""
    return (
        dn.lhs_spec == (0, nd + 1, *range(1, nd + 1))
        and dn.out_spec == dn.lhs_spec
        and dn.rhs_spec == (nd + 1, nd, *range(nd))
    )


def _explicit_pads(lhs, rhs, window_strides, padding) -> tuple[tuple[int, int], ...]:
    """``padding`` ('SAME' / 'VALID' or pairs) as int (lo, hi) pairs of a channels-last conv."""
    nd = rhs.ndim - 2
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:nd], window_strides, padding)
    return tuple(tuple(int(v) for v in p) for p in padding)


def _onednn_pads(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                 feature_group_count, batch_group_count, preferred_element_type):  # fmt: skip
    """The explicit pads if oneDNN (:mod:`research.kernels.onednn`) can compute this convolution on
    CPU (dense float32 2D, NHWC / HWIO, no input dilation, non-negative pads, no empty axis), else None."""
    if not (
        rhs.ndim == 4
        and lhs.size > 0
        and rhs.size > 0
        and lhs.dtype == jnp.float32
        and rhs.dtype == jnp.float32
        and feature_group_count == 1
        and batch_group_count == 1
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and preferred_element_type in (None, jnp.float32)
        and jax.default_backend() == 'cpu'
        and _channels_last(lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers), 2)
    ):
        return None
    pads = _explicit_pads(lhs, rhs, window_strides, padding)
    out = onednn.output_shape(lhs.shape, rhs.shape, window_strides, pads, rhs_dilation or (1, 1))
    return pads if min(min(p) for p in pads) >= 0 and min(out) > 0 else None


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):  # fmt: skip
    """``lax.conv_general_dilated``, except on CPU for a first layer (an input of at most
    ``SHIFT_MAX_CHANNELS`` channels, small kernel, channels-last, no dilation or groups): there
    XLA:CPU's convolution is 4-14x slower than a sum of shifted slices times the kernel taps
    (benchmarks/RESULTS.md: LeNet's 5x5 1 -> 6 and ResNet's 3x3 3 -> 16), so the forward pass is
    computed that way and the backward pass by XLA's convolution gradients. Same values (float
    summation order aside). ``Conv`` (flax ``nn.Conv``) uses it for every model built with it.

    Within :func:`research.kernels.onednn.use_onednn` (the trainers' ``train.cpu_conv``), dense
    float32 2D convolutions go to oneDNN instead (all three passes), first layers included."""
    nd = rhs.ndim - 2
    if onednn.enabled() and not _NATIVE_CONV.get():
        pads = _onednn_pads(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                            feature_group_count, batch_group_count, preferred_element_type)  # fmt: skip
        if pads is not None:
            return onednn.conv2d(lhs, rhs, tuple(int(s) for s in window_strides), pads,
                                 tuple(int(d) for d in (rhs_dilation or (1, 1))))  # fmt: skip
    fast = (
        not _NATIVE_CONV.get()
        and jax.default_backend() == 'cpu'
        and lhs.shape[-1] <= SHIFT_MAX_CHANNELS
        and int(np.prod(rhs.shape[:nd])) * lhs.shape[-1] <= SHIFT_MAX_TAPS
        and feature_group_count == 1
        and batch_group_count == 1
        and all(d == 1 for d in (lhs_dilation or (1,) * nd))
        and all(d == 1 for d in (rhs_dilation or (1,) * nd))
        and preferred_element_type is None
        and precision in (None, lax.Precision.DEFAULT)
    )
    if fast:
        dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        fast = _channels_last(dn, nd)
    if fast:  # negative pads crop (ConvND's sub-pixel transposed conv): lax's
        pads = _explicit_pads(lhs, rhs, window_strides, padding)
        fast = min(min(p) for p in pads) >= 0
    if not fast:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type,
        )  # fmt: skip
    return _shift_conv(lhs, rhs, tuple(int(s) for s in window_strides), pads, dn)


def materialize(x):
    """``x`` unchanged, but computed once: an ``optimization_barrier`` that stops XLA from fusing
    (and so recomputing) the ops that produce ``x`` into each of its consumers.

    Used on the residual stream (the output of every residual block). Without it XLA:CPU fuses
    the chain ``x_{l+1} = act(y_l + x_l)`` into the transposes that feed each weight-gradient
    convolution, re-evaluating all earlier blocks of the stage for every one of them: quadratic in
    depth, 2x the step time of ResNet-56 (benchmarks/RESULTS.md). Differentiable (the barrier
    also stands on the cotangent) and free where the value is materialized anyway (GPU, TPU).
    Disabled within :func:`native_convolutions` so traced-program tools see plain ops.
    """
    if _NATIVE_CONV.get():
        return x
    return lax.optimization_barrier(x)


#: Flax's ``nn.Conv`` (its own default init) computing through :func:`conv_general_dilated`: the CPU
#: first-layer formulation and, within ``use_onednn`` (``train.cpu_conv``), oneDNN. Models that keep
#: Flax's or a paper's init use this rather than ``nn.Conv``, whose convolutions XLA would compute.
FlaxConv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)

#: Conv with the project's default init and the CPU paths above. Callers pass ``use_bias`` (False
#: before a norm layer).
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
            f"unknown activation {activation!r}; known: {', '.join(sorted(_ACTIVATIONS))}"
        ) from None


def resolve_norm(norm: str | ModuleDef | None) -> ModuleDef | None:
    """Accepts a module constructor, None, or one of 'batch' ('bn'), 'batch_biased' (BatchNorm with
    Flax's biased running-variance update), 'group', 'layer', 'none'."""
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
