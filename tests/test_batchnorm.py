"""research.layers.common.BatchNorm against torch.nn.BatchNorm2d in train mode (issue 27, item 1).

torch updates the running variance with the *unbiased* batch variance (factor n / (n - 1), n = the
values per channel reduced over); Flax's ``nn.BatchNorm`` with the biased one. The project's BatchNorm
follows torch by default, over several steps and shapes, in ghost-BN groups (``ghost_bn_forward``'s
vmap over groups), over the global batch of a jit on 8 devices and across devices with ``axis_name``;
``unbiased_running_var=False`` (norm name ``'batch_biased'``) keeps Flax's rule bit for bit.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.layers.common import BatchNorm, bind_norm, resolve_norm

torch = pytest.importorskip('torch')

REPO = Path(__file__).resolve().parents[1]
MOMENTUM = 0.9  # Flax convention; torch momentum 0.1
EPS = 1e-5


def _torch_bn(c, seed=0):
    """torch BatchNorm2d with non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    bn = torch.nn.BatchNorm2d(c, eps=EPS, momentum=1 - MOMENTUM)
    with torch.no_grad():
        bn.weight.copy_(0.5 + torch.rand(c, generator=g))
        bn.bias.copy_(0.1 * torch.randn(c, generator=g))
        bn.running_mean.copy_(0.1 * torch.randn(c, generator=g))
        bn.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return bn


def _flax_vars(bn):
    return {
        'params': {
            'scale': jnp.asarray(bn.weight.detach().numpy()),
            'bias': jnp.asarray(bn.bias.detach().numpy()),
        },
        'batch_stats': {
            'mean': jnp.asarray(bn.running_mean.numpy()),
            'var': jnp.asarray(bn.running_var.numpy()),
        },
    }


def _torch_forward(bn, x_nhwc):
    with torch.no_grad():
        y = bn(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    return y.numpy().transpose(0, 2, 3, 1)


def _inputs(shape, steps, seed):
    r = np.random.default_rng(seed)
    c = shape[-1]
    return [
        (r.standard_normal(shape) * (0.5 + r.random(c)) + r.standard_normal(c)).astype(np.float32)
        for _ in range(steps)
    ]


# (N, H, W, C): CIFAR's 8x8 stage at batch 4, a 1x1 map at batch 2 (n = 2: factor 2), odd sizes,
# a detection-head-like 2x2 map.
SHAPES = [(4, 8, 8, 16), (2, 1, 1, 8), (3, 5, 7, 4), (16, 2, 2, 3)]


@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
def test_train_mode_matches_torch_over_steps(shape):
    """Three train steps: outputs and running mean/var after each equal torch's; then eval mode."""
    tbn = _torch_bn(shape[-1]).train()
    v = _flax_vars(tbn)
    bn = BatchNorm(use_running_average=False)
    apply = jax.jit(lambda v, x: bn.apply(v, x, mutable=['batch_stats']))
    for x in _inputs(shape, 3, seed=sum(shape)):
        want = _torch_forward(tbn, x)
        y, new = apply(v, x)
        # Flax's one-pass variance E[x^2] - E[x]^2 (use_fast_variance) costs ~1e-4 at n = 2
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=2e-4)
        v = {'params': v['params'], 'batch_stats': new['batch_stats']}
        np.testing.assert_allclose(v['batch_stats']['mean'], tbn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v['batch_stats']['var'], tbn.running_var.numpy(), rtol=1e-5, atol=1e-6)
    x = _inputs(shape, 1, seed=99)[0]
    want = _torch_forward(tbn.eval(), x)
    np.testing.assert_allclose(BatchNorm(use_running_average=True).apply(v, x), want, rtol=1e-4, atol=1e-5)


def test_the_update_is_the_unbiased_variance_exactly():
    """var_run = m var_run + (1 - m) var_batch n/(n-1), in float64 to the last bit of the formula."""
    with jax.enable_x64(True):
        x = np.random.default_rng(0).standard_normal((3, 4, 5, 6))
        bn = BatchNorm(use_running_average=False, use_fast_variance=False, dtype=jnp.float64)
        v = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), bn.init(jax.random.key(0), x))
        _, new = bn.apply(v, x, mutable=['batch_stats'])
        n = 3 * 4 * 5
        want = MOMENTUM + (1 - MOMENTUM) * x.reshape(n, 6).var(axis=0, ddof=1)
        np.testing.assert_allclose(new['batch_stats']['var'], want, rtol=1e-13)


