"""Pooling, N-D, channels last (N, *spatial, C); the rank is ``len(window)``. Pure functions.

Window pools follow torch.nn.functional.{max,avg}_pool semantics: ``strides`` defaults to the
window, padding is 'valid'/'same'/'full' or ints/pairs (``research.layers.conv.resolve_padding``),
``O = floor((I + 2P - D(F - 1) - 1) / S) + 1`` (``ceil`` with ``ceil_mode``, where the last window
must start inside the input or left padding, as in torch). Adaptive pools and SPP use torch's
adaptive bins ``[floor(i I / O), ceil((i + 1) I / O))``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.kernels import cpu as cpu_kernels
from research.layers.conv import IntOrSeq, PaddingLike, _tuple, resolve_padding

__all__ = [
    'adaptive_avg_pool',
    'adaptive_max_pool',
    'avg_pool',
    'global_avg_pool',
    'global_max_pool',
    'max_pool',
    'max_pool_with_indices',
    'max_unpool',
    'min_pool',
    'pool_output_size',
    'spatial_pyramid_pool',
]


def _window_tuple(window: IntOrSeq, x: jax.Array) -> tuple[int, ...]:
    w = _tuple(window, x.ndim - 2, 'window')
    if x.ndim != len(w) + 2:
        raise ValueError(f'{len(w)}-D window needs a (N, *{len(w)} spatial, C) input, got rank {x.ndim}')
    return w


def pool_output_size(
    input_size: int,
    window: int,
    stride: int,
    padding: int | tuple[int, int] = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """torch's ``pooling_output_shape``: floor (or ceil) of (I + 2P - D(F-1) - 1)/S, plus 1."""
    lo, hi = (padding, padding) if isinstance(padding, int) else padding
    span = input_size + lo + hi - dilation * (window - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= input_size + lo:
        out -= 1
    return out


def _pool_geometry(x, window, strides, padding, dilation, ceil_mode):
    w = _window_tuple(window, x)
    nd = len(w)
    s = w if strides is None else _tuple(strides, nd, 'strides')
    d = _tuple(dilation, nd, 'dilation')
    pads = resolve_padding(padding, x.shape[1:-1], w, s, d)
    extra = []  # ceil_mode overhang: padded like the explicit padding but never counted
    for i, (lo, hi), f, si, di in zip(x.shape[1:-1], pads, w, s, d):
        out = pool_output_size(i, f, si, (lo, hi), di, ceil_mode)
        extra.append(max((out - 1) * si + di * (f - 1) + 1 - (i + lo + hi), 0))
    return w, s, d, pads, tuple(extra)


def _reduce_pool(x, init, op, w, s, d, pads, extra):
    full = ((0, 0),) + tuple((lo, hi + e) for (lo, hi), e in zip(pads, extra)) + ((0, 0),)
    return lax.reduce_window(
        x, init, op, (1,) + w + (1,), (1,) + s + (1,), full, window_dilation=(1,) + d + (1,)
    )


def _lowest(dtype):
    return -jnp.inf if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype).min


def _highest(dtype):
    return jnp.inf if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype).max


def _tap_slice(xp, tap, d, s, out):
    """The strided slice of the padded input ``xp`` that window tap ``tap`` reads for every output."""
    start = (0,) + tuple(k * di for k, di in zip(tap, d)) + (0,)
    limit = (
        (xp.shape[0],)
        + tuple(st + (o - 1) * si + 1 for st, o, si in zip(start[1:], out, s))
        + (xp.shape[-1],)
    )
    return lax.slice(xp, start, limit, (1,) + s + (1,))


def _max_pool_dilated_impl(x, w, s, d, pads, extra):
    return _reduce_pool(x, np.array(_lowest(x.dtype), x.dtype), lax.max, w, s, d, pads, extra)


#: Max pooling with window dilation and a gradient: XLA's reduce_window max has no VJP with window
#: dilation (``select_and_gather`` lacks it), so the backward pass is written here.
_max_pool_dilated = jax.custom_vjp(_max_pool_dilated_impl, nondiff_argnums=(1, 2, 3, 4, 5))


def _max_pool_dilated_fwd(x, w, s, d, pads, extra):
    return _max_pool_dilated_impl(x, w, s, d, pads, extra), x


