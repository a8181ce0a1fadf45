"""RoI pooling (Girshick 2015, Fast R-CNN) and RoI align (He et al. 2017, Mask R-CNN).

Semantics of torchvision.ops.roi_pool / roi_align, channels last: features ``(N, H, W, C)``,
boxes ``(K, 5)`` rows (batch_index, x1, y1, x2, y2) or ``(K, 4)`` plus ``batch_indices`` (K,),
in input-image coordinates scaled by ``spatial_scale``; output ``(K, PH, PW, C)``.

Static shapes throughout (box values are traced data): both ops reduce separably over rows and
columns with per-box (PH, H) and (PW, W) tables, so they jit once and accept any box values.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ['roi_align', 'roi_max_pool', 'roi_pool']

_HI = lax.Precision.HIGHEST


def _split_boxes(boxes, batch_indices):
    boxes = jnp.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[-1] not in (4, 5):
        raise ValueError(f'boxes must be (K, 5) or (K, 4), got {boxes.shape}')
    if boxes.shape[-1] == 5:
        if batch_indices is not None:
            raise ValueError('batch_indices given with (K, 5) boxes')
        return boxes[:, 0].astype(jnp.int32), boxes[:, 1:]
    if batch_indices is None:
        batch_indices = jnp.zeros(boxes.shape[0], jnp.int32)
    return jnp.asarray(batch_indices).astype(jnp.int32), boxes


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _div(a, n: int):
    """IEEE ``a / n`` as torchvision's C++ computes it. XLA rewrites division by a constant (or a
    broadcast scalar) as multiplication by the rounded reciprocal (``7 * fl(1/3) * 3 -> 7.0000005``),
    which moves ``floor``/``ceil`` bin edges and adaptive sample counts; a divisor that depends on
    ``a`` (``n + 0 a``, not folded for floats) keeps the true division."""
    return a / (jnp.asarray(n, a.dtype) + 0.0 * a)


def _round_half_away(v):
    """C's ``round``: halves away from zero (jnp.round rounds halves to even)."""
    return jnp.sign(v) * jnp.floor(jnp.abs(v) + 0.5)


# --------------------------------------------------------------------------- RoI align


def _align_axis(start, length, bins: int, size: int, grid, n_samples: int, adaptive: bool):
    """(bins, size) weights: sum over a bin's samples of their bilinear taps (torchvision's
    ``bilinear_interpolate``: zero outside [-1, size], clamp to [0, size - 1])."""
    bin_len = _div(length, bins)
    g = jnp.maximum(grid, 1).astype(bin_len.dtype)
    step = bin_len / g
    p = jnp.arange(bins, dtype=bin_len.dtype)[:, None]
    first = jnp.zeros((bins, 1), jnp.int32)
    if adaptive:  # first sample with y >= -1, minus one for float slack (none if step <= 0)
        f = jnp.floor((-1.0 - start - p * bin_len) / jnp.where(step > 0, step, 1.0) - 0.5) - 1.0
        first = jnp.where(step > 0, jnp.clip(f, 0, 2**30), 0).astype(jnp.int32)
    it = first + jnp.arange(n_samples, dtype=jnp.int32)[None, :]
    y = start + p * bin_len + (it.astype(bin_len.dtype) + 0.5) * bin_len / g  # torchvision's order
    valid = (it >= 0) & (it < grid) & (y >= -1.0) & (y <= size)
    y = jnp.maximum(y, 0.0)
    low = jnp.floor(y).astype(jnp.int32)
    edge = low >= size - 1
    low = jnp.where(edge, size - 1, low)
    high = jnp.where(edge, size - 1, low + 1)
    frac = jnp.where(edge, 0.0, y - low.astype(y.dtype))
    rows = jnp.broadcast_to(jnp.arange(bins)[:, None], it.shape)
    wts = jnp.zeros((bins, size), y.dtype)
    wts = wts.at[rows, low].add(jnp.where(valid, 1.0 - frac, 0.0))
    return wts.at[rows, high].add(jnp.where(valid, frac, 0.0))


