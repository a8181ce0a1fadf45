"""Up-sampling / unpooling, N-D, channels last (N, *spatial, C). Pure functions.

Output size is ``size`` or ``floor(I * scale_factor)`` per spatial dim (torch.nn.functional.
interpolate). As torch, an axis whose output size equals its input size is left unchanged (also where
``scale_factor != 1``, e.g. I = 2, s = 1.3), and a given ``scale_factor`` sets the source-index scale
``1 / s`` unless ``recompute_scale_factor=True`` (then ``I / O``, as for ``size``). Index/weight tables
are static numpy (float32, as torch computes them), so every op is one or two gathers per axis and
jit-safe. ``max_unpool`` lives in ``pooling``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ['interpolate_size', 'upsample_bed_of_nails', 'upsample_bilinear', 'upsample_nearest']


def interpolate_size(
    input_shape: Sequence[int],
    size: int | Sequence[int] | None,
    scale_factor: float | Sequence[float] | None,
    recompute_scale_factor: bool | None = None,
) -> tuple[tuple[int, ...], tuple[float | None, ...]]:
    """(output sizes, per-dim scale factors or None) like F.interpolate: O = floor(I * scale); the
    factors are None (source-index scale I / O) for ``size`` or with ``recompute_scale_factor``."""
    nd = len(input_shape)
    if (size is None) == (scale_factor is None):
        raise ValueError('give exactly one of size and scale_factor')
    if size is not None:
        out = (size,) * nd if isinstance(size, int) else tuple(size)
        if len(out) != nd:
            raise ValueError(f'size {size!r} needs {nd} entries')
        return tuple(int(o) for o in out), (None,) * nd
    sf = (scale_factor,) * nd if isinstance(scale_factor, (int, float)) else tuple(scale_factor)
    if len(sf) != nd:
        raise ValueError(f'scale_factor {scale_factor!r} needs {nd} entries')
    out = tuple(math.floor(i * f) for i, f in zip(input_shape, sf))
    if recompute_scale_factor:
        return out, (None,) * nd
    return out, tuple(float(f) for f in sf)


def _nearest_index(i: int, o: int, sf: float | None) -> np.ndarray:
    """torch ``nearest``: src = min(floor(dst * scale), I - 1), scale = 1/scale_factor or I/O (float32)."""
    scale = np.float32(1.0 / sf) if sf else np.float32(i) / np.float32(o)
    dst = np.arange(o, dtype=np.float32)
    return np.minimum(np.floor(dst * scale).astype(np.int64), i - 1)


def upsample_nearest(
    x: jax.Array,
    scale_factor: float | Sequence[float] | None = None,
    size: int | Sequence[int] | None = None,
    recompute_scale_factor: bool | None = None,
) -> jax.Array:
    """Nearest neighbour: ``y[o] = x[floor(o / s)]`` (``floor(o I / O)`` for ``size`` or with
    ``recompute_scale_factor``; F.interpolate(mode='nearest')); an integer factor s repeats every
    pixel s times per dim (s^d copies)."""
    out, sf = interpolate_size(x.shape[1:-1], size, scale_factor, recompute_scale_factor)
    for ax, (i, o, f) in enumerate(zip(x.shape[1:-1], out, sf), start=1):
        if o == i:
            continue
        if f is not None and float(f).is_integer() and o == i * int(f):
            x = jnp.repeat(x, int(f), axis=ax)
        else:
            x = jnp.take(x, _nearest_index(i, o, f), axis=ax)
    return x


def upsample_bed_of_nails(x: jax.Array, scale_factor: int | Sequence[int] = 2) -> jax.Array:
    """ "Bed of nails" unpooling (CS231n lecture 11): each pixel goes to the top-left corner of its
    s x s block, zeros elsewhere: ``y[s i] = x[i]``. Interior padding of ``lax.pad``; O = s I."""
    nd = x.ndim - 2
    s = (scale_factor,) * nd if isinstance(scale_factor, int) else tuple(scale_factor)
    cfg = ((0, 0, 0),) + tuple((0, f - 1, f - 1) for f in s) + ((0, 0, 0),)
    return lax.pad(x, jnp.array(0, x.dtype), cfg)


def _linear_taps(i: int, o: int, align_corners: bool, sf: float | None):
    """torch's ``area_pixel_compute_source_index`` + ``guard_index_and_lambda`` in float32."""
    if align_corners:
        scale = np.float32(i - 1) / np.float32(o - 1) if o > 1 else np.float32(0)
        src = np.arange(o, dtype=np.float32) * scale
    else:
        scale = np.float32(1.0 / sf) if sf else np.float32(i) / np.float32(o)
        src = np.maximum(scale * (np.arange(o, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
    i0 = np.minimum(np.floor(src).astype(np.int64), i - 1)
    lam = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    i1 = i0 + (i0 < i - 1)
    return i0, i1, lam


def _linear_plan(i: int, o: int, align_corners: bool, sf: float | None):
    """One axis of :func:`upsample_bilinear`: None (the axis is copied: O = I, whatever the factor, as
    torch) or the taps ``(i0, i1, lam)`` of :func:`_linear_taps`."""
    if o == i:
        return None
    return _linear_taps(i, o, align_corners, sf)


def upsample_bilinear(
    x: jax.Array,
    size: int | Sequence[int] | None = None,
    scale_factor: float | Sequence[float] | None = None,
    align_corners: bool = False,
    recompute_scale_factor: bool | None = None,
) -> jax.Array:
    """(Multi-)linear interpolation, torch F.interpolate(mode='bilinear'/'linear'/'trilinear').

    Per axis ``y[o] = (1 - l) x[i0] + l x[i0 + 1]`` with ``i0 = floor(src)``, ``l = src - i0`` and
    ``src = o (I - 1)/(O - 1)`` (align_corners=True: corner pixel centres coincide) or
    ``src = max((o + 1/2) / r - 1/2, 0)``, r = scale_factor if given (and not
    ``recompute_scale_factor``) else O/I (align_corners=False: pixel areas align). An axis with O = I
    is left unchanged whatever the factor (torch's rule: (H, W) = (2, 2) at s = 1.3 stays 2x2 and
    equal to the input). Separable: one pass per spatial axis. Also down-samples (no antialias).
    """
    out, sf = interpolate_size(x.shape[1:-1], size, scale_factor, recompute_scale_factor)
    for ax, (i, o, f) in enumerate(zip(x.shape[1:-1], out, sf), start=1):
        taps = _linear_plan(i, o, align_corners, f)
        if taps is None:
            continue
        i0, i1, lam = taps
        shape = (o,) + (1,) * (x.ndim - ax - 1)
        lam = jnp.asarray(lam.reshape(shape), x.dtype)
        x = jnp.take(x, i0, axis=ax) * (1 - lam) + jnp.take(x, i1, axis=ax) * lam
    return x