def _max_pool_dilated_bwd(w, s, d, pads, extra, x, g):
    # torch's rule (max_pool2d_with_indices backward): each output's gradient goes to the first maximum
    # of its window in row-major tap order (``val > max || isnan(val)``); then, per tap, the outputs
    # that picked it scatter their gradient back through the tap's strided slice (lax.pad with interior
    # padding S - 1 at the tap's offset), and the padding is cropped off.
    full = ((0, 0),) + tuple((lo, hi + e) for (lo, hi), e in zip(pads, extra)) + ((0, 0),)
    xp = jnp.pad(x, full, constant_values=_lowest(x.dtype))
    out = g.shape[1:-1]
    best_val = best = None
    for t, tap in enumerate(np.ndindex(*w)):
        v = _tap_slice(xp, tap, d, s, out)
        if best is None:
            best_val, best = v, jnp.zeros(v.shape, jnp.int32)
            continue
        take = (v > best_val) | jnp.isnan(v)
        best_val, best = jnp.where(take, v, best_val), jnp.where(take, t, best)
    zero = jnp.zeros((), g.dtype)
    gxp = jnp.zeros(xp.shape, g.dtype)
    for t, tap in enumerate(np.ndindex(*w)):
        cfg = [(0, 0, 0)]
        for k, di, si, o, n in zip(tap, d, s, out, xp.shape[1:-1]):
            cfg.append((k * di, n - (k * di + (o - 1) * si + 1), si - 1))
        gxp = gxp + lax.pad(jnp.where(best == t, g, zero), zero, cfg + [(0, 0, 0)])
    crop = (
        (slice(None),) + tuple(slice(lo, lo + i) for (lo, _), i in zip(pads, x.shape[1:-1])) + (slice(None),)
    )
    return (gxp[crop],)


_max_pool_dilated.defvjp(_max_pool_dilated_fwd, _max_pool_dilated_bwd)


def max_pool(
    x: jax.Array,
    window: IntOrSeq,
    strides: IntOrSeq | None = None,
    padding: PaddingLike = 0,
    dilation: IntOrSeq = 1,
    ceil_mode: bool = False,
) -> jax.Array:
    """``y[o] = max_{k} x[o S - P + k D]`` over the F window (padding never wins: -inf).

    Non-overlapping windows (stride = window, no padding or dilation: LeNet's, VGG's, U-Net's 2x2/2)
    take, in a program lowered for CPU, a path whose derivative (to the first maximum of each window,
    as ``reduce_window``'s) avoids XLA's select-and-scatter: same values, ~4x faster backward there
    (:func:`research.kernels.cpu.max_pool_tiled`).
    Window dilation > 1 (float inputs) has its own gradient (XLA has none): torch's, to the first
    maximum of each window in row-major order.
    """
    w, s, d, pads, extra = _pool_geometry(x, window, strides, padding, dilation, ceil_mode)

    def plain(x):
        return _reduce_pool(x, np.array(_lowest(x.dtype), x.dtype), lax.max, w, s, d, pads, extra)

    if s == w and all(di == 1 for di in d) and all(p == (0, 0) for p in pads) and not any(extra):
        return cpu_kernels.max_pool_tiled(x, w, plain)
    if any(di > 1 for di in d) and jnp.issubdtype(x.dtype, jnp.floating):
        return _max_pool_dilated(x, w, s, d, tuple(tuple(int(v) for v in p) for p in pads), extra)
    return plain(x)


def min_pool(
    x: jax.Array,
    window: IntOrSeq,
    strides: IntOrSeq | None = None,
    padding: PaddingLike = 0,
    dilation: IntOrSeq = 1,
    ceil_mode: bool = False,
) -> jax.Array:
    """``y[o] = min_{k} x[o S - P + k D]`` (= -max_pool(-x); padding never wins: +inf)."""
    geo = _pool_geometry(x, window, strides, padding, dilation, ceil_mode)
    if any(di > 1 for di in geo[2]) and jnp.issubdtype(x.dtype, jnp.floating):  # the gradient of max_pool's
        return -max_pool(-x, window, strides, padding, dilation, ceil_mode)
    return _reduce_pool(x, np.array(_highest(x.dtype), x.dtype), lax.min, *geo)


