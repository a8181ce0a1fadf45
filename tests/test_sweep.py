"""Sweeps, run ids, the ledger, tables, plots, vmapped seeds and ``launch.py --dry_run`` (tiny digits runs)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from research.config import base_config, with_model
from research.experiments import commands, ledger, paper, sweep, tables
from research.experiments.sweep import chain, product, zip_
from research.train.checkpoint import Checkpointer

REPO = Path(__file__).resolve().parents[1]

# A sweep config file as a user would write one: the tiny digits setup of test_train, 2 seeds.
SWEEP_CONFIG = """
import os
from tests.test_train import digits_config
from research.experiments.sweep import product

def get_config(arg=None):
    c = digits_config(os.environ.get("TFDS_DATA_DIR", ""), steps=6)
    c.train.log_every_steps = 3
    c.train.eval_every = "3 steps"
    c.train.checkpoint_every = "3 steps"
    return c

def get_sweep(arg=None):
    return product(seed=[0, 1])

def get_table(arg=None):
    return dict(name="digits_seeds", rows="model.name", metric="test_error", paper={"lenet5_modern": 1.5})
"""


@pytest.fixture(scope='module', autouse=True)
def _compile_cache(tmp_path_factory):
    """Runs of one config compile the same programs: share them through a persistent cache."""
    names = (
        'jax_compilation_cache_dir',
        'jax_persistent_cache_min_compile_time_secs',
        'jax_persistent_cache_min_entry_size_bytes',
    )
    old = {n: getattr(jax.config, n) for n in names}
    compilation_cache.reset_cache()
    jax.config.update(names[0], str(tmp_path_factory.mktemp('jax_cache')))
    jax.config.update(names[1], 0.0)
    jax.config.update(names[2], 0)
    yield
    compilation_cache.reset_cache()
    for n, v in old.items():
        jax.config.update(n, v)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('configs') / 'digits_sweep.py'
    path.write_text(SWEEP_CONFIG)
    return path


def _runs(config_file, data_dir, root):
    module = sweep.load_config_module(config_file)
    c = module.get_config()
    c.data.data_dir = data_dir
    c.lock()
    return module, sweep.expand(c, module.get_sweep(), root)


@pytest.fixture(scope='module')
def finished_sweep(config_file, data_dir, tmp_path_factory):
    """Seed 0 interrupted at step 3; relaunch (resumes seed 0, runs seed 1); relaunch again (skips both)."""
    root = tmp_path_factory.mktemp('sweep')
    module, runs = _runs(config_file, data_dir, root)
    kw = dict(sweep_name='digits_sweep', root=root, show_progress=False)
    out = {'root': root, 'module': module, 'runs': runs, 'logs': [[], [], []], 'ledgers': []}
    out['statuses'] = [sweep.run_sweep(runs[:1], stop_after_steps=3, log=out['logs'][0].append, **kw)]
    out['ledgers'].append(ledger.read(root / 'ledger.jsonl'))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out['statuses'].append(
            sweep.run_sweep(_runs(config_file, data_dir, root)[1], log=out['logs'][1].append, **kw)
        )
    out['stdout'] = buf.getvalue()
    out['ledgers'].append(ledger.read(root / 'ledger.jsonl'))
    out['statuses'].append(
        sweep.run_sweep(_runs(config_file, data_dir, root)[1], log=out['logs'][2].append, **kw)
    )
    out['ledgers'].append(ledger.read(root / 'ledger.jsonl'))
    return out


# -- grids ----------------------------------------------------------------------------------------
def test_product_zip_chain():
    g = product({'model.depth': [20, 56]}, seed=range(2))
    assert g == [
        {'model.depth': 20, 'seed': 0},
        {'model.depth': 20, 'seed': 1},
        {'model.depth': 56, 'seed': 0},
        {'model.depth': 56, 'seed': 1},
    ]
    assert product(model__width=[16, 32]) == [{'model.width': 16}, {'model.width': 32}]
    z = zip_({'model.depth': [14, 38], 'model.width': [64, 16]})
    assert z == [{'model.depth': 14, 'model.width': 64}, {'model.depth': 38, 'model.width': 16}]
    assert product(z, seed=[0]) == [dict(d, seed=0) for d in z]
    assert chain(z, [{'model.depth': 20}]) == z + [{'model.depth': 20}]
    with pytest.raises(ValueError, match='equal length'):
        zip_({'model.depth': [14, 38]}, seed=[0])
    with pytest.raises(ValueError, match="'seed' is set twice"):
        product({'seed': [0]}, seed=[1])


def _resnet_base():
    c = base_config()
    with_model(c, 'resnet_cifar', depth=20, shortcut='A', plain=False)
    c.lock()
    return c


def test_misspelled_sweep_key_fails_naming_it(tmp_path):
    base = _resnet_base()
    with pytest.raises(KeyError, match=r"'model.detph'.*did you mean 'model.depth'"):
        sweep.expand(base, [{'model.detph': 56}], tmp_path)
    with pytest.raises(KeyError, match="'optimizer.lrr'"):
        sweep.expand(base, [{'optimizer.lrr': 0.1}], tmp_path)
    with pytest.raises(ValueError, match='train.duration'):
        sweep.expand(base, [{'train.duration': 5}], tmp_path)  # a string key given an int
    with pytest.raises(ValueError, match='same run'):
        sweep.expand(base, [{'seed': 1}, {'seed': 1}], tmp_path)
    runs = sweep.expand(base, [{'model.depth': 56, 'seed': 3}], tmp_path)
    assert runs[0].config.model.depth == 56 and runs[0].config.seed == 3 and base.model.depth == 20
    assert runs[0].workdir == tmp_path / runs[0].id


_ID_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from research.config import base_config, with_model
from research.experiments.sweep import expand
c = base_config()
with_model(c, "resnet_cifar", depth=20, shortcut="A", plain=False)
c.lock()
print(expand(c, [{"seed": 1, "model.depth": 56}], "/tmp")[0].id)
"""


