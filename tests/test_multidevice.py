"""Multi-device, multi-host and mixed-precision training: ghost BatchNorm, bfloat16, FSDP, 2 processes.

Multi-device checks run in a subprocess with 8 simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``, as ``test_train.py``'s sharded test);
the multi-host check runs two ``jax.distributed`` processes on localhost (gloo CPU collectives).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import data as data_lib
from research.layers.common import BatchNorm
from research.tasks import trainer as Trainer
from research.train import distributed
from research.train import mesh as mesh_lib
from research.train.reporting import read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import digits_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

#: |loss(bfloat16) - loss(float32)| on one digits batch from the same float32 parameters (measured
#: ~1e-3 for lenet5_modern at initialisation; bf16 has an 8-bit mantissa, relative step 2^-8 = 0.4%).
BF16_LOSS_ATOL = 2e-2
#: ||update(bf16) - update(f32)|| / ||update(f32)|| of the first SGD step (measured 0.065).
BF16_UPDATE_RTOL = 0.15
#: Sharded (8 devices, 2 processes, FSDP) vs single-device results: only the order of float32
#: reductions differs.
SHARDED_ATOL = 1e-5


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('tfds'))


def _run(args, *, env=None, timeout=300):
    r = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


# -- 8 simulated devices: ghost BN, FSDP --------------------------------------------------------
_EIGHT = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"  # 8 CPU devices, also on a GPU/TPU host
repo, data_dir, out = sys.argv[1:4]
sys.path.insert(0, repo); sys.path.insert(0, os.path.join(repo, "tests"))
import jax, jax.numpy as jnp, numpy as np, optax
import flax.linen as nn
from research.layers.common import BatchNorm
from research.train import mesh as mesh_lib
from research.tasks import trainer as Trainer
from research.train.state import create_train_state, ghost_bn_forward, train_step
from research import data as data_lib
from test_train import digits_config
assert jax.device_count() == 8
res, arrays = {}, {}

class BNOnly(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return BatchNorm(use_running_average=not train)(x)

class Tiny(nn.Module):  # conv -> BN -> relu -> pool -> dense
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.relu(BatchNorm(use_running_average=not train)(x))
        return nn.Dense(10)(x.mean(axis=(1, 2)))

def mesh_of(n):
    return mesh_lib.make_mesh(jax.devices()[:n])

# (a) ghost BN forward and running statistics, G = 2 and G = 4 (= the per-device batch on 8 devices)
r = np.random.RandomState(0)
x = r.randn(32, 5) * 3 + 1
x[1::2] = x[0::2] + np.sign(r.randn(16, 5)) * (0.5 + np.abs(r.randn(16, 5)))  # no near-constant group
x = x.astype(np.float32)
arrays["x"] = x
bn = BNOnly()
v = bn.init(jax.random.key(0), x[:1])
rng = jax.random.key_data(jax.random.key(1))
for n in (1, 8):
    m = mesh_of(n)
    for g in (2, 4):
        fwd = ghost_bn_forward(bn.apply, m, g)
        y, new = jax.jit(lambda v, x: fwd(v, x, rngs={"dropout": rng}))(v, jax.device_put(x, mesh_lib.batch_sharding(m)))
        st = new["batch_stats"]
        arrays[f"y_{n}_{g}"] = np.asarray(y)
        arrays[f"mean_{n}_{g}"] = np.asarray(st["BatchNorm_0"]["mean"])
        arrays[f"var_{n}_{g}"] = np.asarray(st["BatchNorm_0"]["var"])

# (b) train steps with ghost BN: 8 devices == 1 device; on 1 device G = batch == global BN
model = Tiny()
tx = optax.sgd(0.1, momentum=0.9)
r = np.random.RandomState(1)
batches = [dict(image=r.randn(32, 8, 8, 1).astype(np.float32), label=r.randint(0, 10, 32).astype(np.int32))
           for _ in range(3)]
def run(n, g):
    m = mesh_of(n)
    state = create_train_state(model, tx, jax.random.key_data(jax.random.key(0)), jnp.zeros((1, 8, 8, 1)))
    state = jax.device_put(state, mesh_lib.replicated(m))
    fwd = ghost_bn_forward(model.apply, m, g) if g else None
    step = jax.jit(lambda s, b: train_step(s, b, forward=fwd))
    losses = []
    for b in batches:
        state, met = step(state, jax.device_put(b, mesh_lib.batch_sharding(m)))
        losses.append(float(met["loss"]))
    return losses, [np.asarray(t) for t in jax.tree.leaves((state.params, state.batch_stats))]
l8, p8 = run(8, 4)
l1, p1 = run(1, 4)
lg, pg = run(1, 0)
lb, pb = run(1, 32)
res["ghost_train"] = dict(
    loss_diff=max(abs(a - b) for a, b in zip(l8, l1)),
    param_diff=max(float(np.max(np.abs(a - b))) for a, b in zip(p8, p1)),
    global_vs_ghost=max(float(np.max(np.abs(a - b))) for a, b in zip(pg, p1)),
    whole_batch_vs_global=max(float(np.max(np.abs(a - b))) for a, b in zip(pg, pb)),
)

# (c) the Trainer resolves -1 to the per-device batch and rejects a group not dividing it
import research.train.mesh as mm
orig = mm.make_mesh
c = digits_config(data_dir, steps=3)
c.train.bn_group_size = -1
res["per_device_group"] = Trainer(c, show_progress=False).bn_group_size
c.train.bn_group_size = 3
try:
    Trainer(c, show_progress=False)
    res["bad_group"] = ""
except ValueError as e:
    res["bad_group"] = str(e)

# (d) FSDP: model_parallel=4 on 8 devices (mesh 2x4) == replicated on 1 device
def fsdp(n, mp):
    mm.make_mesh = lambda devices=None: orig(jax.devices()[:n])
    c = digits_config(data_dir, steps=3)
    c.train.model_parallel = mp
    tr = Trainer(c, show_progress=False)
    state = tr.init_state()
    specs = {k: str(v.sharding.spec) for k, v in state.params["fc1"].items()}
    it = data_lib.make_train_iterator(c.data, seed=c.seed, global_batch_size=tr.batch_size)
    losses = []
    for _ in range(3):
        state, met = tr.train_step(state, next(it))
        losses.append(float(met["loss"]))
    ev, _ = tr.evaluate(state)
    leaves = [np.asarray(t) for t in jax.tree.leaves((state.params, state.opt_state))]
    return losses, leaves, specs, ev, dict(tr.mesh.shape)
lf, pf, specs, evf, mshape = fsdp(8, 4)
lr_, pr, _, evr, _ = fsdp(1, 1)
mm.make_mesh = orig
res["fsdp"] = dict(
    mesh=mshape, fc1_specs=specs,
    loss_diff=max(abs(a - b) for a, b in zip(lf, lr_)),
    param_diff=max(float(np.max(np.abs(a - b))) for a, b in zip(pf, pr)),
    eval=[evf, evr],
)
np.savez(os.path.join(out, "arrays.npz"), **arrays)
print(json.dumps(res))
"""


