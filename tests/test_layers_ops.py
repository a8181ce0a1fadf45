"""Layer library ops: equivalences that can fail, output-size and parameter-count formulas, and torch /
torchvision parity (skipped when torch is not installed). Tiny float32 inputs throughout."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import layers as L
from research.models.utils import abstract_variables, count_params

TOL = 1e-5


def _is_array(a):
    return isinstance(a, (np.ndarray, jax.Array))


class _Jitted:
    """``J.op(*args)`` == ``J.op(*args)`` run under one ``jax.jit`` (array args traced, the rest static):
    one compile per call instead of one per eager primitive keeps these tests fast."""

    def __getattr__(self, name):
        fn = getattr(L, name)

        def call(*args, **kw):
            pos = [i for i, a in enumerate(args) if _is_array(a)]
            keys = [k for k, a in kw.items() if _is_array(a)]

            def run(arrs, karrs):
                full = list(args)
                for i, a in zip(pos, arrs):
                    full[i] = a
                return fn(*full, **{**kw, **dict(zip(keys, karrs))})

            return jax.jit(run)([args[i] for i in pos], [kw[k] for k in keys])

        return call


J = _Jitted()


def _rand(shape, seed=0):
    """numpy draws: jax.random would compile threefry for every new shape (seconds each on CPU)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _close(a, b, tol=TOL):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(1.0, float(np.abs(b).max(initial=0.0)))
    err = float(np.abs(a - b).max(initial=0.0))
    assert err <= tol * scale, f'max abs error {err:.3g} > {tol * scale:.3g}'


def _np_conv2d(x, w, stride=(1, 1), pad=((0, 0), (0, 0)), dil=(1, 1), groups=1):
    """Direct NHWC/HWIO cross-correlation (reference independent of lax)."""
    x = np.pad(x.astype(np.float64), ((0, 0), pad[0], pad[1], (0, 0)))
    n, h, wd, _c = x.shape
    fh, fw, cg, k = w.shape
    oh = (h - dil[0] * (fh - 1) - 1) // stride[0] + 1
    ow = (wd - dil[1] * (fw - 1) - 1) // stride[1] + 1
    kg = k // groups
    y = np.zeros((n, oh, ow, k))
    for i, j in itertools.product(range(fh), range(fw)):
        patch = x[:, i * dil[0] :: stride[0], j * dil[1] :: stride[1]][:, :oh, :ow]
        for g in range(groups):
            y[..., g * kg : (g + 1) * kg] += (
                patch[..., g * cg : (g + 1) * cg] @ w[i, j, :, g * kg : (g + 1) * kg]
            )
    return y