def test_biased_knob_keeps_flax_rule_bit_for_bit():
    x = jnp.asarray(_inputs((4, 3, 3, 5), 1, seed=1)[0])
    flax_bn = nn.BatchNorm(use_running_average=False, momentum=MOMENTUM, epsilon=EPS)
    v = flax_bn.init(jax.random.key(0), x)
    want = flax_bn.apply(v, x, mutable=['batch_stats'])
    for ours in (BatchNorm(unbiased_running_var=False), bind_norm('batch_biased', True)()):
        got = ours.apply(
            v,
            x,
            use_running_average=None if ours.use_running_average is not None else False,
            mutable=['batch_stats'],
        )
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(a, b)
    # and the default differs from it by the factor n/(n-1) = 36/35 on the update
    _, new = BatchNorm(use_running_average=False).apply(v, x, mutable=['batch_stats'])
    upd = (new['batch_stats']['var'] - MOMENTUM) / (want[1]['batch_stats']['var'] - MOMENTUM)
    np.testing.assert_allclose(upd, 36 / 35, rtol=1e-5)
    assert resolve_norm('batch_biased').keywords == {'unbiased_running_var': False}
    assert isinstance(BatchNorm(), nn.BatchNorm)  # summaries count it as a norm layer


def test_bfloat16_keeps_float32_statistics_and_the_unbiased_rule():
    x = _inputs((4, 3, 3, 5), 1, seed=2)[0]
    tbn = _torch_bn(5).train()
    v = _flax_vars(tbn)
    want = _torch_forward(tbn, x)
    y, new = BatchNorm(use_running_average=False, dtype=jnp.bfloat16).apply(v, x, mutable=['batch_stats'])
    assert y.dtype == jnp.bfloat16
    assert new['batch_stats']['var'].dtype == new['batch_stats']['mean'].dtype == jnp.float32
    np.testing.assert_allclose(new['batch_stats']['var'], tbn.running_var.numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=2e-2, atol=2e-2)


def test_mask_counts_only_the_selected_values():
    """With a mask, n is the count of selected positions: the same as torch on those examples only."""
    x = _inputs((6, 4, 4, 3), 1, seed=3)[0]
    keep = np.array([1, 0, 1, 1, 0, 1], bool)
    tbn = _torch_bn(3).train()
    v = _flax_vars(tbn)
    _torch_forward(tbn, x[keep])
    mask = np.broadcast_to(keep[:, None, None, None], x.shape)
    _, new = BatchNorm(use_running_average=False).apply(v, x, mask=mask, mutable=['batch_stats'])
    np.testing.assert_allclose(new['batch_stats']['mean'], tbn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new['batch_stats']['var'], tbn.running_var.numpy(), rtol=1e-5, atol=1e-6)


class _ConvBN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return BatchNorm(use_running_average=not train)(x)


def _torch_ghost(tbn, x, g):
    """Ghost BN in torch: every group of g examples through its own copy of the layer (same starting
    statistics); running statistics = the mean over groups (ghost_bn_forward's rule)."""
    ys, means, vars_ = [], [], []
    for grp in x.reshape(-1, g, *x.shape[1:]):
        b = copy.deepcopy(tbn).train()
        ys.append(_torch_forward(b, grp))
        means.append(b.running_mean.numpy())
        vars_.append(b.running_var.numpy())
    return np.concatenate(ys), np.mean(means, axis=0), np.mean(vars_, axis=0)