@pytest.fixture(scope='module')
def eight(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('eight')
    script = out / 'run.py'
    script.write_text(_EIGHT)
    r = _run([str(script), str(REPO), data_dir, str(out)])
    return json.loads(r.stdout.strip().splitlines()[-1]), np.load(out / 'arrays.npz')


def _ghost_bn_numpy(x, g, momentum=0.9, eps=1e-5):
    """Per-group BatchNorm by hand, in float32 with Flax's variance formula E[x^2] - E[x]^2; the running
    variance takes each group's unbiased variance (factor g / (g - 1), torch's rule)."""
    groups = x.reshape(-1, g, x.shape[-1]).astype(np.float32)
    mean = groups.mean(axis=1, keepdims=True)
    var = np.maximum((groups**2).mean(axis=1, keepdims=True) - mean**2, 0)
    y = ((groups - mean) / np.sqrt(var + eps)).reshape(x.shape)
    ra_mean = momentum * 0.0 + (1 - momentum) * mean.mean(axis=(0, 1))
    ra_var = momentum * 1.0 + (1 - momentum) * var.mean(axis=(0, 1)) * g / (g - 1)
    return y, ra_mean, ra_var


def test_ghost_bn_equals_per_group_numpy_on_8_devices(eight):
    """Ghost BN output = each group normalised by its own statistics; running stats = mean over groups.

    On 8 devices with G=4 (the per-device batch, each device's own BN) and G=2 (2 groups per device),
    and identical on 1 device."""
    _, a = eight
    x = a['x']
    for g in (2, 4):
        y, ra_mean, ra_var = _ghost_bn_numpy(x, g)
        for n in (1, 8):
            np.testing.assert_allclose(a[f'y_{n}_{g}'], y, atol=1e-4, err_msg=f'{n} devices, G={g}')
            np.testing.assert_allclose(a[f'mean_{n}_{g}'], ra_mean, atol=1e-6)
            np.testing.assert_allclose(a[f'var_{n}_{g}'], ra_var, atol=1e-5)
    # the ghost statistics really differ from the global batch's
    assert np.max(np.abs(a['y_8_4'] - (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5))) > 1e-2


def test_ghost_bn_train_steps_8_devices_equal_1_device(eight):
    res, _ = eight
    g = res['ghost_train']
    print(f'ghost BN, 8 devices vs 1: {g}')
    assert g['loss_diff'] < SHARDED_ATOL and g['param_diff'] < SHARDED_ATOL, g
    assert g['global_vs_ghost'] > 1e-4, g  # the knob changes the training
    assert g['whole_batch_vs_global'] < SHARDED_ATOL, g  # G = whole batch on 1 device is global BN


def test_bn_group_size_resolution(eight):
    res, _ = eight
    assert res['per_device_group'] == 4  # -1 = 32 / 8 devices
    assert 'bn_group_size=3' in res['bad_group'] and 'per-device batch 4' in res['bad_group']


def test_fsdp_sharded_step_equals_replicated(eight):
    """model_parallel=4 on 8 devices: fc1's kernel (400x120) is sharded on its 400-row axis; the
    losses, parameters, optimizer state and evaluation equal the replicated 1-device run."""
    res, _ = eight
    f = res['fsdp']
    print(f'FSDP 2x4 vs 1 device: loss {f["loss_diff"]:.2e} params {f["param_diff"]:.2e}')
    assert f['mesh'] == {'data': 2, 'model': 4}
    P = jax.sharding.PartitionSpec
    assert f['fc1_specs']['kernel'] == str(P('model')) and f['fc1_specs']['bias'] == str(P())
    assert f['loss_diff'] < SHARDED_ATOL and f['param_diff'] < SHARDED_ATOL, f
    (a, b) = f['eval']
    assert a['count'] == b['count'] == 360 and abs(a['loss'] - b['loss']) < SHARDED_ATOL


def test_param_spec_rules():
    assert mesh_lib.param_spec((400, 120), 4) == jax.sharding.PartitionSpec('model')
    assert mesh_lib.param_spec((5, 5, 16, 256), 4) == jax.sharding.PartitionSpec(None, None, None, 'model')
    assert mesh_lib.param_spec((120,), 4) == jax.sharding.PartitionSpec()  # small: replicated
    assert mesh_lib.param_spec((4099, 3), 2) == jax.sharding.PartitionSpec()  # no divisible dim
    assert mesh_lib.param_spec((400, 120), 1) == jax.sharding.PartitionSpec()


# -- mixed precision ----------------------------------------------------------------------------
def test_bfloat16_matches_float32_and_keeps_float32_state(data_dir):
    """precision='bfloat16': same float32 init, loss within BF16_LOSS_ATOL of float32, float32 params,
    optimizer state and logits; one train step runs and stays finite."""
    out = {}
    for precision in ('float32', 'bfloat16'):
        c = digits_config(data_dir, steps=2)
        c.train.precision = precision
        tr = Trainer(c, show_progress=False)
        assert tr.model.dtype == (jnp.bfloat16 if precision == 'bfloat16' else jnp.float32)
        state = tr.init_state()
        it = data_lib.make_train_iterator(c.data, seed=c.seed, global_batch_size=tr.batch_size)
        batch = mesh_lib.to_global(next(it), mesh_lib.batch_sharding(tr.mesh))
        logits = tr.model.apply(state.variables(), batch['image'], train=False)
        assert logits.dtype == jnp.float32
        params0 = jax.device_get(state.params)
        state, metrics = tr.train_step(state, batch)
        out[precision] = (params0, float(metrics['loss']), state)
    (p32, l32, s32), (p16, l16, s16) = out['float32'], out['bfloat16']
    jax.tree.map(np.testing.assert_array_equal, p32, p16)  # same float32 initialisation
    print(f'bf16 vs f32 loss: {l16:.6f} vs {l32:.6f} (|diff| {abs(l16 - l32):.2e})')
    assert abs(l16 - l32) < BF16_LOSS_ATOL
    assert np.isfinite(l16)
    for leaf in jax.tree.leaves((s16.params, s16.opt_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    # the update itself is close to float32's (relative to the update size)
    d32 = jax.tree.map(lambda a, b: np.asarray(b) - a, p32, jax.device_get(s32.params))
    d16 = jax.tree.map(lambda a, b: np.asarray(b) - a, p16, jax.device_get(s16.params))
    num = sum(float(np.sum((a - b) ** 2)) for a, b in zip(jax.tree.leaves(d32), jax.tree.leaves(d16)))
    den = sum(float(np.sum(a**2)) for a in jax.tree.leaves(d32))
    print(f'bf16 vs f32 first update: relative L2 difference {np.sqrt(num / den):.3f}')
    assert np.sqrt(num / den) < BF16_UPDATE_RTOL


def test_bfloat16_batchnorm_statistics_stay_float32():
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return BatchNorm(use_running_average=not train, dtype=jnp.bfloat16)(x)

    x = jax.random.normal(jax.random.key(0), (16, 3)) * 5 + 2
    v = Net().init(jax.random.key(1), x)
    y, new = Net().apply(v, x, train=True, mutable=['batch_stats'])
    assert y.dtype == jnp.bfloat16
    stats = new['batch_stats']['BatchNorm_0']
    assert stats['mean'].dtype == stats['var'].dtype == jnp.float32
    assert v['params']['BatchNorm_0']['scale'].dtype == jnp.float32
    np.testing.assert_allclose(stats['mean'], 0.1 * np.asarray(x).mean(0), rtol=1e-5)


def test_precision_knob_errors(data_dir):
    c = digits_config(data_dir, steps=1)
    c.train.precision = 'float16'
    with pytest.raises(ValueError, match="unknown train.precision 'float16'"):
        Trainer(c, show_progress=False)
    c = digits_config(data_dir, steps=1, dtype='float32')
    c.train.precision = 'bfloat16'
    with pytest.raises(ValueError, match='set only one'):
        Trainer(c, show_progress=False)


# -- multi-host ---------------------------------------------------------------------------------
_HOST = r"""
import os, sys, json, time
t0 = time.perf_counter()
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=" + os.environ["NDEV"]
os.environ["JAX_PLATFORMS"] = "cpu"  # CPU devices and gloo collectives, also on a GPU/TPU host
repo, data_dir, workdir, resume = sys.argv[1:5]
sys.path.insert(0, repo); sys.path.insert(0, os.path.join(repo, "tests"))
from research.train import distributed
multi = distributed.initialize()  # from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
import jax, numpy as np
jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))  # the resume skips compiling
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
from research.tasks import train_and_evaluate
from test_train import digits_config
def cfg():
    c = digits_config(data_dir, steps=STEPS)
    c.train.eval_every = ""  # once, at the end
    c.train.checkpoint_every = f"{STEPS // 2} steps"
    c.train.async_checkpoints = True
    return c
t1 = time.perf_counter()
part = train_and_evaluate(cfg(), workdir, stop_after_steps=STEPS // 2, show_progress=False) if resume == "1" else None
t2 = time.perf_counter()
full = train_and_evaluate(cfg(), workdir, show_progress=False)  # resumes from the checkpoint on every process
t3 = time.perf_counter()
print(json.dumps(dict(multi=multi, processes=jax.process_count(), devices=jax.device_count(),
                      index=jax.process_index(), final=full["final"]["test"], part_step=part and part["step"],
                      seconds=[round(t1 - t0, 1), round(t2 - t1, 1), round(t3 - t2, 1)])))
""".replace('STEPS', '4')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(data_dir, tmp_path):
    """2 jax.distributed processes x 2 CPU devices (gloo) train 4 steps of lenet5 on digits, stopping at
    step 2 and resuming from the checkpoint (written once, restored by both), and match a 1-device run
    of the same 4 steps: final params within SHARDED_ATOL, same evaluation with every test example
    counted once."""
    script = tmp_path / 'host.py'
    script.write_text(_HOST)
    env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_')}
    env['TFDS_DATA_DIR'] = data_dir
    data_lib.get_dataset_info(digits_config(data_dir).data)  # build the dataset once, before both hosts
    port = _free_port()
    procs = []
    for i in range(2):
        e = dict(env, NDEV='2', JAX_COORDINATOR_ADDRESS=f'localhost:{port}', JAX_NUM_PROCESSES='2')
        e['JAX_PROCESS_ID'] = str(i)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(REPO), data_dir, str(tmp_path / 'multi'), '1'],
                cwd=REPO,
                env=e,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    single = _run([str(script), str(REPO), data_dir, str(tmp_path / 'single'), '0'], env=dict(env, NDEV='1'))
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-4000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    ref = json.loads(single.stdout.strip().splitlines()[-1])
    assert not ref['multi'] and ref['processes'] == 1
    assert [o['index'] for o in outs] == [0, 1]
    print(
        'seconds (start, part, resumed) per process:', [o['seconds'] for o in outs], 'single:', ref['seconds']
    )
    assert all(o['multi'] and o['processes'] == 2 and o['devices'] == 4 and o['part_step'] == 2 for o in outs)
    for o in outs:  # every process sees the same global evaluation, each example counted once
        assert o['final']['count'] == ref['final']['count'] == 360
        assert abs(o['final']['loss'] - ref['final']['loss']) < SHARDED_ATOL
        assert abs(o['final']['top1'] - ref['final']['top1']) < 1e-9
    from research.train.checkpoint import Checkpointer

    def params(wd):
        ck = Checkpointer(wd)
        st = ck.restore_raw()
        steps = ck.all_steps()
        ck.close()
        return st, steps

    (pm, sm), (ps, ss) = params(tmp_path / 'multi'), params(tmp_path / 'single')
    assert sorted(sm) == sorted(ss) == [2, 4]
    diff = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(
            jax.tree.leaves((pm['params'], pm['opt_state'])), jax.tree.leaves((ps['params'], ps['opt_state']))
        )
    )
    print(f'2 processes x 2 devices vs 1 device: max |param diff| {diff:.2e}')
    assert diff < SHARDED_ATOL
    assert [r['step'] for r in read_metrics(tmp_path / 'multi', 'test')] == [4]  # once (process 0)


_CLUSTER_VARS = (
    'JAX_COORDINATOR_ADDRESS',
    'JAX_NUM_PROCESSES',
    'JAX_PROCESS_ID',
    'JAX_COORDINATOR_PORT',
    'SLURM_JOB_ID',
    'SLURM_STEP_NODELIST',
    'SLURM_NTASKS',
    'SLURM_PROCID',
    'SLURM_LOCALID',
    'OMPI_MCA_orte_hnp_uri',
    'OMPI_COMM_WORLD_SIZE',
    'OMPI_COMM_WORLD_RANK',
    'OMPI_COMM_WORLD_LOCAL_RANK',
    'KUBERNETES_SERVICE_HOST',
    'JOB_COMPLETION_INDEX',
    'TPU_WORKER_HOSTNAMES',
    'TPU_WORKER_ID',
    'TPU_PROCESS_ADDRESSES',
    'MEGASCALE_NUM_SLICES',
    'PMI_SIZE',
    'PMI_RANK',
)


@pytest.fixture
def no_cluster(monkeypatch):
    """No cluster variables, and ``jax.distributed.initialize`` recorded instead of run."""
    for k in _CLUSTER_VARS:
        monkeypatch.delenv(k, raising=False)
    calls = []
    monkeypatch.setattr(jax.distributed, 'initialize', lambda *a, **k: calls.append((a, k)))
    return calls


def test_distributed_initialize_is_a_no_op_without_flags_or_env(no_cluster, monkeypatch):
    assert distributed.detect_cluster() is None
    assert distributed.initialize() is False
    assert distributed.initialize(num_processes=1) is False
    with pytest.raises(ValueError, match='num_processes must be >= 1'):
        distributed.initialize(num_processes=0)
    monkeypatch.setenv('SLURM_NTASKS', '4')  # sbatch's variables without an srun step: not a JAX cluster
    assert distributed.initialize() is False
    assert no_cluster == []


def _slurm(monkeypatch, ntasks):
    for k, v in dict(
        SLURM_JOB_ID='4242',
        SLURM_STEP_NODELIST='gpu[017-018]',
        SLURM_NTASKS=str(ntasks),
        SLURM_PROCID='1',
        SLURM_LOCALID='1',
    ).items():
        monkeypatch.setenv(k, v)


def test_slurm_and_open_mpi_jobs_start_jax_distributed(no_cluster, monkeypatch):
    """JAX's own detection (jax._src.clusters) finds an srun step and an mpirun job; this module calls
    jax.distributed.initialize() without arguments, which JAX fills in from the same variables."""
    from jax._src.clusters import SlurmCluster

    _slurm(monkeypatch, 1)  # a one-task step is single-process
    assert distributed.detect_cluster() is None and distributed.initialize() is False
    _slurm(monkeypatch, 8)
    assert distributed.detect_cluster() == ('slurm', 8)
    assert distributed.initialize() is True and no_cluster == [((), {})]
    assert (
        SlurmCluster.get_coordinator_address(None, None) == f'gpu017:{4242 % 4096 + 61440}'
    )  # what JAX uses
    for k in ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID', 'SLURM_LOCALID'):
        monkeypatch.delenv(k)
    for k, v in dict(
        OMPI_MCA_orte_hnp_uri='1531576320.0;tcp://10.0.0.1:34911',
        OMPI_COMM_WORLD_SIZE='4',
        OMPI_COMM_WORLD_RANK='2',
        OMPI_COMM_WORLD_LOCAL_RANK='0',
    ).items():
        monkeypatch.setenv(k, v)
    assert distributed.detect_cluster() == ('ompi', 4)
    # explicit flags win over the cluster, and are passed through
    no_cluster.clear()
    assert distributed.initialize('h:1234', 2, 0) is True
    assert no_cluster == [((), dict(coordinator_address='h:1234', num_processes=2, process_id=0))]


def test_tpu_pod_and_kubernetes_jobs_are_detected(no_cluster, monkeypatch):
    """GKE TPU slices (TPU_WORKER_HOSTNAMES on a TPU VM) and Kubernetes indexed Jobs go through JAX's
    classes too; a Kubernetes pod that is not an indexed Job (a notebook) stays single-process without
    asking the Kubernetes API."""
    from jax._src.clusters import K8sCluster, cloud_tpu_cluster

    monkeypatch.setattr(cloud_tpu_cluster, 'running_in_cloud_tpu_vm', True)
    monkeypatch.setattr(cloud_tpu_cluster.GceTpuCluster, 'is_env_present', classmethod(lambda cls: False))
    monkeypatch.setattr(
        cloud_tpu_cluster, 'get_metadata', lambda key: pytest.fail(f'metadata server asked: {key}')
    )
    monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 't1k-w-0,t1k-w-1,t1k-w-2,t1k-w-3')
    monkeypatch.setenv('TPU_WORKER_ID', '3')
    monkeypatch.setenv('MEGASCALE_NUM_SLICES', '1')  # GKE sets it; unset, JAX asks the metadata server
    assert distributed.detect_cluster() == ('gketpu', 4)
    monkeypatch.setenv('MEGASCALE_NUM_SLICES', '2')  # multislice: 2 slices x 4 hosts
    assert distributed.detect_cluster() == ('gketpu', 8)
    assert distributed.initialize() is True and no_cluster == [((), {})]
    for k in ('TPU_WORKER_HOSTNAMES', 'TPU_WORKER_ID', 'MEGASCALE_NUM_SLICES'):
        monkeypatch.delenv(k)

    asked = []
    monkeypatch.setattr(K8sCluster, 'is_env_present', classmethod(lambda cls: asked.append(1) or True))
    monkeypatch.setattr(K8sCluster, 'get_process_count', classmethod(lambda cls: 4))  # the Job's parallelism
    monkeypatch.setenv('KUBERNETES_SERVICE_HOST', '10.0.0.1')
    assert distributed.detect_cluster() is None and asked == []  # not an indexed Job
    monkeypatch.setenv('JOB_COMPLETION_INDEX', '0')
    assert distributed.detect_cluster() == ('K8sCluster', 4) and asked == [1]


