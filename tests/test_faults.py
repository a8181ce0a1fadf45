"""Fault injection, end to end through ``launch.py`` (issue 25): concurrent launches, changed configs,
corrupt checkpoints, stale locks, finished runs, bad input, Ctrl-C, full and read-only disks.

Every case runs the README's main job (LeNet-5 on digits) for a few dozen steps in a subprocess and
asserts on the message, the exit code (2 = config error, 1 = runtime failure, 130 = Ctrl-C) and on
the workdir: where nothing should change, no file of it changes (content, size and mtime).

The machinery: research/train/{workdir,records,checkpoint}.py and research/tasks/checks.py, wired into
the one loop (research/train/loop.py) and research/cli.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from research.train.checkpoint import Checkpointer

REPO = Path(__file__).resolve().parents[1]
CFG = '--config=experiments/classification/lenet5_digits.py'
# 40 steps (batch 32: 44 steps/epoch), checkpoints every 10 (the last 3 kept: 20, 30, 40), no
# evaluation before the end.
SHORT = [
    '--config.train.duration=40 steps',
    '--config.train.checkpoint_every=10 steps',
    '--config.train.eval_every=',
    '--config.train.log_every_steps=10',
    '--config.train.async_checkpoints=False',
]


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    e = dict(os.environ)
    e['TFDS_DATA_DIR'] = str(tmp_path_factory.mktemp('tfds'))
    e['RESEARCH_JAX_CACHE'] = str(tmp_path_factory.mktemp('jax_cache'))
    e.pop('XLA_FLAGS', None)
    return e


def launch(workdir, *args, env, timeout=300, config=CFG, short=True):
    argv = [sys.executable, 'launch.py', config, f'--workdir={workdir}', *(SHORT if short else []), *args]
    return subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def popen(workdir, *args, env, config=CFG):
    argv = [sys.executable, 'launch.py', config, f'--workdir={workdir}', *SHORT, *args]
    return subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def snapshot(root) -> dict[str, tuple]:
    """Every file under ``root``: (size, mtime_ns, sha256)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (
                st.st_size,
                st.st_mtime_ns,
                hashlib.sha256(Path(p).read_bytes()).hexdigest(),
            )
    return out


def lines(text: str) -> list[str]:
    return [l for l in text.splitlines() if l.strip()]


def assert_one_line_error(r, code: int, *needles: str) -> str:
    """Exit code ``code``, exactly one non-empty stderr line (no traceback) containing ``needles``."""
    err = lines(r.stderr)
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    assert len(err) == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


def restore_arrays(workdir, step):
    ckpt = Checkpointer(workdir, async_save=False)
    state = ckpt.restore_raw(step)
    ckpt.close()
    return [np.asarray(x) for x in jax.tree.leaves(state)]


