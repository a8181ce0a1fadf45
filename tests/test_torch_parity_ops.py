"""Layer ops against torch where issue 27 found them to differ: interpolate's scale-factor rule (4),
max pooling with window dilation and its gradient (5), max_unpool's out-of-range indices (6)."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.layers import pooling, resample

torch = pytest.importorskip('torch')
F = torch.nn.functional


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1)))


def _nhwc(t):
    return np.moveaxis(t.detach().numpy(), 1, -1)


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------- (4) interpolate

ISSUE_CASES = [((10, 2), (1.0, 1.3)), ((2, 2), 1.3), ((3, 3), 1.2)]


@pytest.mark.parametrize('recompute', [None, False, True])
@pytest.mark.parametrize('shape,s', ISSUE_CASES, ids=['10x2-1.0x1.3', '2x2-1.3', '3x3-1.2'])
def test_bilinear_scale_factor_issue_cases(shape, s, recompute):
    """floor(I s) = I with s != 1: torch leaves the axis as it is (errors 0.32 / 0.57 / 0.59 before)."""
    x = _rand((2, *shape, 3))
    want = F.interpolate(
        _t(x), scale_factor=s, mode='bilinear', align_corners=False, recompute_scale_factor=recompute
    )
    got = resample.upsample_bilinear(x, scale_factor=s, recompute_scale_factor=recompute)
    np.testing.assert_allclose(got, _nhwc(want), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got, x)


_FACTORS = (0.3, 0.5, 0.7, 0.9, 1.0, 1.1, 1.2, 1.3, 1.5, 1.7, 1.99, 2.0, 2.5, 3.1, 4.0)


def _plan_matrix(i, o, align_corners, sf):
    """The (O, I) matrix of one axis of upsample_bilinear (its per-axis plan, pure numpy)."""
    taps = resample._linear_plan(i, o, align_corners, sf)
    if taps is None:
        return np.eye(i)
    i0, i1, lam = taps
    m = np.zeros((o, i))
    np.add.at(m, (np.arange(o), i0), 1 - lam.astype(np.float64))
    np.add.at(m, (np.arange(o), i1), lam)
    return m


def test_linear_axis_rule_sweep():
    """Every axis size 1-24 x 15 factors x align_corners x recompute_scale_factor: the per-axis plan
    of upsample_bilinear (output size, copy or taps, source-index scale) equals torch's linear
    interpolation (read off as a matrix by interpolating the identity)."""
    bad = []
    for i, s in itertools.product(range(1, 25), _FACTORS):
        if math.floor(i * s) == 0:
            continue
        eye = torch.eye(i)[None]  # (1, C=i, L=i): channel c = unit vector c (float32, as the tables)
        for ac, rc in itertools.product((False, True), (None, False, True)):
            want = F.interpolate(
                eye, scale_factor=s, mode='linear', align_corners=ac, recompute_scale_factor=rc
            )
            want = want[0].numpy().T  # (O, I)
            (o,), (f,) = resample.interpolate_size((i,), None, s, rc)
            got = _plan_matrix(i, o, ac, f)
            if got.shape != want.shape or np.max(np.abs(got - want)) > 1e-6:
                bad.append((i, s, ac, rc))
    assert not bad, f'{len(bad)} cases differ from torch, e.g. {bad[:6]}'


SWEEP_2D = [
    ((h, w), (sh, sw))
    for (h, w), (sh, sw) in zip(
        [(1, 2), (2, 3), (3, 2), (5, 3), (7, 2), (10, 3), (4, 4), (6, 5)],
        [(1.3, 1.2), (1.5, 1.3), (0.7, 1.99), (1.2, 2.5), (1.1, 1.0), (1.0, 1.3), (0.9, 1.2), (1.7, 0.5)],
    )
]


@pytest.mark.parametrize('shape,s', SWEEP_2D)
def test_interpolate_2d_3d_and_nearest_match_torch(shape, s):
    """The whole function on mixed cases (one axis copied, the other interpolated), both
    align_corners and recompute_scale_factor settings; nearest with the same factors; and 3-D."""
    x = _rand((1, *shape, 2), seed=shape[0] * 10 + shape[1])
    for ac, rc in itertools.product((False, True), (None, True)):
        want = F.interpolate(
            _t(x), scale_factor=s, mode='bilinear', align_corners=ac, recompute_scale_factor=rc
        )
        got = resample.upsample_bilinear(x, scale_factor=s, align_corners=ac, recompute_scale_factor=rc)
        np.testing.assert_allclose(got, _nhwc(want), rtol=1e-5, atol=1e-6, err_msg=f'{ac} {rc}')
    for rc in (None, True):
        want = F.interpolate(_t(x), scale_factor=s, mode='nearest', recompute_scale_factor=rc)
        np.testing.assert_array_equal(resample.upsample_nearest(x, s, recompute_scale_factor=rc), _nhwc(want))
    x3 = _rand((1, *shape, 3, 2), seed=1)
    s3 = (*s, 1.3)
    want = F.interpolate(_t(x3), scale_factor=s3, mode='trilinear', align_corners=False)
    np.testing.assert_allclose(
        resample.upsample_bilinear(x3, scale_factor=s3), _nhwc(want), rtol=1e-5, atol=1e-6
    )


# --------------------------------------------------------------------------- (5) dilated max pool

DILATED_CASES = [
    # (H, W), window, stride, dilation, padding, ceil_mode
    ((12, 5), (5, 1), (2, 1), (3, 2), (1, 0), False),  # the issue's example
    ((9, 10), (3, 3), (2, 2), (2, 2), (1, 1), False),
    ((9, 10), (3, 2), (1, 2), (2, 3), (1, 1), True),
    ((11, 8), (2, 2), (3, 2), (2, 1), (0, 1), True),
    ((7, 7), (3, 3), (1, 1), (2, 2), (0, 0), False),
]


@pytest.mark.parametrize(
    'shape,f,s,d,p,ceil,ties',
    [c + (False,) for c in DILATED_CASES] + [c + (True,) for c in DILATED_CASES[:2]],
)
def test_dilated_max_pool_values_and_gradients_match_torch(shape, f, s, d, p, ceil, ties):
    """Values and input gradients (to the first maximum of each window in row-major order, as torch;
    with ``ties`` the input has few distinct values) of max_pool with window dilation, jitted."""
    x = _rand((2, *shape, 3), seed=sum(shape))
    if ties:
        x = np.round(x).astype(np.float32)
    xt = _t(x).requires_grad_(True)
    yt = F.max_pool2d(xt, f, s, p, d, ceil_mode=ceil)
    g = _rand(_nhwc(yt).shape, seed=2)
    yt.backward(_t(g))

    @jax.jit
    def value_and_grad(x, g):
        y, vjp = jax.vjp(lambda x: pooling.max_pool(x, f, s, p, d, ceil), x)
        return y, vjp(g)[0]

    y, gx = value_and_grad(jnp.asarray(x), jnp.asarray(g))
    np.testing.assert_array_equal(y, _nhwc(yt))
    np.testing.assert_allclose(gx, _nhwc(xt.grad), rtol=1e-6, atol=1e-6)


def test_dilated_max_pool_1d_3d_and_min_pool_gradients():
    x1 = _rand((2, 13, 3), seed=5)
    xt = _t(x1).requires_grad_(True)
    F.max_pool1d(xt, 3, 2, 1, 2).sum().backward()
    got = jax.jit(jax.grad(lambda x: pooling.max_pool(x, 3, 2, 1, 2).sum()))(x1)
    np.testing.assert_allclose(got, _nhwc(xt.grad))
    x3 = _rand((1, 7, 6, 8, 2), seed=6)
    xt = _t(x3).requires_grad_(True)
    F.max_pool3d(xt, 2, (1, 2, 2), 0, (2, 1, 3)).sum().backward()
    got = jax.jit(jax.grad(lambda x: pooling.max_pool(x, 2, (1, 2, 2), 0, (2, 1, 3)).sum()))(x3)
    np.testing.assert_allclose(got, _nhwc(xt.grad))
    # min_pool = -max_pool(-x): the same gradient rule
    x = _rand((1, 9, 9, 2), seed=7)
    xt = _t(-x).requires_grad_(True)
    F.max_pool2d(xt, 3, 2, 1, 2).sum().backward()
    got = jax.jit(jax.grad(lambda x: pooling.min_pool(x, 3, 2, 1, 2).sum()))(x)
    np.testing.assert_allclose(got, _nhwc(xt.grad))  # d/dx of -max(-x): the same 0/1 pattern


# --------------------------------------------------------------------------- (6) max_unpool


def test_max_unpool_rejects_out_of_range_indices():
    """The issue's example: max_pool2d on 8x8 (kernel 3, stride 2, padding 1), unpooled at the default
    size (4 - 1) 2 - 2 + 3 = 7: indices of up to 63 arise, those >= 49 do not fit 7 x 7 (torch: 'Found an
    invalid max index'); the project used to keep 9 of the 16 values silently."""
    x = _rand((1, 8, 8, 2))
    y, idx = pooling.max_pool_with_indices(x, 3, 2, 1)
    with pytest.raises(RuntimeError, match='invalid max index'):
        F.max_unpool2d(*F.max_pool2d(_t(x), 3, 2, 1, return_indices=True), 3, 2, 1)
    with pytest.raises(ValueError, match=r'max_unpool: index \d+ out of range .*\(7, 7\).*output_size'):
        pooling.max_unpool(y, idx, window=3, strides=2, padding=1)
    with pytest.raises(ValueError, match='out of range'):
        pooling.max_unpool(y, idx - 100, (8, 8))  # negative
    # jitted with the default size: the same error when the program runs
    with pytest.raises(Exception, match=r'max_unpool: index \d+ out of range'):
        jax.block_until_ready(
            jax.jit(lambda y, i: pooling.max_unpool(y, i, window=3, strides=2, padding=1))(y, idx)
        )
    # output_size = the pooled input's size: every value back in place, as torch
    want = F.max_unpool2d(*F.max_pool2d(_t(x), 3, 2, 1, return_indices=True), 3, 2, 1, output_size=(8, 8))
    np.testing.assert_array_equal(pooling.max_unpool(y, idx, (8, 8)), _nhwc(want))
    out = jax.jit(lambda y, i: pooling.max_unpool(y, i, (8, 8)))(y, idx)
    np.testing.assert_array_equal(out, _nhwc(want))
    distinct = sum(np.unique(np.asarray(idx)[0, ..., c]).size for c in range(2))  # overlapping windows
    assert np.count_nonzero(out) == distinct