def test_mpich_launch_needs_mpi4py(no_cluster, monkeypatch):
    import importlib.util

    monkeypatch.setenv('PMI_SIZE', '1')
    assert distributed.detect_cluster() is None
    monkeypatch.setenv('PMI_SIZE', '4')
    monkeypatch.setenv('PMI_RANK', '1')
    assert distributed.detect_cluster() == ('mpich', 4)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda n, *a: None if n == 'mpi4py' else real(n, *a))
    with pytest.raises(RuntimeError, match='PMI_SIZE=4 processes.*pip install mpi4py'):
        distributed.initialize()
    monkeypatch.setattr(importlib.util, 'find_spec', lambda n, *a: object() if n == 'mpi4py' else real(n, *a))
    assert distributed.initialize() is True
    assert no_cluster == [((), dict(cluster_detection_method='mpi4py'))]


def test_meshes_are_auto_typed_and_process_contiguous():
    from types import SimpleNamespace

    mesh = mesh_lib.make_mesh()
    assert mesh.axis_names == ('data',) and mesh.axis_types == (jax.sharding.AxisType.Auto,)
    assert list(mesh.devices.flat) == jax.devices()  # one CPU host: JAX's own order
    # 2 processes whose devices a topology-aware order interleaves: grouped by process, order kept
    devs = [
        SimpleNamespace(id=i, process_index=p) for i, p in [(0, 0), (4, 1), (1, 0), (5, 1), (2, 0), (6, 1)]
    ]
    assert [d.id for d in mesh_lib.process_contiguous(devs)] == [0, 1, 2, 4, 5, 6]


