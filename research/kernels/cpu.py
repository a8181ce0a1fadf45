"""The CPU backend: every CPU fast path of the generic layers, chosen per platform at lowering time.

XLA:CPU runs some formulations of a layer far slower than others (``benchmarks/layers.py``,
``benchmarks/RESULTS.md``); GPUs and TPUs run the plain ``lax`` ops best. Each function here takes
the plain form as the reference and returns ``jax.lax.platform_dependent(cpu=<fast form>,
default=<plain form>)``: both are traced, and when the program is lowered only the branch of the
target platform is kept. So a function traced once lowers correctly for CPU, GPU and TPU, and a
program exported for ``('cuda', 'tpu')`` contains none of the CPU forms (no oneDNN custom call, no
optimization barriers, no shift-and-add convolutions): ``tests/test_export.py`` checks that.

The CPU forms (same values as the plain ops, float summation order aside):

- :func:`conv_general_dilated`: a first layer (at most ``SHIFT_MAX_CHANNELS`` input channels, a small
  kernel) as a sum over taps of shifted slices times the kernel (XLA's convolution gradients
  backward); dense float32 2D convolutions through oneDNN while :func:`research.kernels.onednn.use_onednn`
  is on (the trainers' ``train.cpu_conv``); XLA's convolution otherwise.
- :func:`conv`: 1x1 kernels as a matmul, grouped convolutions (1 < g < C) as one dense conv per group,
  an explicit pad before a 'valid' conv when the padding exceeds D(F - 1).
- :func:`depthwise`: a sum over taps of shifted slices times the per-channel weights.
- :func:`conv_transpose`: the sub-pixel form for strides > 1 (one stride-1 conv per group of
  output phases, interleaved; no multiplications by inserted zeros).
- :func:`max_pool_tiled`: non-overlapping max pooling as reshape-and-max whose derivative (a custom
  JVP, so ``jax.jvp`` / ``jacfwd`` work too) sends the gradient to the first maximum of each window
  without XLA's select-and-scatter.
- :func:`materialize`: an ``optimization_barrier`` on the residual stream, so XLA:CPU does not fuse
  (and recompute) each block's ``act(y + x)`` into every weight-gradient transpose.

Within :func:`native_convolutions` every function emits the plain ops only (for tools that read
layers off the traced program, e.g. ``research.layers.summary``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from research.kernels import onednn

#: Inputs with at most this many channels and kernels of at most SHIFT_MAX_TAPS taps x channels take
#: the shift-and-add forward on CPU (:func:`conv_general_dilated`).
SHIFT_MAX_CHANNELS = 3
SHIFT_MAX_TAPS = 27

_NATIVE = contextvars.ContextVar('research_native_ops', default=False)


@contextlib.contextmanager
def native_convolutions():
    """Within this context every function of this module emits the plain ``lax`` ops and
    :func:`materialize` adds no barrier (for tools that read layers off the traced program)."""
    token = _NATIVE.set(True)
    try:
        yield
    finally:
        _NATIVE.reset(token)


def per_platform(cpu: Callable, default: Callable, *args):
    """``cpu(*args)`` in the program lowered for CPU, ``default(*args)`` for every other platform."""
    if _NATIVE.get():
        return default(*args)
    return lax.platform_dependent(*args, cpu=cpu, default=default)


def dimension_numbers(nd: int) -> lax.ConvDimensionNumbers:
    """Channels-last input/output, kernel (*F, C_in/g, C_out) (NHWC/HWIO for nd = 2)."""
    spatial = tuple(range(1, nd + 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, nd + 1) + spatial,
        rhs_spec=(nd + 1, nd) + tuple(range(nd)),
        out_spec=(0, nd + 1) + spatial,
    )


# --------------------------------------------------------------------------- the first layer, oneDNN


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


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _shift_conv(x, w, strides, pads, dn):
    return _shift_add_conv(x, w, strides, pads)


def _shift_conv_jvp(strides, pads, dn, primals, tangents):
    # The tangent through XLA's convolution (linear in both inputs), so the gradient is XLA's own
    # convolution gradients (fast) and forward mode (jax.jvp / jacfwd) works too. Symbolic zeros (the
    # input of a first layer has no tangent in training) cost nothing.
    (x, w), (tx, tw) = primals, tangents
    conv = functools.partial(
        lax.conv_general_dilated, window_strides=strides, padding=pads, dimension_numbers=dn
    )
    y = _shift_add_conv(x, w, strides, pads)
    terms = []
    if not isinstance(tx, SymbolicZero):
        terms.append(conv(tx, w))
    if not isinstance(tw, SymbolicZero):
        terms.append(conv(x, tw))
    return y, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(y)


_shift_conv.defjvp(_shift_conv_jvp, symbolic_zeros=True)


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


def _onednn_pads(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dn,
    feature_group_count,
    batch_group_count,
    preferred_element_type,
):
    """The explicit pads if oneDNN can compute this convolution (dense float32 2D, NHWC / HWIO, no
    input dilation, non-negative pads, no empty axis), else None."""
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
        and _channels_last(dn, 2)
    ):
        return None
    pads = _explicit_pads(lhs, rhs, window_strides, padding)
    out = onednn.output_shape(lhs.shape, rhs.shape, window_strides, pads, rhs_dilation or (1, 1))
    return pads if min(min(p) for p in pads) >= 0 and min(out) > 0 else None


def _shift_pads(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dn,
    feature_group_count,
    batch_group_count,
    precision,
    preferred_element_type,
):
    """The explicit pads if the shift-and-add forward applies (a first layer), else None."""
    nd = rhs.ndim - 2
    if not (
        lhs.shape[-1] <= SHIFT_MAX_CHANNELS
        and int(np.prod(rhs.shape[:nd])) * lhs.shape[-1] <= SHIFT_MAX_TAPS
        and feature_group_count == 1
        and batch_group_count == 1
        and all(d == 1 for d in (lhs_dilation or (1,) * nd))
        and all(d == 1 for d in (rhs_dilation or (1,) * nd))
        and preferred_element_type is None
        and precision in (None, lax.Precision.DEFAULT)
        and _channels_last(dn, nd)
    ):
        return None
    pads = _explicit_pads(lhs, rhs, window_strides, padding)
    return pads if min(min(p) for p in pads) >= 0 else None  # negative pads crop: lax's


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
):
    """``lax.conv_general_dilated``; on CPU a first layer takes the shift-and-add forward (XLA:CPU's
    convolution is 4-14x slower there: LeNet's 5x5 1 -> 6, ResNet's 3x3 3 -> 16), and within
    :func:`research.kernels.onednn.use_onednn` dense float32 2D convolutions go to oneDNN (all three
    passes). ``nn.Conv(conv_general_dilated=...)`` takes it (``research.layers.common.FlaxConv``)."""
    args = (
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers,
        feature_group_count,
        batch_group_count,
        precision,
        preferred_element_type,
    )

    def plain(lhs, rhs):
        return lax.conv_general_dilated(lhs, rhs, *args[2:])

    if _NATIVE.get():
        return plain(lhs, rhs)
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    fast = None
    if onednn.enabled():
        pads = _onednn_pads(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dn,
            feature_group_count,
            batch_group_count,
            preferred_element_type,
        )
        if pads is not None:
            strides = tuple(int(s) for s in window_strides)
            dil = tuple(int(d) for d in (rhs_dilation or (1, 1)))
            fast = lambda lhs, rhs: onednn.conv2d(lhs, rhs, strides, pads, dil)  # noqa: E731
    if fast is None:
        pads = _shift_pads(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dn,
            feature_group_count,
            batch_group_count,
            precision,
            preferred_element_type,
        )
        if pads is not None:
            strides = tuple(int(s) for s in window_strides)
            fast = lambda lhs, rhs: _shift_conv(lhs, rhs, strides, pads, dn)  # noqa: E731
    if fast is None:
        return plain(lhs, rhs)
    return per_platform(fast, plain, lhs, rhs)


# --------------------------------------------------------------------------- conv formulations


def pointwise(x, kernel, strides, pads, groups, precision):
    """1x1 conv = pad, subsample by S, then ``y[..., k] = sum_c x[..., c] W[c, k]`` (per group)."""
    nd = kernel.ndim - 2
    if any(p != (0, 0) for p in pads):
        x = lax.pad(
            x, np.array(0, x.dtype), ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in pads) + ((0, 0, 0),)
        )
    if any(st != 1 for st in strides):
        x = lax.slice(x, (0,) * x.ndim, x.shape, (1,) + tuple(strides) + (1,))
    w = kernel.reshape(kernel.shape[-2:])  # (C/g, K)
    if groups == 1:
        return jnp.einsum('...c,ck->...k', x, w, precision=precision)
    cg, k = w.shape
    xg = x.reshape(x.shape[:-1] + (groups, cg))
    y = jnp.einsum('...gc,cgk->...gk', xg, w.reshape(cg, groups, k // groups), precision=precision)
    return y.reshape(x.shape[: nd + 1] + (k,))


def lax_conv(x, kernel, strides, pads, dilation, groups, precision, lhs_dilation=None, split=False):
    """A channels-last convolution (kernel ``(*F, C/g, K)``) with explicit pads: one
    ``conv_general_dilated`` (groups via ``feature_group_count``), or with ``split`` one dense conv
    per group, concatenated."""
    kw = dict(
        window_strides=strides,
        padding=pads,
        lhs_dilation=lhs_dilation,
        rhs_dilation=dilation,
        dimension_numbers=dimension_numbers(kernel.ndim - 2),
        precision=precision,
    )
    if groups == 1 or not split:
        return conv_general_dilated(x, kernel, feature_group_count=groups, **kw)
    xs, ws = jnp.split(x, groups, axis=-1), jnp.split(kernel, groups, axis=-1)
    return jnp.concatenate([conv_general_dilated(a, b, **kw) for a, b in zip(xs, ws)], axis=-1)


def _cpu_conv(x, kernel, strides, pads, dilation, groups, precision, lhs_dilation):
    """The formulation ``benchmarks/layers.py`` timed fastest on XLA:CPU (forward + backward,
    32x32x32x64): 1x1 kernels as a matmul (~6x faster than the 1x1 conv), grouped convs (1 < g < C) as
    one dense conv per group (~35x faster than ``feature_group_count``); and when the padding exceeds
    D(F - 1) ('full'-like), an explicit pad op before a 'valid' conv (backward 2-3.5x faster)."""
    ks = kernel.shape[:-2]
    if all(f == 1 for f in ks) and lhs_dilation is None:
        return pointwise(x, kernel, strides, pads, groups, precision)
    eff = [di * (f - 1) for f, di in zip(ks, dilation)]
    if lhs_dilation is None and any(lo + hi > e for (lo, hi), e in zip(pads, eff)):
        pre = ((0, 0, 0),) + tuple((max(lo, 0), max(hi, 0), 0) for lo, hi in pads) + ((0, 0, 0),)
        x = lax.pad(x, np.array(0, x.dtype), pre)
        pads = tuple((min(lo, 0), min(hi, 0)) for lo, hi in pads)
    split = 1 < groups < x.shape[-1]
    return lax_conv(x, kernel, strides, pads, dilation, groups, precision, lhs_dilation, split=split)


def conv(x, kernel, strides, pads, dilation, groups=1, precision=None, lhs_dilation=None):
    """A channels-last convolution with explicit pads: on CPU the fastest formulation
    (:func:`_cpu_conv`), elsewhere one ``lax.conv_general_dilated``."""
    cpu = lambda x, kernel: _cpu_conv(x, kernel, strides, pads, dilation, groups, precision, lhs_dilation)  # noqa: E731
    plain = lambda x, kernel: lax_conv(x, kernel, strides, pads, dilation, groups, precision, lhs_dilation)  # noqa: E731
    return per_platform(cpu, plain, x, kernel)


def depthwise_shift_add(x, kernel, strides, pads, dilation):
    """Depthwise conv (kernel ``(*F, 1, C M)``) as an explicit sum over kernel taps of strided shifted
    slices times ``w[tap]``."""
    ks = kernel.shape[:-2]
    nd = len(ks)
    k_out = kernel.shape[-1]
    m = k_out // x.shape[-1]
    x = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
    if m > 1:
        x = jnp.repeat(x, m, axis=-1)  # output channel c*M + j reads input channel c
    out_sz = [(x.shape[1 + i] - dilation[i] * (ks[i] - 1) - 1) // strides[i] + 1 for i in range(nd)]
    y = None
    for tap in np.ndindex(*ks):
        start = (0,) + tuple(t * d for t, d in zip(tap, dilation)) + (0,)
        limit = (x.shape[0],) + tuple(st + (o - 1) * s + 1 for st, o, s in zip(start[1:], out_sz, strides))
        limit = limit + (k_out,)
        sl = lax.slice(x, start, limit, (1,) + tuple(strides) + (1,))
        term = sl * kernel[tap][0]
        y = term if y is None else y + term
    return y


def depthwise(x, kernel, strides, pads, dilation, precision=None):
    """Depthwise conv: on CPU the shift-and-add form (~5x faster forward + backward, 3x3, 32x32x32x64),
    elsewhere one convolution with ``feature_group_count = C``."""
    c = x.shape[-1]
    cpu = lambda x, kernel: depthwise_shift_add(x, kernel, strides, pads, dilation)  # noqa: E731
    plain = lambda x, kernel: lax_conv(x, kernel, strides, pads, dilation, c, precision)  # noqa: E731
    return per_platform(cpu, plain, x, kernel)


def conv_transpose_subpixel(x, w, s, tpads, op, d, groups, precision):
    """Transposed conv in the sub-pixel / phase form (Shi et al. 2016). ``w``: the in/out-swapped
    kernel ``(*F, C/g, K)`` of the adjoint. Output o = j S + t reads the uncropped adjoint at
    o + P_lo = q S + r (r = (t + P_lo) mod S, q = j + (t + P_lo) div S), which is
    ``sum_m x[q - m] w[(m S + r) / D]`` (taps with integral index < F): a dense stride-1 conv per phase
    t with M = ceil((D(F - 1) + 1) / S) taps per axis and an I-like output, then interleave. Phases
    with the same input shift (t + P_lo) div S (at most 2 per axis) share one conv, their kernels
    stacked on the output channels: FCN-32s' 64x64 stride-32 upsampling is 4 convs, not 1,024."""
    ks = w.shape[:-2]
    nd = len(ks)
    w = jnp.pad(w, [(0, 1)] * nd + [(0, 0), (0, 0)])  # tap F = zero
    cg, kg = w.shape[-2], w.shape[-1] // groups
    ins = x.shape[1:-1]
    outs = [
        (i - 1) * si - lo - hi + di * (f - 1) + o + 1
        for i, si, (lo, hi), di, f, o in zip(ins, s, tpads, d, ks, op)
    ]
    js = [-(-o // si) for o, si in zip(outs, s)]
    ms = [-(-(di * (f - 1) + 1) // si) for f, si, di in zip(ks, s, d)]
    phases = list(np.ndindex(*s))
    by_shift: dict[tuple[int, ...], list[int]] = {}
    for p, t in enumerate(phases):
        by_shift.setdefault(tuple((t[ax] + tpads[ax][0]) // s[ax] for ax in range(nd)), []).append(p)
    blocks, order = [], []
    for c0, members in by_shift.items():
        index = []  # per axis: the kernel taps of each member phase, (P, M_ax) broadcast over the axes
        for ax in range(nd):
            r = (np.array([phases[p][ax] for p in members]) + tpads[ax][0]) % s[ax]
            tap = np.arange(ms[ax])[::-1][None, :] * s[ax] + r[:, None]  # flipped: correlation form
            idx = np.where((tap % d[ax] == 0) & (tap // d[ax] < ks[ax]), tap // d[ax], ks[ax])
            index.append(idx.reshape((len(members),) + tuple(ms[a] if a == ax else 1 for a in range(nd))))
        wt = w[tuple(index)].reshape((len(members),) + tuple(ms) + (cg, groups, kg))  # (P, *M, C/g, g, K/g)
        wt = jnp.moveaxis(wt, 0, -2).reshape(tuple(ms) + (cg, groups * len(members) * kg))
        pads = tuple((ms[ax] - 1 - c0[ax], c0[ax] + js[ax] - ins[ax]) for ax in range(nd))
        y = _cpu_conv(x, wt, (1,) * nd, pads, (1,) * nd, groups, precision, None)
        blocks.append(y.reshape(y.shape[:-1] + (groups, len(members), kg)))
        order += members
    y = blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=-2)  # (n, *J, g, S^d, K/g)
    if order != sorted(order):
        y = jnp.take(y, np.argsort(order), axis=-2)
    n = x.shape[0]
    y = y.reshape((n,) + tuple(js) + (groups,) + tuple(s) + (kg,))
    perm = (0,) + tuple(a for ax in range(nd) for a in (1 + ax, nd + 2 + ax)) + (nd + 1, 2 * nd + 2)
    y = jnp.transpose(y, perm).reshape((n,) + tuple(j * si for j, si in zip(js, s)) + (groups * kg,))
    return y[(slice(None),) + tuple(slice(0, o) for o in outs)]


def conv_transpose(x, w, s, tpads, op, d, groups, precision, lhs_dilated: Callable):
    """A transposed conv: on CPU with a stride > 1 the sub-pixel form (~6x faster than the lhs-dilated
    conv forward + backward, 4x4 stride 2, 32x32x32x64), elsewhere ``lhs_dilated(x, w)`` (the stride-1
    conv over the S-dilated input: a plain conv at stride 1; cuDNN's native backward-data conv on GPU).
    ``w``: the in/out-swapped kernel ``(*F, C/g, K)``."""
    if all(si == 1 for si in s):
        return lhs_dilated(x, w)
    cpu = lambda x, w: conv_transpose_subpixel(x, w, s, tpads, op, d, groups, precision)  # noqa: E731
    return per_platform(cpu, lhs_dilated, x, w)


# --------------------------------------------------------------------------- residual stream, pooling


def materialize(x):
    """``x`` unchanged, computed once on CPU: an ``optimization_barrier`` that stops XLA:CPU from fusing
    (and so recomputing) the ops that produce ``x`` into each of its consumers.

    Used on the residual stream (the output of every residual block). Without it XLA:CPU fuses the
    chain ``x_{l+1} = act(y_l + x_l)`` into the transposes that feed each weight-gradient convolution,
    re-evaluating all earlier blocks of the stage for every one of them: quadratic in depth, 2x the
    step time of ResNet-56 (benchmarks/RESULTS.md; with ``research.xla_flags``). Differentiable (the
    barrier also stands on the cotangent); GPU and TPU materialize the stream anyway: no barrier there.
    """
    return per_platform(lax.optimization_barrier, lambda x: x, x)


def _blocks(x: jax.Array, w: tuple[int, ...]) -> jax.Array:
    """(N, *I, C) -> (N, I0/F0, F0, I1/F1, F1, ..., C), trailing rows beyond whole windows dropped."""
    out = [i // f for i, f in zip(x.shape[1:-1], w)]
    x = x[(slice(None), *(slice(0, o * f) for o, f in zip(out, w)), slice(None))]
    return x.reshape(x.shape[0], *[d for o, f in zip(out, w) for d in (o, f)], x.shape[-1])


def _first_max_mask(x, w, y):
    """(mask of the first maximum of each window of ``x`` in row-major order, the window axes), given
    the pooled ``y``: the element ``lax.reduce_window``'s select-and-scatter and torch's max-pool
    backward choose. In the block layout of :func:`_blocks`."""
    b = _blocks(x, w)
    axes = tuple(range(2, 2 * len(w) + 1, 2))  # the window axes of the block layout
    flat = jnp.zeros((), jnp.int32)
    for f, a in zip(w, axes):  # row-major index of each element within its window
        flat = flat * f + lax.broadcasted_iota(jnp.int32, b.shape, a)
    first = jnp.min(
        jnp.where(b == jnp.expand_dims(y, axes), flat, np.int32(np.prod(w))), axis=axes, keepdims=True
    )
    return flat == first, axes


def _reduce_max_tiled(x: jax.Array, w: tuple[int, ...]) -> jax.Array:
    lowest = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
    window = (1,) + tuple(w) + (1,)
    return lax.reduce_window(x, np.array(lowest, x.dtype), lax.max, window, window, 'VALID')


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _max_pool_tiled_cpu(x: jax.Array, w: tuple[int, ...]) -> jax.Array:
    return _reduce_max_tiled(x, w)


@_max_pool_tiled_cpu.defjvp
def _max_pool_tiled_jvp(w, primals, tangents):
    # The tangent (and so, transposed, the gradient) goes through the first maximum of each window: an
    # elementwise mask and a sum, which XLA:CPU runs ~4x faster backward than select-and-scatter (and
    # 1.5-1.9x faster than a cumulative-sum mask on airbench94's maps; benchmarks/RESULTS.md).
    (x,), (t,) = primals, tangents
    y = _reduce_max_tiled(x, w)
    mask, axes = _first_max_mask(x, w, y)  # from y: one max reduction, not two
    tb = _blocks(t, w)
    return y, jnp.sum(jnp.where(mask, tb, jnp.zeros((), tb.dtype)), axis=axes)


def max_pool_tiled(x: jax.Array, w: tuple[int, ...], plain: Callable) -> jax.Array:
    """Max pooling over non-overlapping windows ``w`` (stride = window, no padding): on CPU the
    reshape-and-max form above; ``plain(x)`` (``lax.reduce_window``) elsewhere. Same values, same
    gradient (the first maximum of each window)."""
    return per_platform(lambda x: _max_pool_tiled_cpu(x, w), plain, x)


__all__ = [
    'SHIFT_MAX_CHANNELS',
    'SHIFT_MAX_TAPS',
    'conv',
    'conv_general_dilated',
    'conv_transpose',
    'conv_transpose_subpixel',
    'depthwise',
    'depthwise_shift_add',
    'dimension_numbers',
    'lax_conv',
    'materialize',
    'max_pool_tiled',
    'native_convolutions',
    'per_platform',
    'pointwise',
]
