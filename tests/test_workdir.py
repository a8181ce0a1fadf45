"""The workdir lock (one writer per workdir) and one-line errors for unwritable workdirs."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from research.config import ConfigError
from research.train import workdir as wd
from research.train.workdir import WorkdirError, WorkdirLock, WorkdirLockedError

REPO = Path(__file__).resolve().parents[1]

_HOLD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from research.train.workdir import WorkdirLock
with WorkdirLock(sys.argv[2]):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(tmp_path, workdir):
    script = tmp_path / 'hold.py'
    script.write_text(_HOLD)
    p = subprocess.Popen(
        [sys.executable, str(script), str(REPO), str(workdir)], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout.readline().strip() == 'held'
    return p


def test_lock_records_holder_and_is_released(tmp_path):
    workdir = tmp_path / 'run'
    with WorkdirLock(workdir) as lock:
        holder = json.loads((workdir / 'run.lock').read_text())
        assert holder['host'] == socket.gethostname() and holder['pid'] == os.getpid()
        assert abs(holder['started_at'] - time.time()) < 60 and lock.held
        assert sorted(os.listdir(workdir)) == ['run.lock']  # no stray temp files
    assert os.listdir(workdir) == []


def test_second_acquire_into_a_live_workdir_is_refused_at_once(tmp_path):
    p = _holder(tmp_path, tmp_path / 'run')
    try:
        before = (tmp_path / 'run' / 'run.lock').read_bytes()
        t0 = time.perf_counter()
        with pytest.raises(WorkdirLockedError) as e:
            WorkdirLock(tmp_path / 'run').acquire()
        assert time.perf_counter() - t0 < 2
        msg = str(e.value)
        assert '\n' not in msg and f'pid {p.pid}' in msg and f'host {socket.gethostname()}' in msg
        assert 'in use by another run' in msg and 'since 20' in msg
        assert (tmp_path / 'run' / 'run.lock').read_bytes() == before
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def test_stale_lock_after_kill_9_is_taken_over_with_a_warning(tmp_path):
    p = _holder(tmp_path, tmp_path / 'run')
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    p.stdout.close()
    assert (tmp_path / 'run' / 'run.lock').exists()
    warnings = []
    with WorkdirLock(tmp_path / 'run', warn=warnings.append) as lock:
        assert lock.taken_over['pid'] == p.pid
        assert json.loads((tmp_path / 'run' / 'run.lock').read_text())['pid'] == os.getpid()
    assert len(warnings) == 1 and f'stale lock of host {socket.gethostname()} pid {p.pid}' in warnings[0]
    assert '\n' not in warnings[0]


def test_reused_pid_is_stale_and_other_hosts_are_never_judged(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    # our own (live) pid, but a different process start time: the pid was reused
    (run / 'run.lock').write_text(
        json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'pid_start': '1'})
    )
    with WorkdirLock(run, warn=lambda m: None) as lock:
        assert lock.taken_over is not None
    (run / 'run.lock').write_text(json.dumps({'host': 'elsewhere-7', 'pid': 1, 'started_at': 0}))
    with pytest.raises(WorkdirLockedError, match='host elsewhere-7 pid 1 .*if that run is dead, delete'):
        WorkdirLock(run).acquire()


def _race(args):
    workdir, barrier = args
    barrier.wait()
    lock = WorkdirLock(workdir, warn=lambda m: None)
    try:
        lock.acquire()
    except WorkdirLockedError:
        return 0
    time.sleep(1.0)  # hold while the others try
    lock.release()
    return 1


# The racers are forked (instant); they only touch files, never JAX, so its fork warning does not apply.
@pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')
@pytest.mark.parametrize('stale', [False, True])
def test_racing_launches_exactly_one_wins(tmp_path, stale):
    run = tmp_path / 'run'
    run.mkdir()
    if stale:  # a dead process's lock: every racer sees it stale and tries to take it over
        p = subprocess.Popen([sys.executable, '-c', 'pass'])
        p.wait()
        (run / 'run.lock').write_text(json.dumps({'host': socket.gethostname(), 'pid': p.pid, 'token': 'x'}))
    ctx = mp.get_context('fork')
    n = 6
    with ctx.Manager() as manager:
        barrier = manager.Barrier(n)
        with ctx.Pool(n) as pool:
            wins = pool.map(_race, [(str(run), barrier)] * n)
    assert sum(wins) == 1, wins
    assert not (run / 'run.lock').exists() and not (run / 'run.lock.takeover').exists()
    assert os.listdir(run) == []


def test_only_process_zero_takes_the_lock(tmp_path):
    with WorkdirLock(tmp_path / 'run', process_index=1) as lock:
        assert not lock.held and not (tmp_path / 'run' / 'run.lock').exists()


def test_workdir_that_is_a_file_is_a_config_error(tmp_path):
    f = tmp_path / 'afile'
    f.write_text('x')
    with pytest.raises(ConfigError, match=r'^--workdir=.*afile: is an existing file, not a directory$'):
        WorkdirLock(f).acquire()
    with pytest.raises(ConfigError, match='afile is an existing file'):
        wd.prepare_workdir(f / 'sub')
    assert f.read_text() == 'x'


def test_io_errors_are_one_line_with_path_and_what_was_saved(tmp_path):
    e = wd.workdir_error(
        OSError(errno.EROFS, 'Read-only file system', '/ro/run'),
        '/ro/run',
        doing='creating the workdir',
        saved='nothing',
    )
    assert str(e) == 'cannot write /ro/run (read-only file system) while creating the workdir; saved: nothing'
    try:  # TensorStore/orbax report a full disk as text inside other exception types
        try:
            raise OSError(errno.ENOSPC, 'No space left on device')
        except OSError as inner:
            raise ValueError('Error writing local file "/x/d/abc": No space left on device [...]') from inner
    except ValueError as outer:
        e = wd.workdir_error(
            outer,
            '/x/checkpoints/40',
            doing='saving checkpoint step 40',
            saved='checkpoint step 20 (/x/checkpoints/20)',
        )
    assert isinstance(e, WorkdirError) and '\n' not in str(e)
    assert str(e).startswith(
        'cannot write /x/checkpoints/40 (no space left on the device) while saving checkpoint'
    )
    assert str(e).endswith('saved: checkpoint step 20 (/x/checkpoints/20)')
    assert wd.io_errno(ValueError('shape mismatch')) is None


def _can_mount() -> bool:
    r = subprocess.run(
        ['unshare', '-m', 'sh', '-c', 'mount -t tmpfs -o size=1m tmpfs /mnt'],
        capture_output=True,
        check=False,
    )
    return r.returncode == 0


@pytest.mark.skipif(not sys.platform.startswith('linux') or not _can_mount(), reason='needs mount namespaces')
def test_read_only_workdir_is_one_line(tmp_path):
    script = (
        f'mount -t tmpfs -o size=1m,ro tmpfs {tmp_path} && '
        f'{sys.executable} -c \'import sys; sys.path.insert(0, "{REPO}"); '
        'from research.train.workdir import WorkdirLock; '
        f'WorkdirLock("{tmp_path}/run").acquire()\''
    )
    r = subprocess.run(['unshare', '-m', 'sh', '-c', script], capture_output=True, text=True, check=False)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last == (
        f'research.train.workdir.WorkdirError: cannot write {tmp_path}/run (read-only file system) '
        'while creating the workdir; saved: nothing'
    ), r.stderr