def roi_align(
    x: jax.Array,
    boxes: jax.Array,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    batch_indices: jax.Array | None = None,
) -> jax.Array:
    """RoI align: average of G_h x G_w bilinear samples per bin, torchvision.ops.roi_align.

    Box ``(x1, y1, x2, y2) * spatial_scale - o`` (o = 0.5 if ``aligned`` else 0; without
    ``aligned`` sides are at least 1); bin ph samples ``y = y1 + (ph + (i + 1/2) / G_h) h / PH``,
    i < G_h; ``G = sampling_ratio`` if > 0, else torchvision's adaptive ``ceil(h / PH)``.
    The adaptive count is data dependent but computed *exactly* with static shapes: samples
    outside [-1, H] are zero and a bin holds at most 2H + 3 samples in range (its step is
    >= 1/2 when G > 1), so a static window of 2H + 6 samples from the first in-range one is
    enumerated and masked by i < G; the divisor is max(G_h G_w, 1) as in torchvision.

    Bilinear sampling is separable, so out[k] = A_k X_{b_k} B_k^T / (G_h G_w) with per-box row
    and column weight tables A (PH, H), B (PW, W); cost O(K PH (N H W + PW W) C) as matmuls.
    Differentiable w.r.t. ``x`` (as torchvision, no gradient for boxes is intended).
    """
    n, h, w = x.shape[:3]
    ph, pw = _pair(output_size)
    bidx, b = _split_boxes(boxes, batch_indices)
    dt = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    b = b.astype(dt) * spatial_scale - (0.5 if aligned else 0.0)
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    rh, rw = y2 - y1, x2 - x1
    if not aligned:
        rh, rw = jnp.maximum(rh, 1.0), jnp.maximum(rw, 1.0)
    adaptive = sampling_ratio <= 0
    if adaptive:
        gh = jnp.ceil(_div(rh, ph)).astype(jnp.int32)
        gw = jnp.ceil(_div(rw, pw)).astype(jnp.int32)
        sh, sw = 2 * h + 6, 2 * w + 6
    else:
        gh = gw = jnp.full(rh.shape, sampling_ratio, jnp.int32)
        sh = sw = sampling_ratio
    ay = jax.vmap(lambda s, l, g: _align_axis(s, l, ph, h, g, sh, adaptive))(y1, rh, gh)
    ax = jax.vmap(lambda s, l, g: _align_axis(s, l, pw, w, g, sw, adaptive))(x1, rw, gw)
    count = jnp.maximum(gh * gw, 1).astype(dt)
    ay = ay / count[:, None, None]
    # Fold the image selection into the row table: (K, PH, N, H) @ (N, H, W, C).
    ayn = ay[:, :, None, :] * (bidx[:, None] == jnp.arange(n)[None, :]).astype(dt)[:, None, :, None]
    t = jnp.einsum('kpnh,nhwc->kpwc', ayn, x.astype(dt), precision=_HI)
    return jnp.einsum('kqw,kpwc->kpqc', ax, t, precision=_HI).astype(x.dtype)


# --------------------------------------------------------------------------- RoI pool


def _pool_axis(start, end, bins: int, size: int):
    """(bins, size) membership masks of torchvision's quantised bins (roi_pool_kernel.cpp)."""
    length = jnp.maximum(end - start + 1, 1)
    bin_len = _div(length.astype(jnp.float32), bins)
    p = jnp.arange(bins, dtype=jnp.float32)
    lo = jnp.clip(jnp.floor(p * bin_len).astype(jnp.int32) + start, 0, size)
    hi = jnp.clip(jnp.ceil((p + 1) * bin_len).astype(jnp.int32) + start, 0, size)
    r = jnp.arange(size)[None, :]
    return (r >= lo[:, None]) & (r < hi[:, None])