def _init(module, x, seed=1, **kw):
    """Variables of ``module`` for input ``x``: shapes from ``abstract_variables`` (no compile), values
    from numpy (params N(0, 1/2), BatchNorm running mean 0 / var 1). ``module.init`` itself is
    exercised once in ``test_module_init_uses_project_defaults``."""
    shapes = abstract_variables(module, x.shape, **kw)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(path[-1])
        if 'var' in name:
            return np.ones(leaf.shape, np.float32)
        if 'mean' in name:
            return np.zeros(leaf.shape, np.float32)
        return (0.5 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _apply(module, v, x, **kw):
    return jax.jit(lambda v, x: module.apply(v, x, **kw))(v, x)


# --------------------------------------------------------------------------- sizes and counts


def test_conv_output_size_formula_matches_shapes():
    for i, f, s, p, d in itertools.product(range(4, 9), (1, 2, 3), (1, 2, 3), (0, 1, 2), (1, 2)):
        if d * (f - 1) + 1 > i + 2 * p:
            continue
        x = jax.ShapeDtypeStruct((1, i, 1), jnp.float32)
        k = jax.ShapeDtypeStruct((f, 1, 1), jnp.float32)
        out = jax.eval_shape(functools.partial(L.conv_nd, strides=s, padding=p, dilation=d), x, k).shape[1]
        assert out == L.conv_output_size(i, f, s, p, d) == (i + 2 * p - d * (f - 1) - 1) // s + 1
        if d == 1:
            assert out == (i + 2 * p - f) // s + 1  # (I + 2P - F)/S + 1
        for mode, want in (('same', -(-i // s)), ('full', (i + 2 * d * (f - 1) - d * (f - 1) - 1) // s + 1)):
            got = jax.eval_shape(
                functools.partial(L.conv_nd, strides=s, padding=mode, dilation=d), x, k
            ).shape[1]
            assert got == want, (mode, i, f, s, d)


def test_conv_transpose_output_size_formula_matches_shapes():
    for i, f, s, p, d in itertools.product(range(2, 6), (1, 2, 3), (1, 2, 3), (0, 1), (1, 2)):
        for op in range(max(s, d)):
            want = (i - 1) * s - 2 * p + d * (f - 1) + op + 1
            if want <= 0:
                continue
            x = jax.ShapeDtypeStruct((1, i, 1), jnp.float32)
            k = jax.ShapeDtypeStruct((f, 1, 1), jnp.float32)
            fn = functools.partial(L.conv_transpose, strides=s, padding=p, output_padding=op, dilation=d)
            out = jax.eval_shape(fn, x, k).shape[1]
            assert out == want == L.conv_transpose_output_size(i, f, s, p, op, d)


def test_padding_modes_2d_and_3d():
    x = jnp.zeros((1, 7, 8, 3))
    m = L.ConvND(4, (3, 3), padding='same')
    assert _apply(m, _init(m, x), x).shape == (1, 7, 8, 4)
    m = L.ConvND(4, (3, 2), padding='full', dilation=(2, 1))
    assert _apply(m, _init(m, x), x).shape == (1, 7 + 4, 8 + 1, 4)
    m = L.ConvND(2, (2, 3), padding=((1, 0), (2, 2)), strides=2)
    assert _apply(m, _init(m, x), x).shape == (1, 4, 5, 2)
    x3 = jnp.zeros((2, 5, 6, 7, 3))
    m = L.ConvND(4, (3, 3, 3), padding=1, strides=(1, 2, 3))
    assert _apply(m, _init(m, x3), x3).shape == (2, 5, 3, 3, 4)
    assert L.resolve_padding('causal', (5,), (3,), (1,), (2,)) == ((4, 0),)
    with pytest.raises(ValueError):
        L.resolve_padding('reflect', (5,), (3,), (1,), (1,))


def test_module_init_uses_project_defaults():
    x = jnp.ones((1, 4, 4, 2))
    v = L.ConvND(3, (2, 2)).init(jax.random.key(0), x)
    assert v['params']['kernel'].shape == (2, 2, 2, 3) and not np.asarray(v['params']['bias']).any()
    assert 0 < float(jnp.std(v['params']['kernel'])) < 2.0  # He fan-out: std sqrt(2 / (2 * 2 * 3)) ~ 0.41


def test_param_counts():
    x = jnp.zeros((1, 8, 8, 16))
    cases = [
        (L.ConvND(32, (3, 3)), 3 * 3 * 16 * 32 + 32),  # F^2 C K + K
        (L.ConvND(32, (1, 1)), 16 * 32 + 32),
        (L.ConvND(32, (3, 3), groups=4), 3 * 3 * 16 * 32 // 4 + 32),  # K^2 C M / g + M
        (L.DepthwiseConv((3, 3), channel_multiplier=2), 3 * 3 * 16 * 2 + 16 * 2),
        (L.SeparableConv(32, (3, 3)), 3 * 3 * 16 + 16 * 32 + 32),
        (L.SpatiallySeparableConv(32, (3, 3)), 3 * 16 * 32 + 3 * 32 * 32 + 32),
        (L.FlattenedConv(32, (3, 3)), 16 * 32 + 3 * 32 + 3 * 32 + 32),
        (L.ConvTranspose(32, (4, 4), strides=2, groups=2), 4 * 4 * 16 * 32 // 2 + 32),
        (L.ShuffledGroupConv(32, groups=4), 16 * 32 // 4),
    ]
    for m, want in cases:
        assert count_params(abstract_variables(m, x.shape)) == want, m
    for m, g in ((L.ConvND(32, (3, 3)), 1), (L.ConvND(32, (3, 3), groups=4), 4)):
        assert count_params(abstract_variables(m, x.shape)) == L.conv_param_count(3, 16, 32, g)
    x3 = jnp.zeros((1, 4, 4, 4, 8))
    m = L.ConvND(6, (3, 3, 3))
    assert (
        count_params(abstract_variables(m, x3.shape)) == 27 * 8 * 6 + 6 == L.conv_param_count((3, 3, 3), 8, 6)
    )


# --------------------------------------------------------------------------- convolution equivalences


@pytest.mark.parametrize(
    'stride,pad,dil,groups',
    [
        (1, 0, 1, 1),
        (2, 1, 1, 2),
        (3, (1, 2), 2, 1),
        (1, 'same', 3, 4),
        (1, 'full', 2, 2),
        (2, ((3, 0), (4, 1)), 1, 1),
    ],
)
def test_conv_matches_direct_reference(stride, pad, dil, groups):
    x = _rand((2, 9, 10, 8))
    m = L.ConvND(4, (3, 2), strides=stride, padding=pad, dilation=dil, groups=groups)
    v = _init(m, x)
    v = {'params': {'kernel': v['params']['kernel'], 'bias': jnp.asarray(_rand((4,), 3))}}
    pads = L.resolve_padding(pad, x.shape[1:3], (3, 2), (stride,) * 2, (dil,) * 2)
    want = _np_conv2d(x, np.asarray(v['params']['kernel']), (stride,) * 2, pads, (dil,) * 2, groups)
    _close(_apply(m, v, x), want + np.asarray(v['params']['bias']))
    for impl in ('xla', 'split'):
        y = J.conv_nd(x, v['params']['kernel'], stride, pad, dil, groups, impl=impl)
        _close(y + v['params']['bias'], want + np.asarray(v['params']['bias']))


@pytest.mark.parametrize(
    'groups,stride,pad', [(1, 1, 0), (1, 2, 1), (4, 3, ((2, 1), (0, 2))), (2, (1, 2), 0)]
)
def test_pointwise_matmul_equals_conv(groups, stride, pad):
    x = _rand((2, 7, 9, 8))
    k = _rand((1, 1, 8 // groups, 12), 1)
    s2 = stride if isinstance(stride, tuple) else (stride,) * 2
    want = _np_conv2d(x, k, s2, L.resolve_padding(pad, (7, 9), (1, 1), s2, (1, 1)), (1, 1), groups)
    for impl in ('matmul', 'xla', 'auto'):
        _close(J.conv_nd(x, k, stride, pad, 1, groups, impl=impl), want)


@pytest.mark.parametrize(
    'mult,impl,stride,dil',
    [(1, 'grouped', 1, 1), (2, 'grouped', 2, 1), (1, 'shift', 2, 2), (3, 'shift', 1, 1)],
)
def test_depthwise_equals_grouped_conv(mult, impl, stride, dil):
    c = 5
    x = _rand((2, 9, 8, c))
    dw = L.DepthwiseConv((3, 3), mult, strides=stride, dilation=dil, padding='same', impl=impl)
    v = _init(dw, x)
    grouped = L.ConvND(c * mult, (3, 3), strides=stride, dilation=dil, padding='same', groups=c)
    y = _apply(dw, v, x)
    _close(y, _apply(grouped, v, x))  # same kernel (3, 3, 1, C M), groups = C
    # TF layout (F, F, C, M) reshaped: channel c alone, convolved with its M filters.
    tf_kernel = np.asarray(v['params']['kernel']).reshape(3, 3, c, mult)
    for ch in range(c):
        single = J.conv_nd(x[..., ch : ch + 1], tf_kernel[:, :, ch : ch + 1, :], stride, 'same', dil)
        _close(y[..., ch * mult : (ch + 1) * mult], single + v['params']['bias'][ch * mult : (ch + 1) * mult])


def test_depthwise_impls_agree_3d_and_grad():
    x = _rand((1, 5, 6, 7, 3))
    k = _rand((3, 2, 3, 1, 6), 1)
    f = lambda impl: lambda x, k: jnp.sum(jnp.sin(J.depthwise_conv(x, k, (1, 2, 1), 'same', (2, 1, 1), impl)))
    _close(f('shift')(x, k), f('grouped')(x, k))
    for a, b in zip(jax.grad(f('shift'), (0, 1))(x, k), jax.grad(f('grouped'), (0, 1))(x, k)):
        _close(a, b)


TRANSPOSE_CASES = [
    # stride, padding, dilation, output_padding, groups
    (1, 0, 1, 0, 1),
    (1, 1, 2, 0, 1),
    (2, 0, 1, 1, 1),
    (2, 1, 1, 0, 2),
    (2, 2, 2, 1, 1),
    (3, 1, 1, 2, 1),
    (3, 0, 2, 1, 2),
    (3, ((2, 0), (0, 1)), 1, 0, 1),  # per-dim (lo, hi): O = (I - 1) S - lo - hi + D(F - 1) + op + 1
]


@pytest.mark.parametrize('stride,pad,dil,op,groups', TRANSPOSE_CASES)
def test_conv_transpose_equals_vjp_of_conv(stride, pad, dil, op, groups):
    cin, cout, f = 4, 6, (3, 2)
    x = _rand((2, 4, 5, cin))
    kernel = _rand(f + (cout // groups, cin), 1)  # forward conv: cout -> cin
    y = J.conv_transpose(x, kernel, stride, pad, op, dil, groups)
    p = pad if isinstance(pad, tuple) else ((pad, pad),) * 2
    out_hw = tuple(
        L.conv_transpose_output_size(i, k, stride, pi, op, dil) for i, k, pi in zip(x.shape[1:3], f, p)
    )
    assert y.shape == (2,) + out_hw + (cout,)
    fwd = lambda z: J.conv_nd(z, kernel, stride, p, dil, groups)
    z = jnp.zeros((2,) + out_hw + (cout,))
    out, vjp = jax.vjp(fwd, z)
    assert out.shape == x.shape
    _close(y, vjp(x)[0])
    for impl in ('lhs_dilation', 'subpixel') + (('lax',) if groups == 1 else ()):
        _close(J.conv_transpose(x, kernel, stride, pad, op, dil, groups, impl=impl), y)


def test_conv_transpose_subpixel_3d_and_grad():
    x = _rand((1, 3, 4, 5, 2))
    k = _rand((3, 2, 4, 3, 2), 1)
    args = ((2, 1, 3), 1, (1, 0, 2), (1, 2, 1))
    ref = J.conv_transpose(x, k, *args, impl='lhs_dilation')
    _close(J.conv_transpose(x, k, *args, impl='subpixel'), ref)
    f = lambda impl: lambda x, k: jnp.sum(jnp.sin(L.conv_transpose(x, k, *args, impl=impl)))
    for a, b in zip(jax.grad(f('subpixel'), (0, 1))(x, k), jax.grad(f('lhs_dilation'), (0, 1))(x, k)):
        _close(a, b)


@pytest.mark.parametrize('f,stride,pad,groups', [(64, 32, 16, 1), (8, 4, 5, 2), (5, 3, 0, 1)])
def test_conv_transpose_subpixel_shares_convs_between_phases(f, stride, pad, groups):
    """Phases with the same input shift share one conv (FCN-32s' 64x64 stride-32 upsampling: 4 convs,
    not 1,024), and the result is still the lhs-dilated reference, values and gradients."""
    x = _rand((1, 3, 2, 4))
    k = _rand((f, f, 6 // groups, 4), 1)
    args = (stride, pad, 0, 1, groups)
    ref = J.conv_transpose(x, k, *args, impl='lhs_dilation')
    _close(J.conv_transpose(x, k, *args, impl='subpixel'), ref)
    jaxpr = str(jax.make_jaxpr(lambda x, k: J.conv_transpose(x, k, *args, impl='subpixel'))(x, k))
    shifts = len({(t + pad) // stride for t in range(stride)})
    # one conv per shift (CPU's grouped formulation may split a conv per group)
    assert jaxpr.count('conv_general_dilated') <= shifts**2 * groups < stride**2
    f = lambda impl: lambda x, k: jnp.sum(jnp.sin(J.conv_transpose(x, k, *args, impl=impl)))  # noqa: E731
    for a, b in zip(jax.grad(f('subpixel'), (0, 1))(x, k), jax.grad(f('lhs_dilation'), (0, 1))(x, k)):
        _close(a, b)


def test_conv_transpose_module_and_validation():
    x = _rand((1, 4, 4, 3))
    m = L.ConvTranspose(5, (4, 4), strides=(2, 2), padding=1)
    v = _init(m, x)
    assert v['params']['kernel'].shape == (4, 4, 5, 3)
    assert _apply(m, v, x).shape == (1, 8, 8, 5)
    x1 = _rand((2, 7, 4))
    m1 = L.ConvTranspose(2, 3, strides=3, output_padding=2)
    assert _apply(m1, _init(m1, x1), x1).shape == (2, 6 * 3 + 2 + 2 + 1, 2)
    with pytest.raises(ValueError):
        J.conv_transpose(x, jnp.zeros((3, 3, 2, 3)), 2, 0, output_padding=2)


@pytest.mark.parametrize(
    'stride,pad,dil', [(1, 'same', 1), (2, 'valid', 1), (1, 'full', 2), ((2, 1), ((2, 1), (0, 3)), (1, 3))]
)
def test_spatially_separable_equals_rank1_full_conv(stride, pad, dil):
    x = _rand((2, 9, 11, 1))
    m = L.SpatiallySeparableConv(1, (3, 4), strides=stride, padding=pad, dilation=dil, use_bias=False)
    v = _init(m, x)
    a = v['params']['conv0']['kernel'][:, 0, 0, 0]  # (3,) vertical
    b = v['params']['conv1']['kernel'][0, :, 0, 0]  # (4,) horizontal
    full = jnp.outer(a, b)[:, :, None, None]
    _close(_apply(m, v, x), J.conv_nd(x, full, stride, pad, dil))
    # multi-channel: W[h, w, c, k] = sum_m A[h, c, m] B[w, m, k] (rank <= mid_features)
    x = _rand((1, 8, 8, 3))
    m = L.SpatiallySeparableConv(4, (3, 3), strides=stride, padding=pad, dilation=dil, mid_features=2)
    v = _init(m, x)
    w = jnp.einsum('hcm,wmk->hwck', v['params']['conv0']['kernel'][:, 0], v['params']['conv1']['kernel'][0])
    _close(_apply(m, v, x), J.conv_nd(x, w, stride, pad, dil) + v['params']['conv1']['bias'])


def test_flattened_conv_equals_rank1_full_conv():
    x = _rand((2, 8, 9, 3))
    m = L.FlattenedConv(5, (3, 3), strides=(1, 2), padding='same')
    v = _init(m, x)['params']
    alpha = v['lateral']['kernel'][0, 0]  # (C, K)
    beta = v['axis0']['kernel'][:, 0, 0]  # (F, K)
    gamma = v['axis1']['kernel'][0, :, 0]  # (F, K)
    w = jnp.einsum('ck,hk,wk->hwck', alpha, beta, gamma)
    _close(_apply(m, {'params': v}, x), J.conv_nd(x, w, (1, 2), 'same') + v['axis1']['bias'])


@pytest.mark.parametrize('dil', [2, 3, (2, 1)])
def test_dilated_conv_equals_zero_inserted_kernel(dil):
    x = _rand((2, 12, 11, 3))
    k = _rand((3, 2, 3, 4), 1)
    d = (dil, dil) if isinstance(dil, int) else dil
    big = np.zeros((d[0] * 2 + 1, d[1] * 1 + 1, 3, 4), np.float32)
    big[:: d[0], :: d[1]] = k
    for pad in ('valid', 'same', 1):
        _close(J.conv_nd(x, k, 1, pad, dil), J.conv_nd(x, big, 1, pad if pad != 'same' else 'same', 1))


def test_channel_shuffle_and_shuffled_group_conv():
    x = jnp.arange(12.0).reshape(1, 1, 1, 12)
    y = J.channel_shuffle(x, 3)
    assert y[0, 0, 0].tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    _close(J.channel_shuffle(y, 4), x)  # shuffling with C/g undoes it
    x = _rand((2, 5, 5, 8))
    m = L.ShuffledGroupConv(12, groups=4, kernel_size=3)
    v = _init(m, x)
    g = J.conv_nd(x, v['params']['conv']['kernel'], 1, 'same', 1, 4)
    _close(_apply(m, v, x), J.channel_shuffle(g, 4))


def test_separable_conv_knobs_and_grad():
    x = _rand((2, 6, 6, 4))
    m = L.SeparableConv(8, (3, 3), norm='batch', activation='relu')
    v = _init(m, x)
    assert set(v) == {'params', 'batch_stats'}
    y, _ = _apply(m, v, x, train=True, mutable=['batch_stats'])
    assert y.shape == (2, 6, 6, 8)
    plain = L.SeparableConv(8, (3, 3))
    vp = _init(plain, x)
    dw = J.depthwise_conv(x, vp['params']['depthwise']['kernel'], 1, 'same')
    want = jnp.einsum('nhwc,ck->nhwk', dw, vp['params']['pointwise']['kernel'][0, 0])
    _close(_apply(plain, vp, x), want + vp['params']['pointwise']['bias'])
    g = jax.grad(lambda p: jnp.sum(_apply(plain, {'params': p}, x) ** 2))(vp['params'])
    assert all(np.isfinite(np.asarray(l)).all() for l in jax.tree_util.tree_leaves(g))


# --------------------------------------------------------------------------- pooling


def _np_pool(x, f, s, p, mode, include_pad=True):
    """2D NHWC reference pooling with symmetric padding p (no ceil mode)."""
    n, h, w, c = x.shape
    fill = {'max': -np.inf, 'min': np.inf, 'avg': 0.0}[mode]
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=fill)
    inside = np.pad(np.ones((h, w)), p)
    oh, ow = (h + 2 * p - f) // s + 1, (w + 2 * p - f) // s + 1
    y = np.zeros((n, oh, ow, c))
    for i, j in itertools.product(range(oh), range(ow)):
        win = xp[:, i * s : i * s + f, j * s : j * s + f]
        if mode == 'avg':
            cnt = f * f if include_pad else inside[i * s : i * s + f, j * s : j * s + f].sum()
            y[:, i, j] = win.sum((1, 2)) / cnt
        else:
            y[:, i, j] = getattr(win, mode)((1, 2))
    return y


@pytest.mark.parametrize('f,s,p', [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 3, 1)])
def test_pools_match_reference(f, s, p):
    x = _rand((2, 7, 8, 3))
    _close(J.max_pool(x, (f, f), s, p), _np_pool(x, f, s, p, 'max'))
    _close(J.min_pool(x, (f, f), s, p), _np_pool(x, f, s, p, 'min'))
    _close(J.avg_pool(x, (f, f), s, p), _np_pool(x, f, s, p, 'avg'))
    _close(J.avg_pool(x, (f, f), s, p, count_include_pad=False), _np_pool(x, f, s, p, 'avg', False))


@pytest.mark.parametrize(
    'window,strides,pad,dil,ceil',
    [
        ((3, 3), 2, 1, 1, True),
        ((2, 3), (1, 2), 'same', (2, 1), False),
        ((3,), 2, 0, 1, True),
        ((2, 2, 2), 1, 'full', 1, False),
    ],
)
def test_min_pool_is_negated_max_pool(window, strides, pad, dil, ceil):
    x = _rand((2,) + (7,) * len(window) + (3,))
    _close(J.min_pool(x, window, strides, pad, dil, ceil), -J.max_pool(-x, window, strides, pad, dil, ceil))


@pytest.mark.parametrize(
    'shape,window',
    [((2, 9, 7, 3), (2, 2)), ((2, 10, 3), (3,)), ((2, 6, 6, 4, 2), (2, 3, 2)), ((1, 9, 9, 2), (3, 3))],
)
@pytest.mark.parametrize('ties', [False, True])
def test_tiled_max_pool_matches_reduce_window_values_and_gradients(shape, window, ties):
    """Non-overlapping windows take the reshape path (custom VJP, no select-and-scatter): the values and
    the gradient equal lax.reduce_window's, ties included (the first maximum in row-major order gets it),
    trailing rows beyond whole windows get zero gradient."""
    from jax import lax

    from research.layers import pooling

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    if ties:  # many equal maxima per window (0 / 1 plateaus, as after a ReLU)
        x = np.round(x).clip(0, 1)
    x = jnp.asarray(x)
    zero = ((0, 0),) * len(window)

    def ref(x):
        return pooling._reduce_pool(
            x, np.float32(-np.inf), lax.max, window, window, (1,) * len(window), zero, (0,) * len(window)
        )

    y, vjp = jax.vjp(lambda x: L.max_pool(x, window), x)
    y_ref, vjp_ref = jax.vjp(ref, x)
    g = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape).astype(np.float32))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(vjp(g)[0], vjp_ref(g)[0])
    if ties:  # each window's gradient lands on exactly one input
        hits = np.asarray(vjp(jnp.ones_like(y))[0])
        assert hits.sum() == y.size and set(np.unique(hits)) <= {0.0, 1.0}


def test_pool_output_size_and_global_pools():
    x = _rand((2, 9, 10, 3))
    for f, s, p, d, ceil in itertools.product((2, 3), (1, 2, 3), (0, 1), (1, 2), (False, True)):
        if p > f // 2:
            continue
        out = jax.eval_shape(
            functools.partial(L.max_pool, window=(f, f), strides=s, padding=p, dilation=d, ceil_mode=ceil), x
        ).shape[1:3]
        assert out == tuple(L.pool_output_size(i, f, s, p, d, ceil) for i in (9, 10))
    _close(J.global_avg_pool(x), x.mean((1, 2)))
    _close(J.global_max_pool(x, keepdims=True), x.max((1, 2), keepdims=True))


def test_adaptive_pools_bins():
    x = _rand((2, 7, 5, 3))
    y = J.adaptive_avg_pool(x, (3, 2))
    assert y.shape == (2, 3, 2, 3)
    # bins of 7 into 3: [0, 3), [2, 5), [4, 7); of 5 into 2: [0, 3), [2, 5)
    _close(y[:, 1, 0], x[:, 2:5, 0:3].mean((1, 2)))
    _close(J.adaptive_max_pool(x, (3, 2))[:, 2, 1], x[:, 4:7, 2:5].max((1, 2)))
    _close(J.adaptive_avg_pool(x, 1)[:, 0, 0], x.mean((1, 2)))
    assert J.adaptive_max_pool(x, (None, 4)).shape == (2, 7, 4, 3)
    assert J.adaptive_avg_pool(_rand((1, 9, 3)), 4).shape == (1, 4, 3)


def test_spp_length_independent_of_input_size():
    lengths = set()
    for hw in ((4, 4), (7, 9), (13, 13), (32, 20)):
        for mode in ('max', 'avg'):
            y = J.spatial_pyramid_pool(_rand((2,) + hw + (3,)), (1, 2, 4), mode)
            lengths.add(y.shape)
    assert lengths == {(2, 3 * (1 + 4 + 16))}
    x = _rand((1, 8, 8, 2))
    y = J.spatial_pyramid_pool(x, (1, 2))
    _close(y[:, :2], x.max((1, 2)))
    _close(y[:, 2:].reshape(1, 2, 2, 2), J.max_pool(x, (4, 4)))


def test_max_unpool_keeps_maxima_in_place():
    x = _rand((2, 6, 8, 3))
    y, idx = J.max_pool_with_indices(x, (2, 2))
    _close(y, J.max_pool(x, (2, 2)))
    u = np.asarray(J.max_unpool(y, idx, (6, 8)))
    # each 2x2 block of u is zero except the block's maximum, at the maximum's position
    xb = np.asarray(x).reshape(2, 3, 2, 4, 2, 3)
    ub = u.reshape(2, 3, 2, 4, 2, 3)
    is_max = xb == xb.max((2, 4), keepdims=True)
    assert np.array_equal(ub != 0, is_max)
    np.testing.assert_array_equal(ub[is_max], xb[is_max])
    # overlapping windows with padding, 1D and 3D, default output size
    x1 = _rand((1, 9, 2))
    y1, i1 = J.max_pool_with_indices(x1, (3,), 2, 1)
    u1 = np.asarray(J.max_unpool(y1, i1, window=3, strides=2, padding=1))
    assert u1.shape == (1, (5 - 1) * 2 - 2 + 3, 2)
    assert set(np.flatnonzero(u1[0, :, 0])) == set(np.asarray(i1[0, :, 0]).tolist())
    x3 = _rand((1, 4, 4, 4, 2))
    y3, i3 = J.max_pool_with_indices(x3, (2, 2, 2))
    np.testing.assert_array_equal(
        np.asarray(x3).reshape(1, -1, 2)[0, np.asarray(i3)[0, ..., 0].ravel(), 0],
        np.asarray(y3)[0, ..., 0].ravel(),
    )
    g = jax.grad(lambda x: jnp.sum(J.max_pool_with_indices(x, (2, 2))[0]))(x)
    assert float(g.sum()) == y.size


def test_ops_differentiable_under_jit():
    # reduce_window needs Python/numpy init values to pick its differentiable monoid form under jit
    x = _rand((1, 6, 6, 2))
    box = np.array([[0, 0.5, 0.5, 4.0, 5.0]], np.float32)
    ops = {
        'max_pool': lambda x: L.max_pool(x, (3, 3), 2, 1, ceil_mode=True),
        'min_pool': lambda x: L.min_pool(x, (2, 2)),
        'avg_pool': lambda x: L.avg_pool(x, (3, 3), 1, 'same', count_include_pad=False),
        'unpool': lambda x: L.max_unpool(*L.max_pool_with_indices(x, (2, 2)), (6, 6)),
        'spp': lambda x: L.spatial_pyramid_pool(x, (1, 3), 'avg'),
        'bilinear': lambda x: L.upsample_bilinear(x, scale_factor=1.5),
        'nails': lambda x: L.upsample_bed_of_nails(x, 2),
        'roi_align': lambda x: L.roi_align(x, box, 2, sampling_ratio=-1),
        'roi_pool': lambda x: L.roi_pool(x, box, 2),
        'transpose': lambda x: L.conv_transpose(x, jnp.ones((3, 3, 2, 2)), 2, 1, 1),
    }
    for name, op in ops.items():
        g = jax.jit(jax.grad(lambda x, op=op: jnp.sum(op(x) ** 2)))(x)
        assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0, name


def test_max_pool_indices_ties_take_first():
    x = jnp.ones((1, 4, 4, 1))
    _, idx = J.max_pool_with_indices(x, (2, 2))
    assert np.asarray(idx)[0, :, :, 0].tolist() == [[0, 2], [8, 10]]


# --------------------------------------------------------------------------- resampling


def test_nearest_bed_of_nails_and_bilinear_basics():
    x = _rand((1, 3, 4, 2))
    up = J.upsample_nearest(x, 2)
    _close(up, np.repeat(np.repeat(x, 2, 1), 2, 2))
    _close(J.upsample_nearest(x, size=(6, 8)), up)
    nails = np.asarray(J.upsample_bed_of_nails(x, 2))
    assert nails.shape == (1, 6, 8, 2)
    _close(nails[:, ::2, ::2], x)
    assert not nails[:, 1::2].any() and not nails[:, :, 1::2].any()
    # bilinear of a linear ramp with align_corners=True is exact: samples at o (I-1)/(O-1)
    h, w, oh, ow = 4, 5, 7, 9
    ramp = (2.0 * np.arange(h)[:, None] + 3.0 * np.arange(w)[None, :] + 1.0)[None, :, :, None]
    want = 2.0 * np.linspace(0, h - 1, oh)[:, None] + 3.0 * np.linspace(0, w - 1, ow)[None, :] + 1.0
    _close(
        J.upsample_bilinear(jnp.asarray(ramp, jnp.float32), (oh, ow), align_corners=True)[0, :, :, 0], want
    )
    # align_corners=False, factor 2: src = (o + 1/2)/2 - 1/2, clamped at the borders
    src = np.clip((np.arange(2 * w) + 0.5) / 2 - 0.5, 0, w - 1)
    row = J.upsample_bilinear(jnp.asarray(ramp, jnp.float32), scale_factor=2)[0, 0, :, 0]
    _close(row, 3.0 * src + 1.0)


# --------------------------------------------------------------------------- RoI ops


def _np_bilinear(img, y, x):
    h, w = img.shape[:2]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(img.shape[2:])
    y, x = max(y, 0.0), max(x, 0.0)
    yl, xl = int(y), int(x)
    if yl >= h - 1:
        yh = yl = h - 1
        y = float(yl)
    else:
        yh = yl + 1
    if xl >= w - 1:
        xh = xl = w - 1
        x = float(xl)
    else:
        xh = xl + 1
    ly, lx = y - yl, x - xl
    hy, hx = 1 - ly, 1 - lx
    return hy * hx * img[yl, xl] + hy * lx * img[yl, xh] + ly * hx * img[yh, xl] + ly * lx * img[yh, xh]


def _np_roi_align(x, boxes, out, scale, sr, aligned):
    """Port of torchvision's roi_align_kernel.cpp forward (float64)."""
    ph_, pw_ = out
    res = np.zeros((len(boxes), ph_, pw_, x.shape[-1]))
    off = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(boxes):
        img = x[int(b)].astype(np.float64)
        sw, sh, ew, eh = x1 * scale - off, y1 * scale - off, x2 * scale - off, y2 * scale - off
        rw, rh = ew - sw, eh - sh
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph_, rw / pw_
        gh = sr if sr > 0 else math.ceil(rh / ph_)
        gw = sr if sr > 0 else math.ceil(rw / pw_)
        cnt = max(gh * gw, 1)
        for p, q in itertools.product(range(ph_), range(pw_)):
            acc = np.zeros(x.shape[-1])
            for iy, ix in itertools.product(range(max(gh, 0)), range(max(gw, 0))):
                yy = sh + p * bh + (iy + 0.5) * bh / gh
                xx = sw + q * bw + (ix + 0.5) * bw / gw
                acc += _np_bilinear(img, yy, xx)
            res[k, p, q] = acc / cnt
    return res


def _np_roi_pool(x, boxes, out, scale):
    """Port of torchvision's roi_pool_kernel.cpp forward."""
    ph_, pw_ = out
    _n, h, w, c = x.shape
    res = np.zeros((len(boxes), ph_, pw_, c))
    rnd = lambda v: math.floor(abs(v) + 0.5) * (1 if v >= 0 else -1)
    for k, (b, x1, y1, x2, y2) in enumerate(boxes):
        sw, sh, ew, eh = (rnd(np.float32(v) * np.float32(scale)) for v in (x1, y1, x2, y2))
        rw, rh = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
        bh, bw = np.float32(rh) / np.float32(ph_), np.float32(rw) / np.float32(pw_)
        for p, q in itertools.product(range(ph_), range(pw_)):
            hs = min(max(int(np.floor(np.float32(p) * bh)) + sh, 0), h)
            he = min(max(int(np.ceil(np.float32(p + 1) * bh)) + sh, 0), h)
            ws = min(max(int(np.floor(np.float32(q) * bw)) + sw, 0), w)
            we = min(max(int(np.ceil(np.float32(q + 1) * bw)) + sw, 0), w)
            if he > hs and we > ws:
                res[k, p, q] = x[int(b), hs:he, ws:we].max((0, 1))
    return res


BOXES = np.array(
    [
        [0, 0.0, 0.0, 15.0, 11.0],
        [1, 2.3, 1.7, 9.6, 8.2],
        [0, -3.0, -2.5, 5.0, 4.0],
        [1, 10.0, 6.0, 40.0, 30.0],  # far outside (scaled)
        [0, 4.0, 4.0, 4.0, 4.0],  # degenerate
        [1, 6.2, 3.1, 5.0, 2.0],  # inverted
        [0, 1.5, 2.5, 13.5, 10.5],
    ],
    np.float32,
)


@pytest.mark.parametrize(
    'sr,aligned,scale', [(2, False, 1.0), (-1, False, 0.5), (-1, True, 1.0), (3, True, 0.5), (1, False, 1.0)]
)
def test_roi_align_matches_reference(sr, aligned, scale):
    x = _rand((2, 12, 16, 3))
    y = J.roi_align(x, BOXES, (3, 4), scale, sr, aligned)
    _close(y, _np_roi_align(x, BOXES, (3, 4), scale, sr, aligned))


def test_roi_align_whole_image_linear_ramp_analytic():
    h, w, a, b, c0 = 6, 8, 2.0, -3.0, 0.5
    ramp = (a * np.arange(h)[:, None] + b * np.arange(w)[None, :] + c0)[None, :, :, None].astype(np.float32)
    ph_, pw_ = 3, 4
    # aligned=False, box (0, 0, W-1, H-1): samples span [0, H-1] with no clamping, so the bin average
    # of a linear function is its value at the bin centre.
    y = J.roi_align(ramp, np.array([[0, 0, 0, w - 1, h - 1]], np.float32), (ph_, pw_), sampling_ratio=2)
    want = (
        a * (np.arange(ph_)[:, None] + 0.5) * (h - 1) / ph_
        + b * (np.arange(pw_)[None, :] + 0.5) * (w - 1) / pw_
    )
    _close(y[0, :, :, 0], want + c0)
    # aligned=True, box (0, 0, W, H): pixel-model samples y = -1/2 + (p + (i + 1/2)/G) H/PH, clamped to [0, H-1]
    g = 2
    ys = -0.5 + (np.arange(ph_)[:, None] + (np.arange(g)[None, :] + 0.5) / g) * h / ph_
    xs = -0.5 + (np.arange(pw_)[:, None] + (np.arange(g)[None, :] + 0.5) / g) * w / pw_
    ey = a * np.clip(ys, 0, h - 1).mean(1)
    ex = b * np.clip(xs, 0, w - 1).mean(1)
    y = J.roi_align(ramp, np.array([[0, 0, 0, w, h]], np.float32), (ph_, pw_), sampling_ratio=g, aligned=True)
    _close(y[0, :, :, 0], ey[:, None] + ex[None, :] + c0)


@pytest.mark.parametrize('scale', [1.0, 0.5, 0.25])
def test_roi_pool_matches_reference(scale):
    x = _rand((2, 12, 16, 3))
    _close(J.roi_pool(x, BOXES, (2, 3), scale), _np_roi_pool(x, BOXES, (2, 3), scale))


def test_roi_ops_jit_with_varying_boxes_and_4col_format():
    x = _rand((2, 10, 12, 2))
    traces = []

    @jax.jit
    def f(x, boxes, bidx):
        traces.append(1)
        return J.roi_align(x, boxes, 2, 1.0, -1, True, bidx), J.roi_pool(x, boxes, 2, 1.0, bidx)

    rng = np.random.default_rng(0)
    for _ in range(4):
        xy = rng.uniform(-4, 14, (5, 2)).astype(np.float32)
        wh = rng.uniform(0, 12, (5, 2)).astype(np.float32)
        bidx = rng.integers(0, 2, 5).astype(np.int32)
        boxes = np.concatenate([xy, xy + wh], 1)
        ya, yp = f(x, boxes, bidx)
        full = np.concatenate([bidx[:, None].astype(np.float32), boxes], 1)
        _close(ya, _np_roi_align(x, full, (2, 2), 1.0, -1, True))
        _close(yp, _np_roi_pool(x, full, (2, 2), 1.0))
    assert len(traces) == 1
    g = jax.grad(lambda x: jnp.sum(J.roi_align(x, BOXES, 2, 0.5, 2)))(x)
    assert np.isfinite(np.asarray(g)).all()


# --------------------------------------------------------------------------- torch parity


def _t(x):
    torch = pytest.importorskip('torch')
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1)))


def _from_t(t):
    return np.moveaxis(t.detach().numpy(), 1, -1)


def _tw(kernel):
    """(*F, C/g, K) -> torch (K, C/g, *F)."""
    import torch

    k = np.asarray(kernel)
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.moveaxis(k, -1, 0), -1, 1)))


@pytest.mark.parametrize(
    'stride,pad,dil,groups', [(1, 0, 1, 1), (2, 1, 1, 2), (3, 2, 2, 4), ((2, 1), (1, 2), (1, 3), 1)]
)
def test_torch_conv2d(stride, pad, dil, groups):
    torch = pytest.importorskip('torch')
    x = _rand((2, 11, 10, 8))
    kern, bias = _rand((3, 2, 8 // groups, 4), 1), _rand((4,), 2)
    want = torch.nn.functional.conv2d(_t(x), _tw(kern), torch.from_numpy(bias), stride, pad, dil, groups)
    y = _apply(L.ConvND(4, (3, 2), stride, pad, dil, groups), {'params': {'kernel': kern, 'bias': bias}}, x)
    _close(y, _from_t(want))


def test_torch_conv1d_conv3d_same_padding():
    torch = pytest.importorskip('torch')
    F = torch.nn.functional
    x1, k1 = _rand((2, 13, 4)), _rand((4, 2, 6), 1)
    _close(J.conv_nd(x1, k1, 1, 'same', 2, 2), _from_t(F.conv1d(_t(x1), _tw(k1), None, 1, 'same', 2, 2)))
    x3, k3 = _rand((1, 6, 7, 5, 3)), _rand((3, 2, 3, 3, 4), 1)
    _close(J.conv_nd(x3, k3, (2, 1, 1), 1, 1), _from_t(F.conv3d(_t(x3), _tw(k3), None, (2, 1, 1), 1)))


TORCH_TRANSPOSE_CASES = [c for c in TRANSPOSE_CASES if isinstance(c[1], int)]  # torch pads symmetrically


@pytest.mark.parametrize(
    'stride,pad,dil,op,groups', TORCH_TRANSPOSE_CASES + [(1, 1, 3, 2, 1), (2, 1, 3, 2, 2)]
)
def test_torch_conv_transpose2d(stride, pad, dil, op, groups):
    torch = pytest.importorskip('torch')
    x = _rand((2, 4, 5, 4))
    kern, bias = _rand((3, 2, 6 // groups, 4), 1), _rand((6,), 2)
    # torch ConvTranspose weight (C_in, C_out/g, kh, kw) == our (kh, kw, C_out/g, C_in) permuted
    tw = torch.from_numpy(np.ascontiguousarray(np.transpose(kern, (3, 2, 0, 1))))
    want = torch.nn.functional.conv_transpose2d(
        _t(x), tw, torch.from_numpy(bias), stride, pad, op, groups, dil
    )
    m = L.ConvTranspose(6, (3, 2), stride, pad, op, dil, groups)
    _close(_apply(m, {'params': {'kernel': kern, 'bias': bias}}, x), _from_t(want))
    for impl in ('lhs_dilation', 'subpixel'):
        _close(J.conv_transpose(x, kern, stride, pad, op, dil, groups, impl=impl) + bias, _from_t(want))


@pytest.mark.parametrize(
    'f,s,p,d,ceil',
    [(2, 2, 0, 1, False), (3, 2, 1, 1, True), (3, 3, 1, 1, True), (2, 1, 1, 2, False), (3, 2, 0, 2, True)],
)
def test_torch_max_avg_pool2d(f, s, p, d, ceil):
    torch = pytest.importorskip('torch')
    F = torch.nn.functional
    x = _rand((2, 9, 10, 3))
    want, widx = F.max_pool2d(_t(x), f, s, p, d, ceil, return_indices=True)
    y, idx = J.max_pool_with_indices(x, (f, f), s, p, d, ceil)
    _close(y, _from_t(want))
    np.testing.assert_array_equal(np.asarray(idx), _from_t(widx))
    if d == 1 and not ceil:  # torch's default unpool size (I - 1) S - 2P + F
        unpool = F.max_unpool2d(want, widx, f, s, p)
        _close(J.max_unpool(y, idx, window=f, strides=s, padding=p), _from_t(unpool))
    if d == 1:
        for inc in (True, False):
            want = F.avg_pool2d(_t(x), f, s, p, ceil, inc)
            _close(J.avg_pool(x, (f, f), s, p, 1, ceil, inc), _from_t(want))


def test_torch_adaptive_pools_and_interpolate():
    torch = pytest.importorskip('torch')
    F = torch.nn.functional
    x = _rand((2, 11, 7, 3))
    for out in ((3, 3), (4, 5), (7, 2), (11, 7), (13, 9)):
        _close(J.adaptive_avg_pool(x, out), _from_t(F.adaptive_avg_pool2d(_t(x), out)))
        _close(J.adaptive_max_pool(x, out), _from_t(F.adaptive_max_pool2d(_t(x), out)))
    x3 = _rand((1, 5, 6, 7, 2))
    _close(J.adaptive_avg_pool(x3, (2, 3, 4)), _from_t(F.adaptive_avg_pool3d(_t(x3), (2, 3, 4))))
    for ac in (True, False):
        for size in ((22, 14), (5, 3), (17, 10)):
            want = F.interpolate(_t(x), size=size, mode='bilinear', align_corners=ac)
            _close(J.upsample_bilinear(x, size, align_corners=ac), _from_t(want))
        for sf in (2, 1.5, 3.0):
            want = F.interpolate(_t(x), scale_factor=sf, mode='bilinear', align_corners=ac)
            _close(J.upsample_bilinear(x, scale_factor=sf, align_corners=ac), _from_t(want))
    for kw in ({'scale_factor': 2}, {'size': (15, 10)}, {'scale_factor': 1.7}, {'size': (5, 4)}):
        want = F.interpolate(_t(x), mode='nearest', **kw)
        _close(J.upsample_nearest(x, **kw), _from_t(want))
    want = F.interpolate(_t(x3), scale_factor=2, mode='trilinear', align_corners=False)
    _close(J.upsample_bilinear(x3, scale_factor=2), _from_t(want))


@pytest.mark.parametrize(
    'sr,aligned,scale', [(2, False, 1.0), (-1, False, 0.5), (-1, True, 1.0), (3, True, 0.25), (0, False, 2.0)]
)
def test_torchvision_roi_align_and_pool(sr, aligned, scale):
    torch = pytest.importorskip('torch')
    tv = pytest.importorskip('torchvision')
    x = _rand((2, 12, 16, 3))
    boxes = torch.from_numpy(BOXES)
    want = tv.ops.roi_align(_t(x), boxes, (3, 4), scale, sr, aligned)
    _close(J.roi_align(x, BOXES, (3, 4), scale, sr, aligned), _from_t(want))
    want = tv.ops.roi_pool(_t(x), boxes, (3, 4), scale)
    _close(J.roi_pool(x, BOXES, (3, 4), scale), _from_t(want))
    # [K, 4] boxes + batch indices
    got = J.roi_align(x, BOXES[:, 1:], (3, 4), scale, sr, aligned, batch_indices=BOXES[:, 0].astype(np.int32))
    _close(got, J.roi_align(x, BOXES, (3, 4), scale, sr, aligned))


@pytest.mark.parametrize(
    'shape,kernel,strides,padding',
    [
        ((2, 12, 12, 1), (5, 5, 1, 6), (1, 1), 'VALID'),
        ((2, 9, 9, 3), (3, 3, 3, 4), (2, 2), ((1, 0), (2, 1))),
        ((2, 8, 8, 3), (3, 3, 3, 5), (1, 1), 'SAME'),
    ],
)
def test_first_layer_conv_formulation_equals_xla(shape, kernel, strides, padding):
    """common.conv_general_dilated (flax nn.Conv's conv in ``Conv``): on CPU a few-channel input takes the
    shift-and-add forward (no convolution op in the forward jaxpr) with XLA's gradients; values and
    gradients equal lax.conv_general_dilated's."""
    from jax import lax

    from research.layers.common import conv_general_dilated

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    w = jnp.asarray(rng.standard_normal(kernel).astype(np.float32))
    dn = ('NHWC', 'HWIO', 'NHWC')

    def f(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, strides, padding, dimension_numbers=dn)))

    fwd = jax.jit(lambda x, w: conv_general_dilated(x, w, strides, padding, dimension_numbers=dn))
    # lowered for CPU: shift-and-add (no convolution op); for CUDA: XLA's convolution
    assert 'stablehlo.convolution' not in fwd.lower(x, w).as_text()
    cuda = jax.export.export(fwd, platforms=('cuda',))(x, w).mlir_module()
    assert 'stablehlo.convolution' in cuda
    _close(
        conv_general_dilated(x, w, strides, padding, dimension_numbers=dn),
        lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn),
    )
    for a, b in zip(
        jax.grad(f(conv_general_dilated), (0, 1))(x, w), jax.grad(f(lax.conv_general_dilated), (0, 1))(x, w)
    ):
        _close(a, b)
    # not eligible (8 input channels, or groups): the plain XLA convolution
    x8 = jnp.zeros((1, 8, 8, 8))
    assert 'conv_general_dilated' in str(
        jax.make_jaxpr(
            lambda x: conv_general_dilated(x, jnp.zeros((3, 3, 8, 4)), (1, 1), 'SAME', dimension_numbers=dn)
        )(x8)
    )
