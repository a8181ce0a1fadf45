"""research.xla_flags and layers.common.materialize: the residual stream is computed once.

Without the kept optimization barriers XLA:CPU fuses each block's ``act(y + x)`` chain into every
weight-gradient transpose, so the compiled ResNet step does more work than the plain net of the same
depth, and the excess grows with depth (benchmarks/RESULTS.md, "Residual stream")."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import models, xla_flags
from research.layers.common import materialize, native_convolutions
from research.train.state import create_train_state, train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_importing_research_changes_no_process_state():
    """``import research`` (and every subpackage an entry point imports) leaves XLA_FLAGS alone: the entry
    points apply the project's flags themselves."""
    code = 'import os, research, research.cli, research.tasks; print(os.environ.get("XLA_FLAGS"))'
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
    out = subprocess.run(
        [sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == 'None'


def test_with_disabled_pass_merges_into_existing_flag():
    assert xla_flags.with_disabled_pass('') == '--xla_disable_hlo_passes=cse_barrier_expander'
    assert (
        xla_flags.with_disabled_pass('--xla_force_host_platform_device_count=8 --xla_disable_hlo_passes=foo')
        == '--xla_force_host_platform_device_count=8 --xla_disable_hlo_passes=foo,cse_barrier_expander'
    )
    once = xla_flags.with_disabled_pass('--xla_disable_hlo_passes=cse_barrier_expander')
    assert once == '--xla_disable_hlo_passes=cse_barrier_expander'


def test_materialize_is_the_identity_in_value_and_gradient():
    x = jnp.linspace(-2.0, 2.0, 24).reshape(2, 3, 4)
    f = lambda x: jnp.sum(jnp.sin(materialize(jax.nn.relu(x) * 3.0)) ** 2)
    g = lambda x: jnp.sum(jnp.sin(jax.nn.relu(x) * 3.0) ** 2)
    np.testing.assert_array_equal(jax.jit(f)(x), jax.jit(g)(x))
    np.testing.assert_array_equal(jax.jit(jax.grad(f))(x), jax.jit(jax.grad(g))(x))
    assert 'optimization_barrier' in str(jax.make_jaxpr(f)(x))
    with native_convolutions():  # traced-program tools (layers.summary) see the plain ops
        assert 'optimization_barrier' not in str(jax.make_jaxpr(lambda x: materialize(x) * 2)(x))


def step_flops(name: str, depth: int) -> float:
    """XLA's flop count of the compiled training step (batch 8, 32x32 inputs)."""
    model = models.create(name, depth=depth, num_classes=10)
    init = functools.partial(
        create_train_state, model, optax.sgd(0.1, 0.9), sample_input=jnp.zeros((1, 32, 32, 3))
    )
    state = jax.eval_shape(init, jax.ShapeDtypeStruct((2,), jnp.uint32))
    batch = {
        'image': jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32),
        'label': jax.ShapeDtypeStruct((8,), jnp.int32),
    }
    cost = jax.jit(train_step).lower(state, batch).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)['flops'])


def residual_excess(depth: int = 20) -> float:
    """Relative extra flops of ResNet-``depth`` (option A, no parameters in the shortcut) over plain-``depth``."""
    return step_flops('resnet_cifar', depth) / step_flops('plain_cifar', depth) - 1.0


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the flag is set on CPU-only installs')
def test_residual_step_costs_what_the_plain_step_costs():
    assert 'cse_barrier_expander' in os.environ.get('XLA_FLAGS', ''), (
        'the XLA flag was not applied (conftest)'
    )
    assert abs(residual_excess()) < 1e-3


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the flag is set on CPU-only installs')
def test_without_the_flag_the_residual_chain_is_recomputed():
    """The control: the same measurement with RESEARCH_XLA_FLAGS=0 shows the recomputation."""
    code = 'import json, tests.test_xla_flags as t; print(json.dumps(t.residual_excess()))'
    env = dict(os.environ, RESEARCH_XLA_FLAGS='0', XLA_FLAGS='', JAX_PLATFORMS='cpu')
    out = subprocess.run(
        [sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) > 5e-3


@pytest.mark.skipif(
    xla_flags._accelerator_installed(), reason='not set where an accelerator plugin is installed'
)
def test_flag_set_after_the_backend_started_is_refused_with_a_warning(caplog, monkeypatch):
    jax.devices()  # the backend is up now
    monkeypatch.setenv('XLA_FLAGS', '')
    monkeypatch.delenv('RESEARCH_XLA_FLAGS', raising=False)
    with caplog.at_level('WARNING'):
        assert xla_flags.apply() is False
    assert 'cse_barrier_expander' in caplog.text and os.environ['XLA_FLAGS'] == ''