def test_cpu_devices_flag_runs_data_parallel(data_dir, tmp_path):
    """``launch.py --cpu_devices=2`` splits the CPU into 2 devices (config.json records them) and trains to
    the same test loss as the 1-device run (global-batch BN: only float32 reduction order differs)."""
    losses = {}
    for n in (0, 2):
        wd = tmp_path / f'cpu{n}'
        r = _run(
            [
                'launch.py',
                '--config=experiments/classification/lenet5_digits.py',
                f'--workdir={wd}',
                f'--cpu_devices={n}',
                '--config.train.duration=12 steps',
                f'--config.data.data_dir={data_dir}',
                '--config.train.eval_every=12 steps',
                '--noprogress',
            ]
        )
        cfg = json.loads((wd / 'config.json').read_text())
        assert cfg['_resolved']['devices'] == max(n, 1), r.stdout[-1000:]
        losses[n] = [m['loss'] for m in read_metrics(wd) if m.get('split') == 'test'][-1]
    assert abs(losses[0] - losses[2]) < 1e-4, losses


def test_cpu_devices_errors():
    with pytest.raises(ValueError, match='got -3'):
        distributed.set_cpu_devices(-3)
    assert distributed.set_cpu_devices(0) == 0
    jax.devices()  # the backend exists now: a different count can no longer be set
    with pytest.raises(RuntimeError, match='already initialised'):
        distributed.set_cpu_devices(jax.local_device_count() + 1)
    assert distributed.set_cpu_devices(jax.local_device_count()) == jax.local_device_count()