def avg_pool(
    x: jax.Array,
    window: IntOrSeq,
    strides: IntOrSeq | None = None,
    padding: PaddingLike = 0,
    dilation: IntOrSeq = 1,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> jax.Array:
    """``y[o] = sum_k x[o S - P + k D] / n(o)``, torch's divisor: with ``count_include_pad`` n counts
    window cells inside the zero-padded input (not the ceil_mode overhang), else inside the input."""
    w, s, d, pads, extra = _pool_geometry(x, window, strides, padding, dilation, ceil_mode)
    total = _reduce_pool(x, np.array(0, x.dtype), lax.add, w, s, d, pads, extra)
    ones = np.ones((1,) + x.shape[1:-1] + (1,), np.float32)
    if count_include_pad:
        ones = np.pad(ones, ((0, 0),) + tuple(pads) + ((0, 0),), constant_values=1.0)
        pads = tuple((0, 0) for _ in pads)
    count = _reduce_pool(jnp.asarray(ones), np.array(0, np.float32), lax.add, w, s, d, pads, extra)
    return total / count.astype(total.dtype)


def global_avg_pool(x: jax.Array, keepdims: bool = False) -> jax.Array:
    """Mean over all spatial dims (Lin et al. 2014, Network in Network): (N, *I, C) -> (N, C)."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)), keepdims=keepdims)


def global_max_pool(x: jax.Array, keepdims: bool = False) -> jax.Array:
    """Max over all spatial dims: (N, *I, C) -> (N, C)."""
    return jnp.max(x, axis=tuple(range(1, x.ndim - 1)), keepdims=keepdims)


# --------------------------------------------------------------------------- adaptive / SPP


def _adaptive_bins(i: int, o: int):
    """torch's adaptive bins: start = floor(j I / O), end = ceil((j + 1) I / O)."""
    j = np.arange(o)
    start = (j * i) // o
    end = -((-(j + 1) * i) // o)
    return start, end


def _adaptive_1d(x, axis: int, out: int, mode: str):
    i = x.shape[axis]
    start, end = _adaptive_bins(i, out)
    length = int((end - start).max())
    offs = np.arange(length)
    idx = np.minimum(start[:, None] + offs, end[:, None] - 1)  # (O, L), repeats the last cell
    g = jnp.take(x, idx.reshape(-1), axis=axis)
    g = g.reshape(x.shape[:axis] + (out, length) + x.shape[axis + 1 :])
    if mode == 'max':
        return jnp.max(g, axis=axis + 1)
    wts = ((offs < (end - start)[:, None]) / (end - start)[:, None]).astype(np.float32)
    wts = wts.reshape((out, length) + (1,) * (x.ndim - axis - 1))
    return jnp.sum(g * jnp.asarray(wts, x.dtype), axis=axis + 1)


def _adaptive(x, output_size, mode):
    nd = x.ndim - 2
    out = (output_size,) * nd if isinstance(output_size, int) else tuple(output_size)
    if len(out) != nd:
        raise ValueError(f'output_size {output_size!r} needs {nd} entries for a rank-{x.ndim} input')
    for ax, o in enumerate(out, start=1):  # box max/mean = nested per-axis max/mean over the bins
        if o is not None and o != x.shape[ax]:  # O == I: unit bins, identity
            x = _adaptive_1d(x, ax, int(o), mode)
    return x


def adaptive_avg_pool(x: jax.Array, output_size: int | Sequence[int | None]) -> jax.Array:
    """torch's adaptive_avg_pool{1,2,3}d: mean over bins [floor(i I/O), ceil((i+1) I/O)); None keeps a dim."""
    return _adaptive(x, output_size, 'avg')


def adaptive_max_pool(x: jax.Array, output_size: int | Sequence[int | None]) -> jax.Array:
    """torch's adaptive_max_pool{1,2,3}d: max over bins [floor(i I/O), ceil((i+1) I/O)); None keeps a dim."""
    return _adaptive(x, output_size, 'max')


def spatial_pyramid_pool(x: jax.Array, levels: Sequence[int] = (1, 2, 4), mode: str = 'max') -> jax.Array:
    """SPP (He et al. 2014, Sec. 2.3): adaptive-pool to n x n bins per level, flatten, concatenate.

    Output ``(N, C sum_n n^d)`` for any input size (fixed length). Bins are torch's adaptive
    bins [floor(i H/n), ceil((i+1) H/n)) (the paper's window ceil(H/n), stride floor(H/n) differs
    for some sizes). Each level is flattened channels last: index (bin, c) -> bin * C + c.
    """
    if mode not in ('max', 'avg'):
        raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
    pool = adaptive_max_pool if mode == 'max' else adaptive_avg_pool
    return jnp.concatenate([pool(x, n).reshape(x.shape[0], -1) for n in levels], axis=-1)


# --------------------------------------------------------------------------- max pool indices / unpool


def max_pool_with_indices(
    x: jax.Array,
    window: IntOrSeq,
    strides: IntOrSeq | None = None,
    padding: PaddingLike = 0,
    dilation: IntOrSeq = 1,
    ceil_mode: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """``max_pool`` plus argmax indices like torch's ``return_indices=True``.

    Indices (int32) are flattened over the unpadded input's spatial dims per (n, c): ``h W + w``
    in 2D, ``(d H + h) W + w`` in 3D; ties go to the first index in row-major order (torch scans
    the window in that order and keeps the first maximum). Values are ``max_pool``'s (so they
    differentiate as usual); indices come from a running first-maximum over the F^d strided window
    taps of the (stop-gradient) input, ``o S - P + t D`` mapped back to flat input coordinates
    (timed 5-20x faster on CPU than a variadic ``lax.reduce_window`` over (value, index) pairs).
    """
    geo = _pool_geometry(x, window, strides, padding, dilation, ceil_mode)
    values = _reduce_pool(x, np.array(_lowest(x.dtype), x.dtype), lax.max, *geo)
    w, s, d, pads, extra = geo
    full = ((0, 0),) + tuple((lo, hi + e) for (lo, hi), e in zip(pads, extra)) + ((0, 0),)
    xp = jnp.pad(lax.stop_gradient(x), full, constant_values=_lowest(x.dtype))
    out = values.shape[1:-1]
    best_val = best = None
    for t, tap in enumerate(np.ndindex(*w)):
        start = (0,) + tuple(k * di for k, di in zip(tap, d)) + (0,)
        limit = (xp.shape[0],) + tuple(st + (o - 1) * si + 1 for st, o, si in zip(start[1:], out, s))
        v = lax.slice(xp, start, limit + (xp.shape[-1],), (1,) + s + (1,))
        if best is None:
            best_val, best = v, jnp.zeros(v.shape, jnp.int32)
            continue
        take = v > best_val  # strict: the first maximum in scan order stays, as in torch
        if jnp.issubdtype(x.dtype, jnp.floating):
            take = take | jnp.isnan(v)  # torch: ``val > maxval || isnan(val)``
        best_val, best = jnp.where(take, v, best_val), jnp.where(take, t, best)
    spatial = x.shape[1:-1]
    flat = jnp.zeros_like(best)
    for i in range(len(w)):
        tap_i = (best // int(np.prod(w[i + 1 :]))) % w[i]
        o_i = lax.broadcasted_iota(jnp.int32, best.shape, i + 1)
        coord = o_i * s[i] - pads[i][0] + tap_i * d[i]
        flat = flat + coord * int(np.prod(spatial[i + 1 :]))
    return values, flat


def max_unpool(
    x: jax.Array,
    indices: jax.Array,
    output_size: Sequence[int] | None = None,
    window: IntOrSeq | None = None,
    strides: IntOrSeq | None = None,
    padding: int | Sequence[int] = 0,
) -> jax.Array:
    """Inverse of ``max_pool_with_indices`` (Zeiler & Fergus 2014 "switches"; torch max_unpool):
    zeros of spatial ``output_size`` with ``x`` written at ``indices``. Without ``output_size``
    it is torch's default ``(I - 1) S - 2P + F`` from ``window``/``strides``/``padding``.

    An index outside the output (e.g. a 3x3/2 pool with padding 1 of an 8x8 map unpooled at the
    default 7x7) raises ``ValueError`` as torch does ('Found an invalid max index'): at once for
    concrete indices; inside ``jit`` with the default size when the program runs (a host callback;
    the error names the index). Under ``jit`` an explicit ``output_size`` is trusted: pass the pooled
    input's spatial size, where every index fits by construction."""
    nd = x.ndim - 2
    defaulted = output_size is None
    if output_size is None:
        if window is None:
            raise ValueError('max_unpool needs output_size or window (and strides/padding)')
        w = _tuple(window, nd, 'window')
        s = w if strides is None else _tuple(strides, nd, 'strides')
        p = _tuple(padding, nd, 'padding')
        output_size = tuple((i - 1) * si - 2 * pi + wi for i, si, pi, wi in zip(x.shape[1:-1], s, p, w))
    output_size = tuple(output_size)
    if len(output_size) != nd:
        raise ValueError(f'output_size {output_size} needs {nd} spatial entries')
    n, c = x.shape[0], x.shape[-1]
    vals = x.reshape(n, -1, c)
    idx = indices.reshape(n, -1, c)
    check = functools.partial(_check_unpool_indices, output_size=output_size)
    if not isinstance(indices, jax.core.Tracer):
        if indices.size:
            check(np.min(indices), np.max(indices))
    elif defaulted and indices.size:
        jax.debug.callback(check, jnp.min(indices), jnp.max(indices))
    out = jnp.zeros((n, int(np.prod(output_size)), c), x.dtype)
    out = out.at[jnp.arange(n)[:, None, None], idx, jnp.arange(c)[None, None, :]].set(vals, mode='drop')
    return out.reshape((n,) + output_size + (c,))


def _check_unpool_indices(lo, hi, output_size):
    size = int(np.prod(output_size))
    if int(lo) < 0 or int(hi) >= size:
        bad = int(hi) if int(hi) >= size else int(lo)
        raise ValueError(
            f'max_unpool: index {bad} out of range for output size {tuple(output_size)} ({size} positions); '
            "pass output_size=<the pooled input's spatial size>"
        )
