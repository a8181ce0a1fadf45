"""The training loop end to end: config validation, schedules, resume equivalence, NaN, eval masking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import data as data_lib
from research.config import base_config, parse_arg, parse_duration, validate_config, with_model
from research.kernels import onednn
from research.tasks import train_and_evaluate
from research.tasks import trainer as make_trainer
from research.train import CheckpointError, NonFiniteLossError, make_optimizer, make_schedule
from research.train.checkpoint import Checkpointer
from research.train.reporting import read_metrics

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('tfds'))


def digits_config(data_dir, *, model='lenet5_modern', steps=20, **model_kwargs):
    c = base_config()
    with_model(c, model, **model_kwargs)
    c.data.name = 'digits'
    c.data.data_dir = data_dir
    c.data.image_size = 16 if model != 'lenet5_modern' else 32
    c.optimizer.name = 'sgd'
    c.optimizer.lr = 0.05
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = 'cosine'
    c.train.duration = f'{steps} steps'
    c.train.batch_size = 32
    c.train.eval_batch_size = 64  # 360 test images: the last batch is padded
    c.train.log_every_steps = 5
    c.train.eval_every = '10 steps'
    c.train.checkpoint_every = '6 steps'
    c.train.async_checkpoints = False
    return c


# -- config -------------------------------------------------------------------------------------
def test_parse_duration():
    assert parse_duration('3 epochs', 100) == 300
    assert parse_duration('2.5ep', 10) == 25
    assert parse_duration('64000 steps', 390) == 64000
    assert parse_duration(17, 5) == 17
    with pytest.raises(ValueError, match="'three epochs'"):
        parse_duration('three epochs', 10)


def test_parse_arg_rejects_unknown_and_converts():
    assert parse_arg('depth=56,quick', {'depth': 20, 'quick': False}) == {'depth': 56, 'quick': True}
    with pytest.raises(ValueError, match="'detph'.*did you mean 'depth'"):
        parse_arg('detph=56', {'depth': 20, 'quick': False})


def test_validate_config_names_unknown_key():
    c = base_config()
    validate_config(c)
    c.optimizer.lrr = 0.1
    with pytest.raises(KeyError, match='optimizer.lrr.*optimizer.lr'):
        validate_config(c)


def test_step_schedule_and_warmup():
    c = base_config().schedule
    c.name = 'step'
    c.boundaries = ('2 epochs', '30 steps')
    c.decay_factor = 0.1
    s = make_schedule(c, 0.1, 40, steps_per_epoch=10)
    np.testing.assert_allclose(
        [s(0), s(19), s(20), s(29), s(30), s(39)], [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6
    )
    c.name = 'cosine'
    c.warmup = '10 steps'
    s = make_schedule(c, 1.0, 110, steps_per_epoch=10)
    np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110)], [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)


def test_sgd_weight_decay_is_coupled_l2_like_torch():
    c = base_config().optimizer
    c.name, c.momentum, c.weight_decay = 'sgd', 0.9, 0.1
    tx = make_optimizer(c, optax.constant_schedule(0.5))
    w = {'w': jnp.array([1.0, -2.0])}
    g = {'w': jnp.array([0.3, 0.4])}
    st = tx.init(w)
    buf = np.zeros(2)
    wn = np.array([1.0, -2.0])
    for _ in range(3):  # torch.optim.SGD: d = g + wd*w; buf = m*buf + d; w -= lr*buf
        upd, st = tx.update(g, st, w)
        w = optax.apply_updates(w, upd)
        buf = 0.9 * buf + (np.array([0.3, 0.4]) + 0.1 * wn)
        wn = wn - 0.5 * buf
    np.testing.assert_allclose(w['w'], wn, rtol=1e-6)


# -- end to end ---------------------------------------------------------------------------------
def test_run_writes_metrics_summary_config_and_checkpoints(data_dir, tmp_path):
    summary = train_and_evaluate(digits_config(data_dir, steps=12), tmp_path, show_progress=False)
    assert summary['complete'] and summary['step'] == 12
    assert (tmp_path / 'config.json').exists() and (tmp_path / 'summary.json').exists()
    resolved = json.loads((tmp_path / 'config.json').read_text())['_resolved']
    assert resolved['total_steps'] == 12
    assert resolved['cpu_conv'] == onednn.resolve('auto', 1)  # oneDNN where the extra is installed
    train_rows = read_metrics(tmp_path, 'train')
    assert [r['step'] for r in train_rows] == [5, 10, 12]
    assert all(np.isfinite(r['loss']) and r['images_per_sec'] > 0 for r in train_rows[1:])
    evals = read_metrics(tmp_path, 'test')
    assert [r['step'] for r in evals] == [10, 12] and all(r['count'] == 360 for r in evals)
    assert sorted(Checkpointer(tmp_path).all_steps()) == [6, 12]
    assert list((tmp_path / 'tb').glob('events.out.tfevents.*'))


def test_lenet_learns_digits(data_dir, tmp_path):
    c = digits_config(data_dir, steps=150)
    c.optimizer.name, c.optimizer.lr = 'adam', 3e-3
    c.train.eval_every = ''
    summary = train_and_evaluate(c, tmp_path, show_progress=False)
    assert summary['final']['test']['top1'] > 0.9, summary['final']


def _params(workdir):
    ck = Checkpointer(workdir)
    state = ck.restore_raw()
    ck.close()
    return state


def test_resume_equals_uninterrupted_run(data_dir, tmp_path):
    """A run stopped at step 7 (between checkpoints) and relaunched matches an uninterrupted run bitwise.

    BatchNorm statistics, augmentation, dropout-free model, data order: all must continue exactly.
    """

    def cfg():
        c = digits_config(data_dir, model='resnet_cifar', steps=16, depth=8, width=4)
        c.data.augment.crop_padding = 2
        c.data.augment.flip = True
        c.train.async_checkpoints = True  # the default path: saves overlap the next (donating) steps
        return c

    full = train_and_evaluate(cfg(), tmp_path / 'full', show_progress=False)
    part = train_and_evaluate(cfg(), tmp_path / 'resumed', stop_after_steps=7, show_progress=False)
    assert not part['complete'] and Checkpointer(tmp_path / 'resumed').latest_step() == 7
    resumed = train_and_evaluate(cfg(), tmp_path / 'resumed', show_progress=False)
    a, b = _params(tmp_path / 'full'), _params(tmp_path / 'resumed')
    assert int(a['step']) == int(b['step']) == 16
    for key in ('params', 'batch_stats', 'opt_state'):
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a[key], b[key])
    assert resumed['final']['test'] == full['final']['test']
    # the metrics file reads as one run (plus the row logged at the stop), with the same evaluations
    steps = [r['step'] for r in read_metrics(tmp_path / 'resumed', 'train')]
    assert steps == [5, 7, 10, 15, 16]
    assert read_metrics(tmp_path / 'resumed', 'test') == read_metrics(tmp_path / 'full', 'test')


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path):
    c = digits_config(data_dir, steps=40)
    c.optimizer.lr = 1e30
    c.schedule.name = 'constant'
    c.train.checkpoint_every = '1 steps'
    c.train.keep_checkpoints = 2
    with pytest.raises(
        NonFiniteLossError, match=r'loss is (nan|inf) at step (\d+).*last good checkpoint is step'
    ):
        train_and_evaluate(c, tmp_path, show_progress=False)
    steps = Checkpointer(tmp_path).all_steps()
    assert steps, 'a checkpoint before the NaN must remain'
    state = _params(tmp_path)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state['params']))
    rows = read_metrics(tmp_path, 'train')
    assert all(np.isfinite(r['loss']) for r in rows if isinstance(r['loss'], float))


def test_eval_is_exact_over_split_with_padding(data_dir, tmp_path):
    c = digits_config(data_dir, steps=1)
    c.train.eval_batch_size = 48  # 360 = 7*48 + 24: one padded batch
    trainer = make_trainer(c, show_progress=False)
    state = trainer.init_state()
    res, _ = trainer.evaluate(state)
    assert res['count'] == 360
    # reference: one unpadded pass over the split in numpy
    it = data_lib.make_eval_iterator(c.data, 'test', global_batch_size=360)
    batch = next(iter(it))
    assert batch['mask'].all()
    logits = trainer.model.apply(state.variables(), jnp.asarray(batch['image']), train=False)
    top1 = float(np.mean(np.argmax(np.asarray(logits), -1) == batch['label']))
    loss = float(np.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])))
    assert res['top1'] == pytest.approx(top1, abs=1e-6)
    assert res['loss'] == pytest.approx(loss, rel=1e-5)


def test_relaunch_with_other_model_is_refused(data_dir, tmp_path):
    train_and_evaluate(digits_config(data_dir, steps=6), tmp_path, show_progress=False)
    other = digits_config(data_dir, model='resnet_cifar', steps=12, depth=8, width=4)
    with pytest.raises(ValueError, match=r'holds a run with another config: .*model\.name'):
        train_and_evaluate(other, tmp_path, show_progress=False)


def test_corrupt_checkpoint_gives_clear_error(data_dir, tmp_path):
    train_and_evaluate(digits_config(data_dir, steps=6), tmp_path, show_progress=False)
    (tmp_path / 'config.json').unlink()  # skip the config check: the checkpoint itself must be rejected
    for f in (tmp_path / 'checkpoints' / '6' / 'state').rglob('*'):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b'garbage')
    # the only checkpoint fails its checksums: moved aside (never deleted), and a one-line refusal
    with pytest.raises(CheckpointError, match=r'no checkpoint in .*checkpoints verifies'):
        train_and_evaluate(digits_config(data_dir, steps=12), tmp_path, show_progress=False)
    assert [p.name.split('-')[0] for p in (tmp_path / 'checkpoints' / 'corrupt').iterdir()] == ['6']


def test_synthetic_data_trains_on_one_device_batch_without_the_pipeline(data_dir, tmp_path, monkeypatch):
    """``data.synthetic``: every step takes the same random batch made on the devices once; the grain
    pipeline is never built. The run equals a hand loop of the trainer's step on that batch, resumes, and
    a relaunch as a real-data run in the same workdir is refused."""
    from research.tasks import classification
    from research.train import mesh as mesh_lib

    def no_pipeline(*a, **k):
        raise AssertionError('the input pipeline was built for a synthetic run')

    monkeypatch.setattr(classification.data_lib, 'make_train_iterator', no_pipeline)
    c = digits_config(data_dir, steps=8)
    c.data.synthetic = True
    c.train.eval_every = ''
    part = train_and_evaluate(c, tmp_path, stop_after_steps=5, show_progress=False)
    assert not part['complete'] and part['synthetic_data'] is True
    summary = train_and_evaluate(c, tmp_path, show_progress=False)  # resumes from the checkpoint of step 5
    assert summary['complete'] and summary['synthetic_data'] is True and summary['images_per_sec'] > 0

    trainer = make_trainer(c, show_progress=False)
    state = trainer.init_state()
    sharding = mesh_lib.batch_sharding(trainer.mesh)
    batch = next(classification.SyntheticBatches(trainer.info.image_shape, 10, 32, sharding, c.seed))
    assert batch['image'].shape == (32, 32, 32, 1) and batch['image'].sharding == sharding
    for _ in range(8):
        state, _ = trainer.train_step(state, batch)
    saved = _params(tmp_path)
    for key in ('params', 'batch_stats'):
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7),
            saved[key],
            getattr(state, key),
        )
    monkeypatch.undo()
    c.data.synthetic = False
    c.train.duration = '12 steps'
    with pytest.raises(
        ValueError, match=r'holds a run with another config: .*data\.synthetic: true -> false'
    ):
        train_and_evaluate(c, tmp_path, show_progress=False)


def test_on_device_augmentation_trains_like_the_host_pipeline(data_dir, tmp_path):
    """``data.on_device``: the pipeline ships uint8 images and the augmentation draws, the step augments
    and normalises. Stopped at step 5 and resumed, the run equals the host-augmented uninterrupted run to
    float rounding (every op: crop, flip, rotation, zoom, brightness; crop + flip alone are bitwise equal
    in tests/test_data.py); the evaluation (uint8, normalised in the step, padded last batch) counts the
    same examples and gives the same loss."""
    c = digits_config(data_dir, steps=8)
    c.data.augment.update(crop_padding=3, flip=True, rotation=15.0, scale=0.2, brightness=0.2)
    c.train.eval_every = ''
    host = train_and_evaluate(c, tmp_path / 'host', show_progress=False)
    c.data.on_device = True
    part = train_and_evaluate(c, tmp_path / 'dev', stop_after_steps=5, show_progress=False)
    assert not part['complete'] and part['on_device_augment'] is True
    dev = train_and_evaluate(c, tmp_path / 'dev', show_progress=False)
    assert dev['complete'] and dev['on_device_augment'] is True and host['on_device_augment'] is False
    a, b = _params(tmp_path / 'host'), _params(tmp_path / 'dev')
    # The input floats agree to float rounding and the compiled programs differ (normalisation fused
    # into the first layer), so the params agree to float rounding.
    tol = dict(rtol=1e-4, atol=1e-5)
    for key in ('params', 'batch_stats'):
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol), a[key], b[key]
        )
    fd, fh = dev['final']['test'], host['final']['test']
    assert fd['count'] == fh['count'] == 360
    assert abs(fd['loss'] - fh['loss']) < 1e-4


def test_on_device_is_refused_where_it_does_not_apply():
    from research import tasks
    from research.experiments.vmap_seeds import SeedPrograms

    c = base_config()
    c.data.on_device = True
    c.task = 'gan'
    with pytest.raises(ValueError, match="data.on_device=True is not supported by task 'gan'"):
        tasks.create(c)
    c.task = 'classification'
    with pytest.raises(ValueError, match='data.on_device=True is not supported by the vmapped seeds'):
        SeedPrograms(c)


# -- launch.py ----------------------------------------------------------------------------------
def _launch(*args, data_dir=None, timeout=300):
    env = dict(os.environ)
    if data_dir:
        env['TFDS_DATA_DIR'] = data_dir
    return subprocess.run(
        [sys.executable, str(REPO / 'launch.py'), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


CFG = '--config=experiments/classification/lenet5_digits.py'


@pytest.mark.parametrize(
    'args, needle',
    [
        (['--config.optimizer.lrr=0.1'], 'lrr'),
        (['--config.model.name=lenet6'], 'lenet6'),
        (
            ['--config.data.name=image_folder', '--config.data.path=/no/such/folder.tgz'],
            '/no/such/folder.tgz',
        ),
        (['--config.data.name=no_such_dataset'], 'no_such_dataset'),
    ],
)
def test_launch_bad_input_fails_naming_it(args, needle, data_dir, tmp_path):
    r = _launch(CFG, f'--workdir={tmp_path}', *args, data_dir=data_dir)
    assert r.returncode != 0
    assert needle in r.stderr, r.stderr[-2000:]
    assert not list(tmp_path.glob('checkpoints/*')), 'a failed start must not write checkpoints'


def test_launch_bad_config_argument(tmp_path):
    r = _launch(CFG + ':varaint=faithful', f'--workdir={tmp_path}')
    assert r.returncode != 0 and 'varaint' in r.stderr


def test_launch_runs_and_resumes(data_dir, tmp_path):
    args = [CFG + ':epochs=2', f'--workdir={tmp_path}', '--config.train.log_every_steps=20']
    r = _launch(*args, data_dir=data_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert 'done: lenet5_modern on digits' in out and 'ETA' in out
    r2 = _launch(*[a.replace('epochs=2', 'epochs=3') for a in args], data_dir=data_dir)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert 'resumed from' in r2.stdout + r2.stderr
    assert json.loads((tmp_path / 'summary.json').read_text())['epoch'] == pytest.approx(3.0)


# -- devices ------------------------------------------------------------------------------------
_SHARDED = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, sys.argv[1])
import jax, numpy as np
from research.tasks import train_and_evaluate
from research.train.checkpoint import Checkpointer
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from test_train import digits_config
n = int(sys.argv[4])
c = digits_config(sys.argv[2], model="resnet_cifar", steps=4, depth=8, width=4)
c.train.eval_every = ""
if sys.argv[5] == "on_device":  # augmented and normalised in the sharded step
    c.data.on_device = True
    c.data.augment.update(crop_padding=2, flip=True, rotation=10.0, scale=0.2, brightness=0.1)
import research.train.mesh as m
orig = m.make_mesh
m.make_mesh = lambda devices=None: orig(jax.devices()[:n])
s = train_and_evaluate(c, sys.argv[3], show_progress=False)
st = Checkpointer(sys.argv[3]).restore_raw()
np.savez(os.path.join(sys.argv[3], "p.npz"), *[np.asarray(x) for x in jax.tree.leaves((st["params"], st["batch_stats"]))])
print(json.dumps(s["final"]["test"]))
"""


@pytest.mark.parametrize('data', ['host', 'on_device'])
def test_sharded_step_equals_single_device(data_dir, tmp_path, data):
    """Same global batch on 8 simulated CPU devices and on 1: same params, BN statistics and metrics
    (also with ``data.on_device``: the uint8 batch and its augmentation draws sharded on ``data``)."""
    script = tmp_path / 'run.py'
    script.write_text(_SHARDED)
    outs = {}
    for n in (1, 8):
        wd = tmp_path / f'd{n}'
        r = subprocess.run(
            [sys.executable, str(script), str(REPO), data_dir, str(wd), str(n), data],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        outs[n] = (json.loads(r.stdout.strip().splitlines()[-1]), np.load(wd / 'p.npz'))
    (m1, p1), (m8, p8) = outs[1], outs[8]
    assert m1['count'] == m8['count'] == 360
    assert abs(m1['loss'] - m8['loss']) < 1e-5
    for k in p1.files:
        np.testing.assert_allclose(p1[k], p8[k], atol=1e-5, rtol=1e-5)