def roi_pool(
    x: jax.Array,
    boxes: jax.Array,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    batch_indices: jax.Array | None = None,
) -> jax.Array:
    """RoI max pooling with quantisation (Fast R-CNN, Sec. 2.1), torchvision.ops.roi_pool.

    Box corners ``round(v * spatial_scale)`` (C round, halves away from zero), size
    ``max(x2 - x1 + 1, 1)``; bin ph covers rows ``[floor(ph h / PH), ceil((ph + 1) h / PH)) + y1``
    clipped to [0, H]; max over the bin, 0 for an empty bin. Separable masked max: rows, then
    columns.
    """
    h, w = x.shape[1:3]
    ph, pw = _pair(output_size)
    bidx, b = _split_boxes(boxes, batch_indices)
    q = _round_half_away(b.astype(jnp.float32) * spatial_scale).astype(jnp.int32)
    mh = jax.vmap(lambda s, e: _pool_axis(s, e, ph, h))(q[:, 1], q[:, 3])  # (K, PH, H)
    mw = jax.vmap(lambda s, e: _pool_axis(s, e, pw, w))(q[:, 0], q[:, 2])  # (K, PW, W)
    low = jnp.array(-jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min, x.dtype)

    def one(xb, mrow, mcol):
        rows = jnp.max(jnp.where(mrow[:, :, None, None], xb[None], low), axis=1)  # (PH, W, C)
        out = jnp.max(jnp.where(mcol[None, :, :, None], rows[:, None], low), axis=2)  # (PH, PW, C)
        empty = ~(mrow.any(1)[:, None] & mcol.any(1)[None, :])
        return jnp.where(empty[:, :, None], jnp.zeros((), x.dtype), out)

    return jax.vmap(one)(x[bidx], mh, mw)


def _sparse_table_2d(x: jax.Array) -> jax.Array:
    """[Lx, Ly, H, W, C] with T[j, i, y, x] = max of x over rows [y, y + 2^i) and columns [x, x + 2^j)
    (entries whose window leaves the map are never queried)."""

    def levels(a, axis):
        out, n, s = [a], a.shape[axis], 1
        while 2 * s <= n:
            prev = out[-1]
            shifted = jnp.concatenate(
                [
                    jax.lax.slice_in_dim(prev, s, n, axis=axis),
                    jax.lax.slice_in_dim(prev, n - s, n, axis=axis),
                ],
                axis,
            )
            out.append(jnp.maximum(prev, shifted))
            s *= 2
        return jnp.stack(out)

    return levels(levels(x, 0), 2)


def roi_max_pool(features: jax.Array, boxes: jax.Array, output_size: int, spatial_scale: float) -> jax.Array:
    """:func:`roi_pool` of ONE image (features [H, W, C], boxes [K, 4] -> [K, S, S, C]; used by R-CNN,
    SPPNet and Fast R-CNN in ``research.models.rcnn``), the same bins and values (tested equal), computed with a 2-D sparse table of range maxima: each bin is
    the max of 4 table entries (O(C) per bin after O(H W C log H log W) once per image) instead of a
    masked max over the whole map per RoI (~50x faster for 300 RoIs on a 16 x 16 x 128 map on CPU)."""
    h, w = features.shape[:2]
    q = _round_half_away(jnp.asarray(boxes, jnp.float32) * spatial_scale).astype(jnp.int32)

    def bounds(start, end, size):
        m = jax.vmap(lambda s, e: _pool_axis(s, e, output_size, size))(start, end)  # (K, S, size)
        lo = jnp.argmax(m, -1)
        hi = size - jnp.argmax(m[..., ::-1], -1)
        length = jnp.maximum(hi - lo, 1)
        lvl = 31 - jax.lax.clz(length.astype(jnp.int32))  # floor(log2(length))
        far = jnp.clip(hi - (1 << lvl), 0, size - 1)
        return jnp.clip(lo, 0, size - 1), far, lvl, m.any(-1)

    y0, y1, ly, oky = bounds(q[:, 1], q[:, 3], h)
    x0, x1, lx, okx = bounds(q[:, 0], q[:, 2], w)
    t = _sparse_table_2d(features)
    ly, y0, y1 = ly[:, :, None], y0[:, :, None], y1[:, :, None]
    lx, x0, x1 = lx[:, None, :], x0[:, None, :], x1[:, None, :]
    out = jnp.maximum(
        jnp.maximum(t[lx, ly, y0, x0], t[lx, ly, y1, x0]), jnp.maximum(t[lx, ly, y0, x1], t[lx, ly, y1, x1])
    )
    ok = oky[:, :, None] & okx[:, None, :]
    return jnp.where(ok[..., None], out, jnp.zeros((), features.dtype))