def test_run_id_stable_distinct_and_order_free(tmp_path):
    base = _resnet_base()

    def rid(overrides, cfg=base):
        return sweep.expand(cfg, [overrides], tmp_path)[0].id

    a = rid({'model.depth': 56, 'seed': 1})
    assert a.startswith('model.depth=56,seed=1-') and len(a.rsplit('-', 1)[1]) == 6
    assert rid({'seed': 1, 'model.depth': 56}) == a  # key order is irrelevant
    assert rid({'model.depth': 56, 'seed': 2}) != a
    assert rid({'model.depth': 56, 'seed': 1, 'optimizer.lr': 0.05}) != a
    other = sweep.apply_overrides(base, {'data.data_dir': '/elsewhere', 'train.log_every_steps': 7})
    assert rid({'model.depth': 56, 'seed': 1}, other) == a  # machine-local keys do not count
    r = subprocess.run(
        [sys.executable, '-c', _ID_SCRIPT, str(REPO)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, 'PYTHONHASHSEED': '123'},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == a  # same id in another process


# -- running, resuming, skipping, ledger ----------------------------------------------------------
def test_sweep_resumes_interrupted_and_skips_finished(finished_sweep):
    s = finished_sweep
    r0, r1 = s['runs']
    assert s['statuses'][0] == {r0.id: 'partial'}
    assert [(r['id'], r['status'], r['step']) for r in s['ledgers'][0]] == [(r0.id, 'partial', 3)]
    assert s['statuses'][1] == {r0.id: 'done', r1.id: 'done'}
    assert f'resumed from {r0.workdir / "checkpoints" / "3"}' in s['stdout']
    assert s['stdout'].count('resumed from') == 1  # seed 1 started fresh
    assert s['statuses'][2] == {r0.id: 'done', r1.id: 'done'}
    assert all('skip' in line for line in s['logs'][2]) and len(s['logs'][2]) == 2
    assert json.loads((r0.workdir / 'run.json').read_text())['launches'] == 2


def test_ledger_rows(finished_sweep):
    s = finished_sweep
    path = s['root'] / 'ledger.jsonl'
    rows = s['ledgers'][2]
    assert len(path.read_text().splitlines()) == 2  # re-running did not duplicate rows
    assert s['ledgers'][1] == rows  # the skipping relaunch kept the rows as they were
    for run, row in zip(s['runs'], rows):
        summary = json.loads((run.workdir / 'summary.json').read_text())
        assert row['id'] == run.id and row['status'] == 'done' and row['sweep'] == 'digits_sweep'
        assert row['overrides'] == run.overrides and row['seed'] == run.overrides['seed']
        assert row['config']['model.name'] == 'lenet5_modern' and row['config']['seed'] == row['seed']
        assert row['git_commit'] is None or len(row['git_commit']) == 40
        assert row['versions']['jax'] == jax.__version__ and row['versions']['flax']
        assert row['platform'] == 'cpu' and row['devices'] >= 1 and row['device_kind']
        assert (row['step'], row['total_steps'], row['num_params']) == (6, 6, 61706)
        m = row['metrics']
        top1 = summary['final']['test']['top1']
        assert m['test_error'] == pytest.approx(100 * (1 - top1)) and m['test_top1'] == top1
        assert m['best_test_top1'] >= top1 and m['best_step'] in (3, 6)
        assert math.isfinite(m['train_loss']) and 0 <= m['train_error'] <= 100
        assert row['images_per_sec'] > 0 and row['wall_time_s'] > 0
        assert row['workdir'] == str(run.workdir)
    assert (
        rows[0]['wall_time_s']
        > json.loads((s['runs'][0].workdir / 'summary.json').read_text())['wall_time_s']
    )


def test_failed_run_is_recorded_not_raised(config_file, data_dir, tmp_path, capsys):
    module = sweep.load_config_module(config_file)
    c = module.get_config()
    c.data.data_dir = data_dir
    c.lock()
    runs = sweep.expand(c, [{'train.batch_size': 100_000}], tmp_path)  # larger than the dataset
    statuses = sweep.run_sweep(runs, sweep_name='bad', root=tmp_path, show_progress=False, log=lambda _: None)
    assert statuses == {runs[0].id: 'failed'}
    (row,) = ledger.read(tmp_path / 'ledger.jsonl')
    assert row['status'] == 'failed' and 'batch_size' in row['error']
    assert 'failed: ConfigError' in capsys.readouterr().err


def test_vmapped_seeds_match_single_runs(finished_sweep):
    from research.experiments.vmap_seeds import train_seeds, unstack

    runs = finished_sweep['runs']
    out = train_seeds(runs[0].config, [r.config.seed for r in runs])
    assert out['steps'] == 6 and out['train'][-1]['loss'].shape == (2,)
    rows = {r['id']: r for r in finished_sweep['ledgers'][2]}
    for i, run in enumerate(runs):
        ck = Checkpointer(run.workdir)
        ref = ck.restore_raw()
        ck.close()
        mine = unstack(out['states'], i)
        for a, b in zip(jax.tree.leaves(ref['params']), jax.tree.leaves(mine.params)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-5)
        assert out['final'][i]['loss'] == pytest.approx(rows[run.id]['metrics']['test_loss'], abs=1e-5)
    assert not np.allclose(
        *[np.asarray(jax.tree.leaves(unstack(out['states'], i).params)[0]) for i in (0, 1)]
    )


# -- tables and plots -----------------------------------------------------------------------------
def _row(run, value, status='done'):
    return {
        'id': run.id,
        'status': status,
        'config': run.flat_config,
        'metrics': {'test_error': value},
        'workdir': None,
    }


def test_table_mean_std_paper_and_missing(tmp_path):
    base = _resnet_base()
    runs = sweep.expand(
        base, product({'model.depth': [20, 56], 'model.plain': [False, True]}, seed=[0, 1]), tmp_path
    )
    by = {(r.overrides['model.depth'], r.overrides['model.plain'], r.overrides['seed']): r for r in runs}
    rows = [
        _row(by[20, False, 0], 8.0),
        _row(by[20, False, 1], 9.0),
        _row(by[20, True, 0], 10.0),
        _row(by[56, False, 0], 5.0, status='failed'),
    ]
    spec = dict(
        name='t6',
        rows='model.depth',
        cols='model.plain',
        col_labels={False: 'ResNet', True: 'plain'},
        paper={(d, False): e for d, e in paper.RESNET_CIFAR10_TABLE6.items()},
    )
    t = tables.build_table(spec, rows, runs)
    c = t.cell(20, False)
    assert c.mean == pytest.approx(8.5) and c.std == pytest.approx(np.std([8.0, 9.0], ddof=1)) and c.n == 2
    assert t.cell_text(20, False) == '8.50 ± 0.71'
    assert t.cell_text(20, True) == '10.00 (1/2)'
    assert t.cell_text(56, False) == tables.MISSING and t.cell_text(56, True) == tables.MISSING
    md = t.to_markdown()
    assert '| model.depth | ResNet | ResNet (paper) | plain |' in md
    assert '| 20 | 8.50 ± 0.71 | 8.75 | 10.00 (1/2) |' in md
    assert '| 56 | — | 6.97 | — |' in md
    got = list(csv.DictReader(io.StringIO(t.to_csv())))
    assert [(r['model.depth'], r['model.plain'], r['n'], r['paper']) for r in got] == [
        ('20', 'False', '2', '8.75'),
        ('20', 'True', '1', ''),
        ('56', 'False', '0', '6.97'),
        ('56', 'True', '0', ''),
    ]
    paths = tables.write_table(t, tmp_path / 'tables')
    assert [p.name for p in paths] == ['t6.md', 't6.csv', 't6.png', 't6_curves.png']
    with pytest.raises(ValueError, match="differ in 'model.plain'"):
        tables.build_table(dict(name='bad', rows='model.depth'), rows, runs)


def test_table_and_plots_from_sweep_ledger(finished_sweep):
    s = finished_sweep
    rows = ledger.read(s['root'] / 'ledger.jsonl')
    paths = commands.render_tables(s['module'], None, s['runs'], s['root'], [])
    errors = [r['metrics']['test_error'] for r in rows]
    cell = tables.build_table(s['module'].get_table(), rows, s['runs']).cell('lenet5_modern')
    assert cell.mean == pytest.approx(np.mean(errors)) and cell.std == pytest.approx(np.std(errors, ddof=1))
    md = (s['root'] / 'tables' / 'digits_seeds.md').read_text()
    assert f'| lenet5_modern | {np.mean(errors):.2f} ± {np.std(errors, ddof=1):.2f} | 1.50 |' in md
    pngs = [p for p in paths if p.suffix == '.png']
    assert len(pngs) == 2
    for p in pngs:
        assert p.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and p.stat().st_size > 5000


# -- parallel helpers -----------------------------------------------------------------------------
def test_device_slices_and_child_command(tmp_path):
    cpu = sweep.device_slices(2, devices=[sweep.LocalDevice('cpu', 0)], cpus=[0, 1, 2, 3, 4], env={})
    assert [s.cpus for s in cpu] == [{0, 1}, {2, 3}] and cpu[0].env == {}  # no backend forced
    assert [s.cpus for s in sweep.device_slices(3, devices=[], cpus=[0, 1], env={})] == [None] * 3
    run = sweep.Run('seed=1-abcdef', {'seed': 1}, None, tmp_path)
    argv = ['launch.py', '--config=x.py:quick', '--sweep', '--sweep_parallel=2', '--table', '--config.seed=4']
    cmd = sweep.child_argv(argv, run)
    assert cmd[0] == sys.executable and cmd[1].endswith('launch.py')
    assert cmd[2:] == [
        '--config=x.py:quick',
        '--config.seed=4',
        '--sweep',
        '--sweep_only=seed=1-abcdef',
        '--noprogress',
    ]


def _gpus(kind, n):
    return [sweep.LocalDevice(kind, i, 'fake') for i in range(n)]


def test_device_slices_split_gpus_by_jax_device_list():
    """CUDA: each worker gets its GPUs through CUDA_VISIBLE_DEVICES, numbered as this process sees them
    (an outer CUDA_VISIBLE_DEVICES is mapped through); more workers than GPUs is an error."""
    gpu = sweep.device_slices(2, devices=_gpus('cuda', 4), env={})
    assert [s.env for s in gpu] == [{'CUDA_VISIBLE_DEVICES': '0,1'}, {'CUDA_VISIBLE_DEVICES': '2,3'}]
    assert gpu[0].cpus is None and gpu[1].describe() == 'CUDA_VISIBLE_DEVICES=2,3'
    outer = sweep.device_slices(3, devices=_gpus('cuda', 3), env={'CUDA_VISIBLE_DEVICES': '3,5,6'})
    assert [s.env['CUDA_VISIBLE_DEVICES'] for s in outer] == ['3', '5', '6']
    with pytest.raises(ValueError, match='needs at least 3 GPUs; 2 visible'):
        sweep.device_slices(3, devices=_gpus('cuda', 2), env={})


def test_device_slices_rocm_and_tpu():
    rocm = sweep.device_slices(2, devices=_gpus('rocm', 2), env={})
    assert [s.env for s in rocm] == [{'HIP_VISIBLE_DEVICES': '0'}, {'HIP_VISIBLE_DEVICES': '1'}]
    outer = sweep.device_slices(2, devices=_gpus('rocm', 2), env={'ROCR_VISIBLE_DEVICES': '4,7'})
    assert [s.env for s in outer] == [{'ROCR_VISIBLE_DEVICES': '4'}, {'ROCR_VISIBLE_DEVICES': '7'}]
    # a v5e-8 TPU VM (8 chips) in 4 workers of 2 chips: each its own single-process slice and port
    tpu = sweep.device_slices(4, devices=_gpus('tpu', 8), env={})
    assert [s.env['TPU_VISIBLE_CHIPS'] for s in tpu] == ['0,1', '2,3', '4,5', '6,7']
    assert {s.env['TPU_CHIPS_PER_PROCESS_BOUNDS'] for s in tpu} == {'1,2,1'}
    assert {s.env['TPU_PROCESS_BOUNDS'] for s in tpu} == {'1,1,1'}
    assert len({s.env['TPU_PROCESS_PORT'] for s in tpu}) == 4
    assert tpu[1].env['TPU_PROCESS_ADDRESSES'] == f'localhost:{tpu[1].env["TPU_PROCESS_PORT"]}'
    assert (
        sweep.device_slices(8, devices=_gpus('tpu', 8), env={})[7].env['TPU_CHIPS_PER_PROCESS_BOUNDS']
        == '1,1,1'
    )
    with pytest.raises(ValueError, match='needs 1, 2, 4 or 8 chips, got 3'):
        sweep.device_slices(1, devices=_gpus('tpu', 3), env={})
    with pytest.raises(ValueError, match='needs at least 2 TPU chips; 1 visible'):
        sweep.device_slices(2, devices=_gpus('tpu', 1), env={})


def test_discover_devices_parses_jax_devices_and_keeps_the_users_platform():
    seen = {}

    def fake_run(cmd, **kw):
        seen.update(kw['env'])
        out = 'noise\nDEVICES [["cuda", 0, "NVIDIA H100"], ["cuda", 1, "NVIDIA H100"]]\n'
        return subprocess.CompletedProcess(cmd, 0, out, '')

    devs = sweep.discover_devices({'JAX_PLATFORMS': 'cuda'}, runner=fake_run)
    assert devs == [sweep.LocalDevice('cuda', 0, 'NVIDIA H100'), sweep.LocalDevice('cuda', 1, 'NVIDIA H100')]
    assert seen['JAX_PLATFORMS'] == 'cuda' and seen['XLA_PYTHON_CLIENT_PREALLOCATE'] == 'false'
    assert (
        sweep.discover_devices({}, runner=lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, '', 'x'))
        == []
    )
    # the real query (JAX_PLATFORMS unset): whatever JAX finds here; the platform is never forced
    real = sweep.discover_devices({k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'})
    assert real and all(d.kind in ('cpu', 'cuda', 'rocm', 'tpu') for d in real)
    assert all('JAX_PLATFORMS' not in s.env for s in sweep.device_slices(1, devices=real, cpus=[0, 1]))


# -- launch.py ------------------------------------------------------------------------------------
def _launch(*args, data_dir=None):
    env = dict(os.environ, **({'TFDS_DATA_DIR': data_dir} if data_dir else {}))
    return subprocess.run(
        [sys.executable, str(REPO / 'launch.py'), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_launch_dry_run_lists_runs_with_status(finished_sweep, config_file, data_dir, tmp_path):
    root = finished_sweep['root']
    r = _launch(f'--config={config_file}', f'--workdir={root}', '--dry_run', data_dir=data_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    for run in finished_sweep['runs']:
        assert f'done     {run.id} ' in r.stdout
    assert '2 runs: 2 done, 0 partial, 0 new' in r.stdout
    assert [r.id for r in sweep.select(finished_sweep['runs'], 'seed=1')] == [finished_sweep['runs'][1].id]
    bad = tmp_path / 'bad_sweep.py'
    bad.write_text(SWEEP_CONFIG.replace('product(seed=[0, 1])', "product({'optimizer.lrr': [0.1]})"))
    r = _launch(f'--config={bad}', f'--workdir={tmp_path}', '--dry_run')
    assert r.returncode != 0 and "'optimizer.lrr'" in r.stderr and "did you mean 'optimizer.lr'" in r.stderr


@pytest.mark.slow
def test_launch_parallel_sweep(config_file, data_dir, tmp_path):
    r = _launch(
        f'--config={config_file}', f'--workdir={tmp_path}', '--sweep', '--sweep_parallel=2', data_dir=data_dir
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = ledger.read(tmp_path / 'ledger.jsonl')
    assert sorted(r['seed'] for r in rows) == [0, 1] and all(r['status'] == 'done' for r in rows)
    assert all((Path(r['workdir']) / 'launch.log').exists() for r in rows)


def test_sub_split_metrics_report_under_the_split_name(tmp_path):
    """A reduced run evaluated on ``test[:2000]`` fills the same ledger keys (``test_error``) as a full run."""
    (tmp_path / 'summary.json').write_text(
        json.dumps({'final': {'test[:2000]': {'top1': 0.75, 'loss': 0.9}}})
    )
    rows = [
        {'split': 'test[:2000]', 'step': 5, 'epoch': 1, 'top1': 0.6},
        {'split': 'test[:2000]', 'step': 10, 'epoch': 2, 'top1': 0.75},
        {'split': 'train', 'step': 10, 'epoch': 2, 'loss': 1.0, 'top1': 0.5},
    ]
    (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    m = ledger.run_metrics(tmp_path, 'test[:2000]')
    assert m['test_error'] == pytest.approx(25.0) and m['best_test_error'] == pytest.approx(25.0)
    assert m['best_step'] == 10 and m['train_error'] == pytest.approx(50.0)
    assert not any('[' in k for k in m)
    from research.experiments import plots

    epochs, _, eval_epochs, errors, metric = plots._curves(
        tmp_path, 'test'
    )  # the table's curves find them too
    assert metric == 'error' and errors == pytest.approx([40.0, 25.0]) and len(eval_epochs) == 2


def test_run_held_by_a_live_process_is_running_and_skipped(tmp_path):
    """A workdir whose lock a live process holds shows as 'running' (--dry_run) and a sweep skips it."""
    from research.train.workdir import WorkdirLock

    wd = tmp_path / 'run'
    assert sweep.run_status(wd) == 'new'
    with WorkdirLock(wd):
        assert sweep.run_status(wd) == 'running'
        run = sweep.Run(id='x', overrides={}, config=None, workdir=wd)
        logs = []
        statuses = sweep.run_sweep([run], sweep_name='s', root=tmp_path, show_progress=False, log=logs.append)
        assert statuses == {'x': 'running'} and 'running in another process' in logs[0]
    assert sweep.run_status(wd) == 'new'
