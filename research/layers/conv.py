"""Convolution layers, N-D, channels last (N, *spatial, C); the rank is ``len(kernel_size)``.

Notation (CS231n / Dumoulin & Visin 2016, "A guide to convolution arithmetic"): input size I,
kernel F, stride S, padding P per side, dilation D (effective kernel D(F - 1) + 1), C input and
K output channels, g groups.

- output size: ``O = floor((I + 2P - D(F - 1) - 1) / S) + 1`` (= (I + 2P - F)/S + 1 for D = 1);
- parameters: ``F^2 C K + K`` (2D), grouped ``F^2 C K / g + K`` (the issue's ``K^2 C M / g``);
- transposed: ``O = (I - 1) S - 2P + D(F - 1) + output_padding + 1`` (torch.nn.ConvTranspose2d).

Kernels use Flax's layout ``(*F, C / g, K)`` (``nn.Conv``-compatible; torch weight
``(K, C/g, *F)`` ports with ``w.permute(2, 3, 1, 0)`` in 2D) and the project's He fan-out init
(``research.layers.common.conv_kernel_init``). Padding specs (``resolve_padding``): 'valid'
(P = 0), 'same' (O = ceil(I / S), the odd pixel at the end, as TF/lax and torch's 'same'),
'full' (P = D(F - 1) both sides), 'causal' (P = D(F - 1) before only), an int, a (lo, hi)
pair, or one int/pair per spatial dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from research.kernels import cpu as cpu_kernels
from research.layers.common import bind_norm, conv_kernel_init, resolve_activation

PaddingLike = str | int | Sequence[int | tuple[int, int]]
IntOrSeq = int | Sequence[int]

__all__ = [
    'Conv',
    'ConvND',
    'ConvTranspose',
    'DepthwiseConv',
    'FlattenedConv',
    'SeparableConv',
    'ShuffledGroupConv',
    'SpatiallySeparableConv',
    'channel_shuffle',
    'conv_nd',
    'conv_output_size',
    'conv_param_count',
    'conv_transpose',
    'conv_transpose_output_size',
    'depthwise_conv',
    'resolve_padding',
]


# --------------------------------------------------------------------------- helpers


def _tuple(v: IntOrSeq, n: int, name: str = 'value') -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * n
    v = tuple(int(a) for a in v)
    if len(v) != n:
        raise ValueError(f'{name} has {len(v)} entries, expected {n} (one per spatial dim)')
    return v


def _kernel_tuple(kernel_size: IntOrSeq, x_ndim: int) -> tuple[int, ...]:
    """An int kernel size means the same size on every spatial dim of x."""
    if isinstance(kernel_size, int):
        return (kernel_size,) * (x_ndim - 2)
    kernel_size = tuple(kernel_size)
    if x_ndim != len(kernel_size) + 2:
        raise ValueError(
            f'{len(kernel_size)}-D kernel needs a (N, *{len(kernel_size)} spatial, C) input, got rank {x_ndim}'
        )
    return kernel_size


def _on_axis(i: int, nd: int, value, default) -> tuple:
    """``value`` on spatial axis i, ``default`` on the others (the 1-D factors of a 2D/3D conv)."""
    return tuple(value if j == i else default for j in range(nd))


_dimension_numbers = cpu_kernels.dimension_numbers


def resolve_padding(
    padding: PaddingLike,
    input_shape: Sequence[int],
    kernel_size: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
) -> tuple[tuple[int, int], ...]:
    """Explicit ``(lo, hi)`` pads per spatial dim. The effective kernel is ``D(F - 1) + 1``.

    'same': total = max((ceil(I/S) - 1) S + D(F - 1) + 1 - I, 0), lo = total // 2 (torch's and
    lax's split); 'full': D(F - 1) each side, i.e. every partial overlap (O = I + D(F - 1) at S = 1).
    """
    nd = len(kernel_size)
    eff = [d * (f - 1) + 1 for f, d in zip(kernel_size, dilation)]
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == 'valid':
            return ((0, 0),) * nd
        if mode == 'same':
            pads = []
            for i, e, s in zip(input_shape, eff, strides):
                total = max((-(-i // s) - 1) * s + e - i, 0)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        if mode == 'full':
            return tuple((e - 1, e - 1) for e in eff)
        if mode == 'causal':
            return tuple((e - 1, 0) for e in eff)
        raise ValueError(f"unknown padding {padding!r}; use 'valid', 'same', 'full', 'causal' or ints")
    if isinstance(padding, int):
        return ((padding, padding),) * nd
    padding = tuple(padding)
    if len(padding) == 2 and nd != 2 and all(isinstance(p, int) for p in padding):
        return ((padding[0], padding[1]),) * nd  # one (lo, hi) pair for every dim
    if len(padding) != nd:
        raise ValueError(f'padding {padding!r} needs one int or (lo, hi) pair per spatial dim ({nd})')
    return tuple((p, p) if isinstance(p, int) else (int(p[0]), int(p[1])) for p in padding)


def conv_output_size(
    input_size: int, kernel_size: int, stride: int = 1, padding: int | tuple[int, int] = 0, dilation: int = 1
) -> int:
    """``O = floor((I + P_lo + P_hi - D(F - 1) - 1) / S) + 1``; symmetric P gives (I + 2P - F)/S + 1."""
    lo, hi = (padding, padding) if isinstance(padding, int) else padding
    return (input_size + lo + hi - dilation * (kernel_size - 1) - 1) // stride + 1


def conv_transpose_output_size(
    input_size: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    output_padding: int = 0,
    dilation: int = 1,
) -> int:
    """torch.nn.ConvTranspose: ``O = (I - 1) S - 2P + D(F - 1) + output_padding + 1``."""
    lo, hi = (padding, padding) if isinstance(padding, int) else padding
    return (input_size - 1) * stride - lo - hi + dilation * (kernel_size - 1) + output_padding + 1


def conv_param_count(
    kernel_size: IntOrSeq, in_features: int, out_features: int, groups: int = 1, use_bias: bool = True
) -> int:
    """``prod(F) C K / g + K`` (2D: F^2 C K + K; grouped K^2 C M / g (+ M) in the issue's notation)."""
    if in_features % groups or out_features % groups:
        raise ValueError(f'groups={groups} must divide in ({in_features}) and out ({out_features}) features')
    f = kernel_size * kernel_size if isinstance(kernel_size, int) else math.prod(kernel_size)  # int: F x F
    return f * in_features * out_features // groups + (out_features if use_bias else 0)


# --------------------------------------------------------------------------- functional ops


def _check_impl(impl: str, ks, lhs_dilation) -> str:
    if impl not in ('auto', 'xla', 'split', 'matmul'):
        raise ValueError(f"impl must be 'auto', 'xla', 'split' or 'matmul', got {impl!r}")
    if impl == 'matmul' and not (all(f == 1 for f in ks) and lhs_dilation is None):
        raise ValueError("impl='matmul' needs a 1x1 (pointwise) kernel")
    return impl


def _conv(x, kernel, strides, pads, dilation, groups, precision, impl, lhs_dilation=None):
    """A convolution with explicit pads in the formulation ``impl`` picks ('auto': per platform,
    :func:`research.kernels.cpu.conv`)."""
    impl = _check_impl(impl, kernel.shape[:-2], lhs_dilation)
    if impl == 'auto':
        return cpu_kernels.conv(x, kernel, strides, pads, dilation, groups, precision, lhs_dilation)
    if impl == 'matmul':
        return cpu_kernels.pointwise(x, kernel, strides, pads, groups, precision)
    split = impl == 'split'
    return cpu_kernels.lax_conv(
        x, kernel, strides, pads, dilation, groups, precision, lhs_dilation, split=split
    )


def conv_nd(
    x: jax.Array,
    kernel: jax.Array,
    strides: IntOrSeq = 1,
    padding: PaddingLike = 'valid',
    dilation: IntOrSeq = 1,
    groups: int = 1,
    impl: str = 'auto',
    precision: Any = None,
) -> jax.Array:
    """Cross-correlation ``y[o] = sum_k x[o S - P_lo + k D] w[k]`` via ``lax.conv_general_dilated``.

    ``kernel``: ``(*F, C / groups, K)``; x: ``(N, *I, C)``. ``impl`` (same result): 'xla' (one
    ``lax.conv_general_dilated``, groups via ``feature_group_count``), 'split' (one dense conv per
    group, concatenated), 'matmul' (1x1 kernels: an einsum over channels) or 'auto' (default: the
    platform's best, chosen when the program is lowered: on CPU matmul for 1x1, split for
    1 < groups < C, an explicit pad before a 'valid' conv when the padding exceeds D(F - 1), each
    timed 2-35x faster there; 'xla' elsewhere; :mod:`research.kernels.cpu`).
    """
    ks = kernel.shape[:-2]
    nd = len(ks)
    s, d = _tuple(strides, nd, 'strides'), _tuple(dilation, nd, 'dilation')
    pads = resolve_padding(padding, x.shape[1:-1], ks, s, d)
    if x.shape[-1] != kernel.shape[-2] * groups:
        raise ValueError(f'input has {x.shape[-1]} channels; kernel {kernel.shape} with groups={groups}')
    return _conv(x, kernel, s, pads, d, groups, precision, impl)


def depthwise_conv(
    x: jax.Array,
    kernel: jax.Array,
    strides: IntOrSeq = 1,
    padding: PaddingLike = 'valid',
    dilation: IntOrSeq = 1,
    impl: str = 'auto',
    precision: Any = None,
) -> jax.Array:
    """Depthwise conv, kernel ``(*F, 1, C M)``: output channel c M + j filters input channel c only,
    ``y[o, cM + j] = sum_k x[o S - P + k D, c] w[k, cM + j]``.

    ``impl``: 'grouped' (one XLA convolution with ``feature_group_count = C``), 'shift' (explicit
    sum over the F^d taps of strided shifted slices times the per-channel weights; same result)
    or 'auto' (default, chosen when the program is lowered): 'shift' on CPU, where
    ``benchmarks/layers.py`` times it ~5x faster (forward + backward, 3x3, 32x32x32x64), 'grouped'
    elsewhere (:mod:`research.kernels.cpu`).
    """
    c = x.shape[-1]
    if kernel.shape[-2] != 1 or kernel.shape[-1] % c:
        raise ValueError(f'depthwise kernel must be (*F, 1, C*M) for C={c}, got {kernel.shape}')
    if impl not in ('auto', 'grouped', 'shift'):
        raise ValueError(f"impl must be 'auto', 'grouped' or 'shift', got {impl!r}")
    ks = kernel.shape[:-2]
    s, d = _tuple(strides, len(ks), 'strides'), _tuple(dilation, len(ks), 'dilation')
    pads = resolve_padding(padding, x.shape[1:-1], ks, s, d)
    if impl == 'grouped':
        return cpu_kernels.lax_conv(x, kernel, s, pads, d, c, precision)
    if impl == 'shift':
        return cpu_kernels.depthwise_shift_add(x, kernel, s, pads, d)
    return cpu_kernels.depthwise(x, kernel, s, pads, d, precision)


def _swap_in_out(kernel, groups):
    """Forward-conv kernel ``(*F, K/g, C)`` (K -> C) to ``(*F, C/g, K)`` (C -> K), per group."""
    ks = kernel.shape[:-2]
    kg, c = kernel.shape[-2:]
    w = kernel.reshape(ks + (kg, groups, c // groups))
    return jnp.swapaxes(w, -1, -3).reshape(ks + (c // groups, kg * groups))


def conv_transpose(
    x: jax.Array,
    kernel: jax.Array,
    strides: IntOrSeq = 1,
    padding: int | Sequence[int | tuple[int, int]] = 0,
    output_padding: IntOrSeq = 0,
    dilation: IntOrSeq = 1,
    groups: int = 1,
    impl: str = 'auto',
    precision: Any = None,
) -> jax.Array:
    """Transposed conv with torch.nn.functional.conv_transpose semantics, channels last.

    ``kernel``: ``(*F, K / g, C)``, the kernel of the *forward* conv that maps K -> C channels
    (torch's ConvTranspose weight ``(C, K/g, *F)`` permuted to channels last). The result equals
    ``jax.vjp`` of that forward conv (stride S, padding P, dilation D, groups g) taken at an input
    of size O and applied to x, i.e. the adjoint ``y[o] = sum_{i,k: i S - P + k D = o} x[i] w[k]``
    cropped to ``O = (I - 1) S - 2P + D(F - 1) + output_padding + 1``.

    ``impl``: 'lhs_dilation' (the reference form: a stride-1 conv over the S-dilated input, i.e.
    ``lhs_dilation=S``, with the spatially flipped, in/out-swapped kernel and padding
    ``(D(F - 1) - P, D(F - 1) - P + output_padding)``, negative = crop; exactly what the VJP of
    the forward conv lowers to); 'lax' (``lax.conv_transpose(transpose_kernel=True)``, the same
    convolution, groups = 1 only); 'subpixel' (one dense stride-1 conv per output phase, S^d of
    them, interleaved; no multiplications by inserted zeros). 'auto' (default, chosen when the program
    is lowered) is 'subpixel' on CPU for stride > 1, where ``benchmarks/layers.py`` times it ~6x
    faster than the lhs-dilated conv (forward + backward, 4x4 stride 2, 32x32x32x64), and
    'lhs_dilation' otherwise (stride 1: a plain conv; GPU: cuDNN's native backward-data conv).
    """
    ks = kernel.shape[:-2]
    nd = len(ks)
    s, d = _tuple(strides, nd, 'strides'), _tuple(dilation, nd, 'dilation')
    if isinstance(padding, str):
        raise TypeError(
            'ConvTranspose padding must be an int, a (lo, hi) pair or one per dim (torch semantics)'
        )
    tpads = resolve_padding(padding, (0,) * nd, ks, s, d)
    op = _tuple(output_padding, nd, 'output_padding')
    for o, si, di in zip(op, s, d):
        if not 0 <= o < max(si, di):
            raise ValueError(f'output_padding {op} must be < max(stride, dilation) (torch rule)')
    c_in = x.shape[-1]
    if kernel.shape[-1] != c_in or c_in % groups:
        raise ValueError(f'kernel {kernel.shape} does not match {c_in} input channels with groups={groups}')
    if impl not in ('auto', 'subpixel', 'lhs_dilation', 'lax'):
        raise ValueError(f"impl must be 'auto', 'subpixel', 'lhs_dilation' or 'lax', got {impl!r}")
    if impl == 'subpixel':
        return cpu_kernels.conv_transpose_subpixel(
            x, _swap_in_out(kernel, groups), s, tpads, op, d, groups, precision
        )
    pads = tuple((di * (f - 1) - lo, di * (f - 1) - hi + o) for (lo, hi), f, di, o in zip(tpads, ks, d, op))
    if impl == 'lax':
        if groups != 1:
            raise ValueError("impl='lax' supports groups=1 only")
        dn = _dimension_numbers(nd)
        return lax.conv_transpose(
            x,
            kernel,
            s,
            pads,
            rhs_dilation=d,
            dimension_numbers=dn,
            transpose_kernel=True,
            precision=precision,
        )
    lhs = s if any(si > 1 for si in s) else None

    def lhs_dilated(x, w):  # the stride-1 conv over the S-dilated input, taps flipped
        return _conv(
            x, jnp.flip(w, axis=tuple(range(nd))), (1,) * nd, pads, d, groups, precision, 'auto', lhs
        )

    w = _swap_in_out(kernel, groups)  # swap in/out per group
    if impl == 'lhs_dilation':
        return lhs_dilated(x, w)
    return cpu_kernels.conv_transpose(x, w, s, tpads, op, d, groups, precision, lhs_dilated)


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """ShuffleNet v1 (Zhang et al. 2018, Sec. 3.1): reshape C -> (g, C/g), transpose, flatten.

    Channel ``j * (C/g) + i`` moves to ``i * g + j``, so each next-layer group sees every group.
    """
    c = x.shape[-1]
    if c % groups:
        raise ValueError(f'groups={groups} must divide channels ({c})')
    y = x.reshape(x.shape[:-1] + (groups, c // groups))
    return jnp.swapaxes(y, -1, -2).reshape(x.shape)


# --------------------------------------------------------------------------- modules


class ConvND(nn.Module):
    """Standard/strided/1x1/grouped/dilated conv, N-D (``len(kernel_size)`` = 1, 2, 3, ...).

    ``y = x * W + b`` with W ``(*F, C / groups, K)``; O = floor((I + 2P - D(F-1) - 1)/S) + 1;
    ``prod(F) C K / g + K`` parameters. An int ``kernel_size`` is used on every spatial dim.
    1x1 (pointwise) conv: ``kernel_size=1``. Default padding 'valid' (torch's padding=0).
    ``impl`` picks the grouped-conv formulation (see ``conv_nd``; 'auto' = fastest measured).
    """

    summary_kind = 'conv'  # its row kind in research.layers.summary

    features: int
    kernel_size: IntOrSeq
    strides: IntOrSeq = 1
    padding: PaddingLike = 'valid'
    dilation: IntOrSeq = 1
    groups: int = 1
    use_bias: bool = True
    impl: str = 'auto'
    kernel_init: Callable = conv_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        ks = _kernel_tuple(self.kernel_size, x.ndim)
        c = x.shape[-1]
        if c % self.groups or self.features % self.groups:
            raise ValueError(f'groups={self.groups} must divide in ({c}) and out ({self.features}) channels')
        kernel = self.param(
            'kernel', self.kernel_init, ks + (c // self.groups, self.features), self.param_dtype
        )
        bias = (
            self.param('bias', self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv_nd(
            x, kernel, self.strides, self.padding, self.dilation, self.groups, self.impl, self.precision
        )
        return y + bias if bias is not None else y


#: Alias: ``Conv(64, (3, 3), padding='same')``. (``research.layers.common.Conv`` is nn.Conv with the
#: project init; this one adds 'full'/'causal' padding and the ``groups``/``dilation`` names.)
Conv = ConvND


class DepthwiseConv(nn.Module):
    """Depthwise conv (Howard et al. 2017, MobileNet, Sec. 3.1): one F x F filter per input channel.

    ``channel_multiplier`` M filters per channel: K = C M outputs, output c M + j from channel c;
    ``prod(F) C M (+ C M)`` parameters, kernel ``(*F, 1, C M)`` = the grouped conv's with
    groups = C (TF's ``(*F, C, M)`` reshaped), so init matches torch's depthwise Conv2d.
    ``impl``: 'auto' (default: 'shift' on CPU, faster there; 'grouped' elsewhere), 'grouped'
    (``feature_group_count = C``) or 'shift' (sum of shifted slices); see ``depthwise_conv``.
    """

    summary_kind = 'conv'  # its row kind in research.layers.summary

    kernel_size: IntOrSeq
    channel_multiplier: int = 1
    strides: IntOrSeq = 1
    padding: PaddingLike = 'same'
    dilation: IntOrSeq = 1
    use_bias: bool = True
    impl: str = 'auto'
    kernel_init: Callable = conv_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        ks = _kernel_tuple(self.kernel_size, x.ndim)
        k = x.shape[-1] * self.channel_multiplier
        kernel = self.param('kernel', self.kernel_init, ks + (1, k), self.param_dtype)
        bias = self.param('bias', self.bias_init, (k,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = depthwise_conv(x, kernel, self.strides, self.padding, self.dilation, self.impl, self.precision)
        return y + bias if bias is not None else y


def _maybe_norm_act(x, norm, activation, train: bool, name: str):
    bound = bind_norm(norm, train)
    if bound is not None:
        x = bound(name=name)(x)
    if activation is not None:
        x = resolve_activation(activation)(x)
    return x


class SeparableConv(nn.Module):
    """Depthwise separable conv (Chollet 2017; Howard et al. 2017): depthwise F x F, then 1x1.

    Parameters ``prod(F) C M + C M K + K`` vs ``prod(F) C K + K`` for the full conv (MobileNet's
    cost ratio 1/K + 1/F^2). Knobs between the two convs: ``norm`` (name/constructor, bound to
    ``train`` via ``bind_norm``; e.g. 'batch' for MobileNet) and ``activation`` (None = linear, as
    in Xception). ``depthwise_bias`` adds a bias to the depthwise stage (off by default).
    """

    features: int
    kernel_size: IntOrSeq
    strides: IntOrSeq = 1
    padding: PaddingLike = 'same'
    dilation: IntOrSeq = 1
    depth_multiplier: int = 1
    use_bias: bool = True
    depthwise_bias: bool = False
    norm: Any = None
    activation: str | Callable | None = None
    kernel_init: Callable = conv_kernel_init
    dtype: Any = None
    precision: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = DepthwiseConv(
            self.kernel_size,
            self.depth_multiplier,
            self.strides,
            self.padding,
            self.dilation,
            use_bias=self.depthwise_bias,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            precision=self.precision,
            name='depthwise',
        )(x)
        y = _maybe_norm_act(y, self.norm, self.activation, train, 'norm')
        return ConvND(
            self.features,
            (1,) * (x.ndim - 2),
            use_bias=self.use_bias,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            precision=self.precision,
            name='pointwise',
        )(y)


class SpatiallySeparableConv(nn.Module):
    """Spatially separable conv: F x 1 then 1 x F (N-D: one 1-D conv per spatial axis, in order).

    2D: ``W[h, w, c, k] = sum_m A[h, c, m] B[w, m, k]``, a full F x F conv whose kernel has rank
    <= ``mid_features`` per (c, k); with one channel it is the outer product ``a b^T`` (rank 1).
    Stride/padding/dilation of axis i go to the i-th conv only, so with ``norm=None``,
    ``activation=None`` and no bias on the first convs the result equals that full conv exactly.
    ``mid_features`` defaults to ``features``; ``use_bias`` applies to the last conv.
    """

    features: int
    kernel_size: IntOrSeq
    strides: IntOrSeq = 1
    padding: PaddingLike = 'same'
    dilation: IntOrSeq = 1
    mid_features: int | None = None
    use_bias: bool = True
    norm: Any = None
    activation: str | Callable | None = None
    kernel_init: Callable = conv_kernel_init
    dtype: Any = None
    precision: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        ks = _kernel_tuple(self.kernel_size, x.ndim)
        nd = len(ks)
        s, d = _tuple(self.strides, nd, 'strides'), _tuple(self.dilation, nd, 'dilation')
        pads = resolve_padding(self.padding, x.shape[1:-1], ks, s, d)
        mid = self.mid_features or self.features
        for i in range(nd):
            last = i == nd - 1
            x = ConvND(
                self.features if last else mid,
                _on_axis(i, nd, ks[i], 1),
                strides=_on_axis(i, nd, s[i], 1),
                padding=_on_axis(i, nd, pads[i], (0, 0)),
                dilation=_on_axis(i, nd, d[i], 1),
                use_bias=self.use_bias and last,
                kernel_init=self.kernel_init,
                dtype=self.dtype,
                precision=self.precision,
                name=f'conv{i}',
            )(x)
            if not last:
                x = _maybe_norm_act(x, self.norm, self.activation, train, f'norm{i}')
        return x


class FlattenedConv(nn.Module):
    """Flattened conv (Jin, Dundar, Culurciello 2014): lateral, vertical, horizontal 1-D filters.

    Each 3D filter ``W_k[c, y, x]`` is replaced by ``alpha_k[c] beta_k[y] gamma_k[x]``: a lateral
    1x1 conv across channels (C -> K, full), then a vertical F x 1 and a horizontal 1 x F conv,
    both depthwise (one 1-D filter per output channel, as in the paper). Params ``C K + (F_v + F_h) K
    (+ K)`` vs ``F^2 C K + K``. N-D: one depthwise 1-D conv per spatial axis after the lateral
    one. Bias only at the end by default and no nonlinearity in between (the paper's L-V-H
    layer), so the layer equals a full conv with rank-1 kernels; ``activation``/``norm`` (between
    the 1-D convs) are ablation knobs.
    """

    features: int
    kernel_size: IntOrSeq
    strides: IntOrSeq = 1
    padding: PaddingLike = 'same'
    dilation: IntOrSeq = 1
    use_bias: bool = True
    norm: Any = None
    activation: str | Callable | None = None
    kernel_init: Callable = conv_kernel_init
    dtype: Any = None
    precision: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        ks = _kernel_tuple(self.kernel_size, x.ndim)
        nd = len(ks)
        s, d = _tuple(self.strides, nd, 'strides'), _tuple(self.dilation, nd, 'dilation')
        pads = resolve_padding(self.padding, x.shape[1:-1], ks, s, d)
        x = ConvND(
            self.features,
            (1,) * nd,
            use_bias=False,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            precision=self.precision,
            name='lateral',
        )(x)
        for i in range(nd):
            x = _maybe_norm_act(x, self.norm, self.activation, train, f'norm{i}')
            x = DepthwiseConv(
                _on_axis(i, nd, ks[i], 1),
                strides=_on_axis(i, nd, s[i], 1),
                padding=_on_axis(i, nd, pads[i], (0, 0)),
                dilation=_on_axis(i, nd, d[i], 1),
                use_bias=self.use_bias and i == nd - 1,
                kernel_init=self.kernel_init,
                dtype=self.dtype,
                precision=self.precision,
                name=f'axis{i}',
            )(x)
        return x


class ConvTranspose(nn.Module):
    """Transposed ("fractionally strided") conv, exactly torch.nn.ConvTranspose{1,2,3}d.

    O = (I - 1) S - 2P + D(F - 1) + output_padding + 1; ``padding`` is torch's (ints or per-dim
    (lo, hi) pairs), ``output_padding < max(S, D)``. Equals the VJP (input gradient) of
    ``ConvND(C, F, strides=S, padding=P, dilation=D, groups=g)`` applied to x; see
    ``conv_transpose``. Kernel ``(*F, K / g, C)`` (torch weight ``(C, K/g, *F)`` moved to
    channels last), ``prod(F) C K / g + K`` params. Fan-out init on the last axis like the other
    convs (torch's ConvTranspose default init differs; pass ``kernel_init`` to change it).
    ``impl``: 'auto' (default: 'subpixel' on CPU, 'lhs_dilation' elsewhere), 'subpixel',
    'lhs_dilation' (flipped kernel over the S-dilated input) or 'lax'; see ``conv_transpose``.
    """

    summary_kind = 'conv_transpose'  # its row kind in research.layers.summary

    features: int
    kernel_size: IntOrSeq
    strides: IntOrSeq = 1
    padding: int | Sequence[int | tuple[int, int]] = 0
    output_padding: IntOrSeq = 0
    dilation: IntOrSeq = 1
    groups: int = 1
    use_bias: bool = True
    impl: str = 'auto'
    kernel_init: Callable = conv_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        ks = _kernel_tuple(self.kernel_size, x.ndim)
        c = x.shape[-1]
        if c % self.groups or self.features % self.groups:
            raise ValueError(f'groups={self.groups} must divide in ({c}) and out ({self.features}) channels')
        kernel = self.param(
            'kernel', self.kernel_init, ks + (self.features // self.groups, c), self.param_dtype
        )
        bias = (
            self.param('bias', self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv_transpose(
            x,
            kernel,
            self.strides,
            self.padding,
            self.output_padding,
            self.dilation,
            self.groups,
            self.impl,
            self.precision,
        )
        return y + bias if bias is not None else y


class ShuffledGroupConv(nn.Module):
    """ShuffleNet v1 (Zhang et al. 2018): grouped conv (``groups`` g), optional norm/activation,
    then ``channel_shuffle(., g)``. Params ``prod(F) C K / g (+ K)``. Defaults: 1x1 pointwise
    group conv, no bias, no norm/activation (set ``norm='batch', activation='relu'`` for the
    paper's GConv-BN-ReLU-Shuffle)."""

    features: int
    groups: int
    kernel_size: IntOrSeq = 1
    strides: IntOrSeq = 1
    padding: PaddingLike = 'same'
    dilation: IntOrSeq = 1
    use_bias: bool = False
    norm: Any = None
    activation: str | Callable | None = None
    kernel_init: Callable = conv_kernel_init
    dtype: Any = None
    precision: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = ConvND(
            self.features,
            self.kernel_size,
            self.strides,
            self.padding,
            self.dilation,
            self.groups,
            use_bias=self.use_bias,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            precision=self.precision,
            name='conv',
        )(x)
        y = _maybe_norm_act(y, self.norm, self.activation, train, 'norm')
        return channel_shuffle(y, self.groups)
