"""research/kernels/cpu.py: the CPU fast paths are chosen per platform when a program is lowered.

A function traced once lowers with the CPU forms for CPU and the plain ``lax`` ops for GPU/TPU:
the exported CUDA/TPU programs hold no optimization barrier, no oneDNN custom call and every
convolution as a ``convolution`` op; the CPU program keeps the fast forms. The layers read no
backend at trace time (``research/layers`` has no ``default_backend``)."""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import export

from research import models
from research.kernels import cpu, onednn
from research.layers import conv as conv_lib
from research.layers import pooling
from research.train.state import create_train_state, train_step

REPO = Path(__file__).resolve().parents[1]


def _step_text(model, platforms, shape=(4, 16, 16, 3), onednn_on=False):
    init = functools.partial(
        create_train_state, model, optax.sgd(0.1, 0.9), sample_input=jnp.zeros((1, *shape[1:]))
    )
    state = jax.eval_shape(init, jax.ShapeDtypeStruct((2,), jnp.uint32))
    batch = {
        'image': jax.ShapeDtypeStruct(shape, jnp.float32),
        'label': jax.ShapeDtypeStruct(shape[:1], jnp.int32),
    }
    # oneDNN's FFI targets are this project's, with no serialization guarantee: allowed explicitly
    checks = [export.DisabledSafetyCheck.custom_call(name) for name, _ in onednn.TARGETS.values()]
    with onednn.use_onednn(onednn_on):
        exp = export.export(jax.jit(train_step), platforms=platforms, disabled_checks=checks)(state, batch)
    return exp.mlir_module()


def test_layers_read_no_backend():
    out = subprocess.run(
        ['grep', '-rnE', r'default_backend|_on_cpu|platform ?==', str(REPO / 'research' / 'layers')],
        capture_output=True,
        text=True,
    )
    assert out.stdout == '', out.stdout


def test_resnet_step_for_cuda_and_tpu_has_no_cpu_forms_and_cpu_keeps_them():
    model = models.create('resnet_cifar', depth=8, width=4, num_classes=10)
    accel = _step_text(model, ('cuda', 'tpu'))
    host = _step_text(model, ('cpu',))
    assert 'optimization_barrier' not in accel
    assert 'optimization_barrier' in host  # the residual stream on CPU
    # every conv of the accelerator program is a convolution op, the first layer included: 7 convs
    # forward (3 per stage pair... counted from the model) and their two gradients each
    n_conv = len(re.findall(r'stablehlo.convolution', accel))
    n_host = len(re.findall(r'stablehlo.convolution', host))
    assert n_conv > n_host  # on CPU the first layer's forward is shift-and-add slices, not a conv
    assert 'custom_call' not in accel


@pytest.mark.skipif(not onednn.available(), reason='the onednn extra is not installed')
def test_onednn_calls_only_in_the_cpu_program():
    model = models.create('resnet_cifar', depth=8, width=4, num_classes=10)
    host = _step_text(model, ('cpu',), onednn_on=True)
    accel = _step_text(model, ('cuda', 'tpu'), onednn_on=True)
    assert 'research_onednn_conv_fwd' in host and 'research_onednn_conv_bwd_weights' in host
    assert 'research_onednn' not in accel
    both = _step_text(model, ('cpu', 'cuda'), onednn_on=True)  # one program for two platforms
    assert 'research_onednn_conv_fwd' in both and 'stablehlo.case' in both


def _jaxpr_ops(f, *args):
    return str(jax.make_jaxpr(f)(*args))


@pytest.mark.parametrize(
    'name, fn, args',
    [
        ('pointwise', lambda x, w: conv_lib.conv_nd(x, w), ((2, 8, 8, 6), (1, 1, 6, 4))),
        ('grouped', lambda x, w: conv_lib.conv_nd(x, w, groups=3), ((2, 8, 8, 6), (3, 3, 2, 6))),
        ('depthwise', lambda x, w: conv_lib.depthwise_conv(x, w, padding=1), ((2, 8, 8, 6), (3, 3, 1, 6))),
        ('transposed', lambda x, w: conv_lib.conv_transpose(x, w, 2, 1), ((2, 5, 5, 4), (4, 4, 3, 4))),
        ('max_pool', lambda x: pooling.max_pool(x, 2), ((2, 8, 8, 3),)),
    ],
)
def test_auto_forms_equal_the_plain_ops_in_value_gradient_and_jvp(name, fn, args):
    """Each 'auto' layer op traced with both forms: the CPU program (this machine) equals the plain
    form (what GPU/TPU run, computed here under native_convolutions) in value, gradient and JVP."""
    rng = np.random.default_rng(0)
    xs = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in args]
    assert 'platform_index' in _jaxpr_ops(fn, *xs) or 'cond' in _jaxpr_ops(fn, *xs)
    loss = lambda *a: jnp.sum(jnp.sin(fn(*a)))  # noqa: E731
    with cpu.native_convolutions():
        want = jax.jit(fn)(*xs)
        want_g = jax.jit(jax.grad(loss, argnums=tuple(range(len(xs)))))(*xs)
        want_t = jax.jvp(fn, xs, xs)[1]
    got = jax.jit(fn)(*xs)
    got_g = jax.jit(jax.grad(loss, argnums=tuple(range(len(xs)))))(*xs)
    got_t = jax.jvp(fn, xs, xs)[1]  # forward mode works through every form (custom JVP on CPU)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(got_g, want_g):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_t, want_t, rtol=1e-4, atol=1e-5)


def test_jacfwd_through_a_model_with_max_pool():
    """The CPU max-pool derivative is a custom JVP: jax.jacfwd works through LeNet-5 (it did not with
    the custom VJP) and equals jax.jacrev."""
    model = models.create('lenet5_modern', num_classes=10)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 32, 32, 1)), jnp.float32)
    v = jax.jit(model.init)(jax.random.key(0), x)
    f = lambda x: model.apply(v, x, train=False)[0, :3]  # noqa: E731
    np.testing.assert_allclose(jax.jacfwd(f)(x), jax.jacrev(f)(x), rtol=1e-4, atol=1e-6)


def test_tiled_max_pool_gradient_takes_one_max_reduction():
    """The CPU max-pool's derivative builds the first-maximum mask from the pooled output: the
    forward's one ``reduce_window`` max, no second max over the windows. The custom_jvp form once
    recomputed it (``jnp.max`` over the block view), which cost LeNet-5's training step ~10%
    (5.3 -> 6.4 ms at batch 128 on 2 cores, benchmarks/RESULTS.md)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 3)), jnp.float32)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(pooling.max_pool(x, 2) ** 2)))(x))
    assert 'reduce_window_max' in jaxpr
    assert 'reduce_max' not in jaxpr
    want = jax.grad(
        lambda x: jnp.sum(
            jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID') ** 2
        )
    )(x)
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(pooling.max_pool(x, 2) ** 2))(x), want)