def test_ghost_bn_groups_match_torch_per_group():
    """Through ``ghost_bn_forward`` (vmap over groups of 4 on a 1-device mesh): each group's output and
    unbiased update (n = 4 x H x W) equal torch's BatchNorm2d run on that group."""
    from research.train import mesh as mesh_lib
    from research.train.state import ghost_bn_forward

    x = _inputs((16, 3, 3, 5), 1, seed=4)[0]
    tbn = _torch_bn(5)
    v = {
        'params': {'BatchNorm_0': _flax_vars(tbn)['params']},
        'batch_stats': {'BatchNorm_0': _flax_vars(tbn)['batch_stats']},
    }
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    y, new_vars = jax.jit(ghost_bn_forward(_ConvBN().apply, mesh, 4))(v, x)
    stats = new_vars['batch_stats']
    want_y, want_mean, want_var = _torch_ghost(tbn, x, 4)
    np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats['BatchNorm_0']['mean'], want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats['BatchNorm_0']['var'], want_var, rtol=1e-5, atol=1e-6)


_EIGHT = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, sys.argv[1])
import jax, jax.numpy as jnp, numpy as np
import flax.linen as nn
from research.layers.common import BatchNorm
from research.train import mesh as mesh_lib
from research.train.state import ghost_bn_forward
assert jax.device_count() == 8
P = jax.sharding.PartitionSpec
v = {k: {"BatchNorm_0": {n: jnp.asarray(a) for n, a in d.items()}}
     for k, d in json.loads(sys.argv[2]).items()}
x = np.asarray(json.loads(sys.argv[3]), np.float32)

class Net(nn.Module):
    axis_name: str | None = None
    @nn.compact
    def __call__(self, x, train=False):
        return BatchNorm(use_running_average=not train, axis_name=self.axis_name)(x)

m = mesh_lib.make_mesh(jax.devices())
xs = jax.device_put(x, mesh_lib.batch_sharding(m))
out = {}
# (a) the global batch: jit over 8 devices, batch sharded, statistics over all 16 examples
y, new = jax.jit(lambda v, x: Net().apply(v, x, train=True, mutable=["batch_stats"]))(v, xs)
out["global"] = [np.asarray(y).tolist(), np.asarray(new["batch_stats"]["BatchNorm_0"]["var"]).tolist()]
# (b) ghost BN, groups of 2 (one per device's half batch)
y, new = jax.jit(ghost_bn_forward(Net().apply, m, 2))(v, xs)
out["ghost"] = [np.asarray(y).tolist(), np.asarray(new["batch_stats"]["BatchNorm_0"]["var"]).tolist()]
# (c) shard_map with axis_name: per-device values, cross-device statistics (n = 8 x the local count)
def local(v, x):
    y, new = Net(axis_name="data").apply(v, x, train=True, mutable=["batch_stats"])
    return y, new["batch_stats"]
y, st = jax.jit(jax.shard_map(local, mesh=m, in_specs=(P(), P("data")), out_specs=(P("data"), P())))(v, xs)
out["axis_name"] = [np.asarray(y).tolist(), np.asarray(st["BatchNorm_0"]["var"]).tolist()]
print(json.dumps(out))
"""


def test_global_batch_ghost_groups_and_axis_name_on_8_devices(tmp_path):
    """8 simulated CPU devices: the jit's global batch, ghost groups of 2 and a shard_map with
    ``axis_name`` each match torch (on the whole batch, per group, on the whole batch)."""
    x = _inputs((16, 3, 2, 4), 1, seed=5)[0]
    tbn = _torch_bn(4)
    v = jax.tree.map(lambda a: np.asarray(a).tolist(), _flax_vars(tbn))
    script = tmp_path / 'eight.py'
    script.write_text(_EIGHT)
    r = subprocess.run(
        [sys.executable, str(script), str(REPO), json.dumps(v), json.dumps(x.tolist())],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    whole = copy.deepcopy(tbn).train()
    want_y = _torch_forward(whole, x)
    ghost_y, _, ghost_var = _torch_ghost(tbn, x, 2)
    for key, (wy, wvar) in {
        'global': (want_y, whole.running_var.numpy()),
        'ghost': (ghost_y, ghost_var),
        'axis_name': (want_y, whole.running_var.numpy()),
    }.items():
        y, var = (np.asarray(a, np.float32) for a in out[key])
        np.testing.assert_allclose(y, wy, rtol=1e-4, atol=1e-5, err_msg=key)
        np.testing.assert_allclose(var, wvar, rtol=1e-5, atol=1e-6, err_msg=key)
