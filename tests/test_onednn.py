"""oneDNN convolutions on CPU (research/kernels/onednn.py): values and gradients equal XLA's, the
routing in ``conv_general_dilated``, ``train.cpu_conv`` resolution, and a training step."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from research import models
from research.kernels import onednn
from research.kernels.cpu import _onednn_pads
from research.layers.common import conv_general_dilated
from research.models.catalog import call_kwargs, input_shape
from research.models.registry import _module_class
from research.train.state import create_train_state, train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _installed() -> bool:
    try:
        importlib.metadata.version('onednn-cpu-gomp')
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_builds_where_the_extra_is_installed():
    """Where the test extra installed oneDNN (x86-64 Linux) the kernels must build and load: the tests
    below are then run, not skipped."""
    if not _installed():
        pytest.skip(f'onednn extra not installed here ({platform.machine()} {sys.platform})')
    assert onednn.unavailable_reason() is None


needs_onednn = pytest.mark.skipif(not onednn.available(), reason=str(onednn.unavailable_reason()))

DN = ('NHWC', 'HWIO', 'NHWC')


def _lax(x, w, strides, pads, dilation):
    return lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation, dimension_numbers=DN)


CASES = [  # x shape, kernel (kh, kw, cin, cout), strides, pads, dilation
    ((4, 12, 12, 8), (3, 3, 8, 16), (1, 1), ((1, 1), (1, 1)), (1, 1)),  # ResNet 3x3
    ((4, 12, 12, 8), (3, 3, 8, 16), (2, 2), ((1, 1), (1, 1)), (1, 1)),  # downsampling
    ((4, 12, 12, 8), (3, 3, 8, 16), (2, 2), ((0, 1), (0, 1)), (1, 1)),  # asymmetric ('SAME', stride 2)
    ((4, 11, 11, 8), (1, 1, 8, 24), (2, 2), ((0, 0), (0, 0)), (1, 1)),  # 1x1 projection shortcut
    ((3, 14, 14, 4), (3, 3, 4, 8), (1, 1), ((2, 2), (2, 2)), (2, 2)),  # atrous
    ((5, 32, 32, 1), (5, 5, 1, 6), (1, 1), ((0, 0), (0, 0)), (1, 1)),  # LeNet C1
    ((2, 9, 13, 6), (1, 3, 6, 5), (1, 2), ((0, 0), (1, 1)), (1, 1)),  # spatially separable 1x3
    ((1, 16, 16, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3)), (1, 1)),  # ImageNet stem, batch 1
]


@needs_onednn
@pytest.mark.parametrize('xs, ws, strides, pads, dilation', CASES)
def test_conv2d_equals_xla_values_and_gradients(xs, ws, strides, pads, dilation):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, xs)
    w = jax.random.normal(kw, ws) / np.sqrt(np.prod(ws[:3]))
    ref = _lax(x, w, strides, pads, dilation)
    out = jax.jit(onednn.conv2d, static_argnums=(2, 3, 4))(x, w, strides, pads, dilation)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, ref.shape)

    def loss(f, x, w):
        return jnp.sum(f(x, w, strides, pads, dilation) * g)

    gx, gw = jax.jit(jax.grad(functools.partial(loss, onednn.conv2d), argnums=(0, 1)))(x, w)
    rx, rw = jax.grad(functools.partial(loss, _lax), argnums=(0, 1))(x, w)
    np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gw, rw, rtol=1e-5, atol=2e-5 * float(jnp.abs(rw).max()))


@needs_onednn
def test_conv2d_under_vmap():
    x = jax.random.normal(jax.random.key(1), (3, 2, 8, 8, 4))
    w = jax.random.normal(jax.random.key(2), (3, 3, 3, 4, 5))
    args = ((1, 1), ((1, 1), (1, 1)), (1, 1))
    out = jax.vmap(lambda a, b: onednn.conv2d(a, b, *args))(x, w)
    ref = jax.vmap(lambda a, b: _lax(a, b, *args))(x, w)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def _uses_onednn(f, *args) -> bool:
    # a fresh function each time: jit's trace cache is keyed by the function, not by use_onednn
    return 'research_onednn_conv_fwd' in jax.jit(lambda *a: f(*a)).lower(*args).as_text()


@needs_onednn
def test_conv_general_dilated_routes_only_what_onednn_computes():
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    dense = functools.partial(
        conv_general_dilated, window_strides=(1, 1), padding='SAME', dimension_numbers=DN
    )
    assert not _uses_onednn(dense, x, w)  # off by default
    with onednn.use_onednn():
        assert _uses_onednn(dense, x, w)
        assert onednn.enabled()
        grouped = functools.partial(dense, feature_group_count=2)
        assert not _uses_onednn(grouped, x, jnp.ones((3, 3, 2, 4)))
        assert not _uses_onednn(dense, x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
        transposed = functools.partial(
            dense, lhs_dilation=(2, 2), padding=((1, 1), (1, 1))
        )  # transposed: XLA
        assert not _uses_onednn(transposed, x, w)
        nchw = functools.partial(conv_general_dilated, window_strides=(1, 1), padding='SAME')
        assert not _uses_onednn(nchw, jnp.ones((2, 4, 8, 8)), jnp.ones((4, 4, 3, 3)))
        x3d = jnp.ones((1, 4, 4, 4, 2))
        w3d = jnp.ones((3, 3, 3, 2, 2))
        conv3d = functools.partial(
            conv_general_dilated,
            window_strides=(1, 1, 1),
            padding='SAME',
            dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'),
        )
        assert not _uses_onednn(conv3d, x3d, w3d)
        assert not _uses_onednn(dense, jnp.ones((0, 8, 8, 4)), w)  # empty batch
    assert not onednn.enabled()


def test_resolve_cpu_conv():
    with pytest.raises(ValueError, match="'mkl'"):
        onednn.resolve('mkl', 1)
    assert onednn.resolve('xla', 1) == 'xla'
    assert onednn.resolve('auto', 2) == 'xla'  # data parallel over CPU devices keeps XLA's convolutions
    with pytest.raises(ValueError, match='--cpu_devices'):
        onednn.resolve('onednn', 2)
    assert onednn.resolve('auto', 1) == ('onednn' if onednn.available() else 'xla')


def test_unavailable_onednn_names_where_it_looked(tmp_path):
    """Without oneDNN, 'auto' falls back to XLA and 'onednn' fails naming the prefix and the extra."""
    code = (
        'from research.kernels import onednn\n'
        "assert onednn.resolve('auto', 1) == 'xla'\n"
        "try:\n    onednn.resolve('onednn', 1)\nexcept onednn.OnednnUnavailable as e:\n    print(e)\n"
    )
    env = dict(
        os.environ, RESEARCH_ONEDNN_ROOT=str(tmp_path / 'nowhere'), RESEARCH_KERNEL_CACHE=str(tmp_path)
    )
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert str(tmp_path / 'nowhere') in r.stdout and '[onednn]' in r.stdout


@needs_onednn
def test_resnet_train_steps_equal_xla():
    """Three SGD steps of a CIFAR ResNet (BN, projection shortcuts, stride 2) with oneDNN's
    convolutions match XLA's: loss, parameters and BN statistics."""
    model = models.create('resnet_cifar', depth=8, width=8, num_classes=10)
    tx = optax.sgd(0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    batch = {
        'image': jnp.asarray(rng.standard_normal((16, 16, 16, 3)), jnp.float32),
        'label': jnp.asarray(rng.integers(0, 10, 16), jnp.int32),
    }

    def run(on):
        init = functools.partial(create_train_state, model, tx, sample_input=batch['image'][:1])
        state = onednn.scoped(jax.jit(init), on)(jax.random.key_data(jax.random.key(0)))
        step = onednn.scoped(jax.jit(train_step), on)
        hlo = step.lower(state, batch).as_text()
        losses = []
        for _ in range(3):
            state, m = step(state, batch)
            losses.append(float(m['loss']))
        return state, losses, hlo

    (s1, l1, hlo), (s0, l0, _) = run(True), run(False)
    assert 'research_onednn_conv_bwd_weights' in hlo  # the step really ran oneDNN's kernels
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    for a, b in zip(
        jax.tree.leaves((s1.params, s1.batch_stats)), jax.tree.leaves((s0.params, s0.batch_stats))
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not onednn.enabled()


def _missed_routes(jaxpr) -> list[str]:
    """The ``conv_general_dilated`` equations of ``jaxpr`` (and its sub-jaxprs) that oneDNN could have
    computed: convolutions that bypassed ``research.layers.common.conv_general_dilated``."""
    missed = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == 'conv_general_dilated':
            lhs, rhs = (v.aval for v in eqn.invars)
            p = eqn.params
            names = (
                'window_strides',
                'padding',
                'lhs_dilation',
                'rhs_dilation',
                'dimension_numbers',
                'feature_group_count',
                'batch_group_count',
                'preferred_element_type',
            )
            if _onednn_pads(lhs, rhs, *(p[k] for k in names)) is not None:
                missed.append(f'{lhs.str_short()} * {rhs.str_short()}')
        params = dict(eqn.params)
        platforms = params.get('branches_platforms')
        if eqn.primitive.name == 'cond' and platforms:  # lax.platform_dependent: the CPU branch only
            cpu = [i for i, ps in enumerate(platforms) if ps and 'cpu' in ps]
            keep = cpu or [i for i, ps in enumerate(platforms) if ps is None]
            params['branches'] = tuple(params['branches'][i] for i in keep)
        for value in params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, 'jaxpr', sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(sub, 'eqns'):
                    missed += _missed_routes(sub)
    return missed


def _one_name_per_class() -> list[str]:
    """The first registered name of each model class that builds with its defaults."""
    seen = {}
    for name in models.list_models():
        cls = _module_class(models.get_constructor(name))
        if cls in seen:
            continue
        try:
            models.create(name)
        except ValueError as e:  # a generic entry without defaults: a named variant covers its class
            assert 'requires argument' in str(e), e
            continue
        seen[cls] = name
    return sorted(seen.values())


@needs_onednn
@pytest.mark.parametrize('name', _one_name_per_class())
def test_every_model_routes_its_convolutions(name):
    """Every model family computes its dense float32 2D convolutions through the project's
    ``conv_general_dilated`` (so ``train.cpu_conv`` reaches them): with oneDNN on, no convolution
    oneDNN could compute is left in the traced forward pass (nothing is computed). airbench94's
    ``nn.Conv`` layers once bypassed it: 57 img/s instead of 187 at batch 1024."""
    model = models.create(name)
    shape = input_shape(name)
    kw = call_kwargs(model, shape)
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    with onednn.use_onednn():
        jaxpr = jax.make_jaxpr(lambda x: model.init(jax.random.key(0), x, **kw))(x)
    assert _missed_routes(jaxpr.jaxpr) == []