@pytest.fixture(scope='module')
def finished(tmp_path_factory, env):
    """A finished 40-step run (checkpoints 20, 30, 40; summary.json): the template the cases copy."""
    wd = tmp_path_factory.mktemp('finished') / 'run'
    r = launch(wd, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(s for s in os.listdir(wd / 'checkpoints') if s.isdigit()) == ['20', '30', '40']
    return wd


def copy_run(src, tmp_path, name='run'):
    dst = tmp_path / name
    shutil.copytree(src, dst, symlinks=True)
    return dst


def interrupted(finished, tmp_path):
    """The finished run as if killed (-9) between steps 30 and 40: a copy without the final checkpoint
    and summary.json, so a relaunch resumes from step 30 and must end bitwise equal to the template."""
    wd = copy_run(finished, tmp_path)
    shutil.rmtree(wd / 'checkpoints' / '40')
    (wd / 'summary.json').unlink()
    return wd


# -- 1. two launches into one workdir -------------------------------------------------------------
def test_second_launch_into_a_live_workdir_is_refused_at_once(tmp_path, env):
    wd = tmp_path / 'run'
    first = popen(wd, '--config.train.duration=200 steps', env=env)
    try:
        deadline = time.time() + 120
        while not (wd / 'run.lock').exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert (wd / 'run.lock').exists(), 'the first launch takes the lock'
        t0 = time.perf_counter()
        second = launch(wd, '--config.train.duration=200 steps', env=env)
        elapsed = time.perf_counter() - t0
        msg = assert_one_line_error(
            second, 1, 'is in use by another run', f'pid {first.pid}', socket.gethostname()
        )
        assert re.search(r'since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d', msg)
        assert elapsed < 60, 'refused before building the dataset or compiling'
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    rows = [json.loads(l) for l in (wd / 'metrics.jsonl').read_text().splitlines()]
    keys = [(r['split'], r['step']) for r in rows]
    assert len(keys) == len(set(keys)), 'no duplicated rows'
    assert [s for sp, s in keys if sp == 'train'] == list(range(10, 201, 10))
    assert sorted(int(s) for s in os.listdir(wd / 'checkpoints') if s.isdigit()) == [180, 190, 200]
    assert not (wd / 'run.lock').exists()


# -- 2. a changed config is refused on resume -----------------------------------------------------
@pytest.mark.parametrize(
    'override, diff',
    [
        ('--config.train.batch_size=64', 'train.batch_size: 32 -> 64'),
        ('--config.seed=7', 'seed: 0 -> 7'),
        ('--config.optimizer.lr=0.01', 'optimizer.lr: 0.003 -> 0.01'),
    ],
)
def test_changed_config_is_refused_with_its_diff(finished, tmp_path, env, override, diff):
    wd = interrupted(finished, tmp_path)
    before = snapshot(wd)
    r = launch(wd, override, env=env)
    assert_one_line_error(r, 2, diff, '--allow_config_change', str(wd))
    assert snapshot(wd) == before


def test_allowed_batch_change_is_recorded_and_epochs_stay_true(finished, tmp_path, env):
    """Batch 32 for 30 steps (960 examples), then batch 64 to step 40 (640): 1,600 examples = 30/44 +
    10/22 = 1.14 epochs of the 1,437 train images, where 40 steps / 22 steps per epoch would claim 1.82."""
    wd = interrupted(finished, tmp_path)
    r = launch(wd, '--config.train.batch_size=64', '--allow_config_change', env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    history = [json.loads(l) for l in (wd / 'config_history.jsonl').read_text().splitlines()]
    assert len(history) == 1 and history[0]['step'] == 30
    assert history[0]['changes'] == {'train.batch_size': [32, 64]}
    config = json.loads((wd / 'config.json').read_text())
    assert config['train']['batch_size'] == 64
    assert [(s['start_step'], s['batch_size']) for s in config['_segments']] == [(0, 32), (30, 64)]
    summary = json.loads((wd / 'summary.json').read_text())
    assert summary['epoch'] == pytest.approx(30 / 44 + 10 / 22)


# -- 3. corrupt checkpoints: fallback, moved aside, bitwise-equal resume ------------------------------
def _damage(path: Path, how: str) -> None:
    size = path.stat().st_size
    if how == 'ff_4k':
        with open(path, 'r+b') as f:
            f.seek(size // 2)
            f.write(b'\xff' * 4096)
    elif how == 'zero_bytes':
        open(path, 'wb').close()
    else:
        os.truncate(path, size // 3)


@pytest.mark.parametrize('how', ['ff_4k', 'zero_bytes', 'truncated'])
def test_corrupt_newest_checkpoint_falls_back_and_resumes_bitwise(finished, tmp_path, env, how):
    wd = interrupted(finished, tmp_path)  # checkpoints 20 and 30
    step_dir = wd / 'checkpoints' / '30'
    files = [p for p in step_dir.rglob('*') if p.is_file() and '/d/' in str(p)]
    target = max(files, key=lambda p: p.stat().st_size)  # the OCDBT file holding the arrays
    assert target.stat().st_size > 65536
    _damage(target, how)
    damaged = snapshot(step_dir)
    r = launch(wd, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [l for l in lines(out) if 'failed verification' in l]
    assert len(warnings) == 1 and 'checkpoint step 30' in warnings[0], out[-3000:]
    assert 'trying step 20' in warnings[0] and 'resumed from' in out and '(step 20,' in out
    assert 'Traceback' not in out and '"driver"' not in out  # no TensorStore spec
    moved = list((wd / 'checkpoints' / 'corrupt').iterdir())
    assert len(moved) == 1 and moved[0].name.startswith('30-')
    assert snapshot(moved[0]) == damaged, 'moved aside untouched, not deleted'
    for a, b in zip(restore_arrays(wd, 40), restore_arrays(finished, 40), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


# -- 4. stale lock -------------------------------------------------------------------------------------
def test_stale_lock_is_taken_over_with_a_warning(finished, tmp_path, env):
    wd = interrupted(finished, tmp_path)
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    (wd / 'run.lock').write_text(
        json.dumps({'host': socket.gethostname(), 'pid': dead.pid, 'started_at': time.time() - 60})
    )
    r = launch(wd, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [l for l in lines(r.stdout + r.stderr) if 'stale lock' in l]
    assert len(warnings) == 1 and f'pid {dead.pid}' in warnings[0]
    assert not (wd / 'run.lock').exists()
    for a, b in zip(restore_arrays(wd, 40), restore_arrays(finished, 40), strict=True):
        assert np.array_equal(a, b)


# -- 5. keep_checkpoints --------------------------------------------------------------------------------
@pytest.mark.parametrize('keep', ['0', '-1'])
def test_keep_checkpoints_below_one_is_refused_by_name(tmp_path, env, keep):
    r = launch(tmp_path / 'run', f'--config.train.keep_checkpoints={keep}', env=env)
    assert_one_line_error(r, 2, f'train.keep_checkpoints={keep}', '>= 1')
    assert not (tmp_path / 'run').exists()


def test_keep_one_keeps_the_final_checkpoint(tmp_path, env):
    r = launch(tmp_path / 'run', '--config.train.keep_checkpoints=1', env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [s for s in os.listdir(tmp_path / 'run' / 'checkpoints') if s.isdigit()] == ['40']


# -- 6. finished runs -----------------------------------------------------------------------------------
def test_relaunching_a_finished_run_prints_its_summary_and_changes_nothing(finished, tmp_path, env):
    wd = copy_run(finished, tmp_path)
    before = snapshot(wd)
    summary = json.loads((wd / 'summary.json').read_text())
    r = launch(wd, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert 'finished' in out and f'top1 {100 * summary["final"]["test"]["top1"]:.2f}%' in out
    assert snapshot(wd) == before


def test_extended_run_adds_up_wall_time_and_throughput(finished, tmp_path, env):
    wd = copy_run(finished, tmp_path)
    first = json.loads((wd / 'summary.json').read_text())
    r = launch(wd, '--config.train.duration=60 steps', env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((wd / 'summary.json').read_text())
    assert summary['step'] == 60 and summary['complete']
    assert summary['wall_time_s'] > first['wall_time_s']
    assert summary['totals']['segments'] == 2 and summary['images_per_sec'] > 0
    evals = [json.loads(l) for l in (wd / 'metrics.jsonl').read_text().splitlines()]
    assert [(e['step']) for e in evals if e['split'] == 'test'] == [40, 60]


# -- 7. bad input: one line naming the key and value, exit code 2 (config) or 1 (runtime) ----------------
@pytest.mark.parametrize(
    'override, needle',
    [
        ('--config.train.batch_size=0', 'train.batch_size=0'),
        ('--config.train.batch_size=-8', 'train.batch_size=-8'),
        ('--config.data.image_size=-5', 'data.image_size=-5'),
        ('--config.optimizer.lr=-0.1', 'optimizer.lr=-0.1'),
        ('--config.model.depth=20', 'model.depth'),
        ('--config.data.train_split=train[:200%]', "data.train_split='train[:200%]'"),
        ('--config.train.log_every_steps=0', 'train.log_every_steps=0'),
    ],
)
def test_bad_value_is_one_line_naming_it_exit_2(tmp_path, env, override, needle):
    r = launch(tmp_path / 'run', override, env=env)
    msg = assert_one_line_error(r, 2, needle)
    if 'depth' in override:
        assert 'accepted:' in msg and 'num_classes' in msg
    assert not (tmp_path / 'run').exists(), 'nothing is written for a refused config'


def test_zero_duration_evaluates_only_and_says_so(tmp_path, env):
    """``train.duration='0 steps'``: the initial state is evaluated (one test row at step 0, a summary),
    the run says so, and nothing is trained or checkpointed (the initial state is the seed's)."""
    r = launch(tmp_path / 'run', '--config.train.duration=0 steps', env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert len([l for l in lines(out) if 'evaluation only' in l and 'train.duration' in l]) == 1, out[-2000:]
    rows = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    assert [(row['split'], row['step']) for row in rows] == [('test', 0)]
    ckpts = tmp_path / 'run' / 'checkpoints'
    assert not (ckpts.exists() and [s for s in os.listdir(ckpts) if s.isdigit()])
    assert json.loads((tmp_path / 'run' / 'summary.json').read_text())['step'] == 0


def test_workdir_that_is_a_file(tmp_path, env):
    f = tmp_path / 'afile'
    f.write_text('keep me')
    r = launch(f, env=env)
    assert_one_line_error(r, 2, f'--workdir={f}', 'is an existing file')
    assert f.read_text() == 'keep me'


def _mount_ok() -> bool:
    if not sys.platform.startswith('linux') or shutil.which('unshare') is None:
        return False
    r = subprocess.run(
        ['unshare', '-m', 'sh', '-c', 'mount -t tmpfs -o size=1m tmpfs /mnt'],
        capture_output=True,
        check=False,
    )
    return r.returncode == 0


needs_mount = pytest.mark.skipif(not _mount_ok(), reason='needs mount namespaces (root or user namespaces)')


def _launch_on_tmpfs(mount_dir, options, *args, env):
    mount_dir.mkdir(exist_ok=True)
    argv = [sys.executable, 'launch.py', CFG, f'--workdir={mount_dir}/run', '--noprogress', *SHORT, *args]
    script = f'mount -t tmpfs -o {options} tmpfs {mount_dir} && exec ' + ' '.join(
        "'" + a.replace("'", "'\\''") + "'" for a in argv
    )
    return subprocess.run(
        ['unshare', '-m', 'sh', '-c', script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@needs_mount
def test_read_only_workdir_is_one_line(tmp_path, env):
    r = _launch_on_tmpfs(tmp_path / 'ro', 'size=1m,ro', env=env)
    assert_one_line_error(r, 1, f'{tmp_path}/ro/run', 'read-only file system', 'saved: nothing')


@needs_mount
def test_full_disk_is_one_line_with_what_was_saved(tmp_path, env):
    # LeNet-5 + Adam checkpoints are ~0.75 MB: the disk fills after the first one or two
    r = _launch_on_tmpfs(tmp_path / 'full', 'size=1800k', '--config.train.keep_checkpoints=5', env=env)
    msg = assert_one_line_error(r, 1, 'no space left on the device', 'saved:')
    assert not re.search(r'^E\d{4} ', r.stderr, re.MULTILINE), 'no absl error-log blocks'
    assert str(tmp_path / 'full' / 'run') in msg


# -- 8. Ctrl-C ------------------------------------------------------------------------------------------
def test_ctrl_c_exits_130_with_only_its_message(tmp_path, env):
    wd = tmp_path / 'run'
    p = popen(wd, '--config.train.duration=3000 steps', '--config.train.log_every_steps=5', env=env)
    try:
        line = ''
        deadline = time.time() + 180
        while 'it/s' not in line and time.time() < deadline:  # training has started
            line = p.stderr.readline()
            if not line and p.poll() is not None:
                break
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err[-3000:]
    assert 'Traceback' not in err and 'KeyboardInterrupt' not in err, err[-3000:]
    assert len([l for l in lines(out + err) if l.startswith('interrupted at step')]) == 1
    assert not (wd / 'run.lock').exists()


# -- 5. the image-folder dataset is keyed by its content ----------------------------------------------
def test_changed_image_folder_is_rebuilt_and_the_run_says_so(tmp_path, env):
    """Images added to a folder after a run built its dataset: the next launch rebuilds it (the cache key
    holds the folder's file list, sizes and mtimes), says so, and trains on every image."""
    from PIL import Image

    src = tmp_path / 'digits'
    rng = np.random.default_rng(0)
    for split, n in (('train', 48), ('test', 12)):
        for i in range(n):
            d = src / split / str(i % 3)
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(d / f'{i}.png')
    cfg = f'--config=experiments/classification/lenet5_mnist.py:folder,path={src}'
    args = ['--config.train.duration=2 steps', '--config.train.batch_size=16', '--config.train.eval_every=']
    r = launch(tmp_path / 'a', *args, env=env, config=cfg, short=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / 'a' / 'config.json').read_text())['_resolved']['steps_per_epoch'] == 3
    for i in range(48, 64):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(src / 'train' / '0' / f'{i}.png')
    r = launch(tmp_path / 'b', *args, env=env, config=cfg, short=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'changed since it was built' in r.stdout + r.stderr and str(src) in r.stdout + r.stderr
    assert json.loads((tmp_path / 'b' / 'config.json').read_text())['_resolved']['steps_per_epoch'] == 4
