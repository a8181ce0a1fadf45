"""One writer per workdir: the lock file, and one-line errors for workdirs that cannot be written.

``with WorkdirLock(workdir, process_index=jax.process_index()):`` around everything a run writes.
The lock is ``<workdir>/run.lock``, a small JSON file (host, pid, the process's start time, when the
lock was taken, the command) created atomically (written to a private file, then ``os.link``-ed to
the lock's name: of two racing launches exactly one succeeds, and the file is never seen half
written). A second launch into a live workdir is refused at once with :class:`WorkdirLockedError`,
one line naming the holder. A lock whose process is dead (same host; pid gone, or reused by a
process started later) is stale: it is taken over with a warning, under a short-lived takeover
mutex so that two launches finding the same stale lock cannot both take it. The lock is removed on
exit (including Ctrl-C and exceptions); after ``kill -9`` it stays and is stale.

On multi-host runs only process 0 takes the lock (the others' ``WorkdirLock`` does nothing).
The lock needs a local or network filesystem with ``link``; on an object store (``gs://``) there is
no atomic create-if-absent through ``epath``, so no lock is taken there, with a warning (see
:func:`supports_lock`).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from etils import epath

from research import storage
from research.configlib import ConfigError

LOCK_NAME = 'run.lock'
_TAKEOVER_STALE_S = 30.0  # a takeover mutex older than this was left by a killed process


class WorkdirLockedError(RuntimeError):
    """Another live process holds the workdir (launch.py exits with code 1)."""


class WorkdirError(RuntimeError):
    """The workdir cannot be written (read-only filesystem, full disk...): one line with the path and
    what was saved before (launch.py exits with code 1)."""


# -- process identity -------------------------------------------------------------------------
def _hostname() -> str:
    return socket.gethostname()


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot; Linux), None if unknown."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(')', 1)[-1].split()
    return fields[19] if len(fields) > 19 else None  # field 22 of stat(5); fields[0] is field 3


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` on this host is running (and, if ``start`` is given, is the same process
    that had that start time, not a later one that reused the pid)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    except (OverflowError, ValueError):
        return False
    if start is not None:
        now = _process_start(int(pid))
        if now is not None and now != start:
            return False
        if now is None and sys.platform.startswith('linux'):
            return False  # no /proc entry: gone (a zombie still has one)
    return True


def supports_lock(path: Any) -> bool:
    return '://' not in str(path)


# -- the lock ----------------------------------------------------------------------------------
def _describe(holder: dict[str, Any]) -> str:
    since = holder.get('started_at')
    when = (
        time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since)) if isinstance(since, (int, float)) else '?'
    )
    return f'host {holder.get("host", "?")} pid {holder.get("pid", "?")} since {when}'


def read_lock(workdir: Any) -> dict[str, Any] | None:
    """The holder recorded in ``<workdir>/run.lock`` (None if there is none; ``{}`` if unreadable)."""
    path = epath.Path(workdir) / LOCK_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
        return holder if isinstance(holder, dict) else {}
    except ValueError:
        return {}


def lock_is_stale(holder: dict[str, Any]) -> bool:
    """A lock of this host whose process is gone. Locks of other hosts are never judged stale."""
    if not holder:
        return False  # unreadable: someone is writing it, or it is damaged: let the user decide
    if holder.get('host') != _hostname():
        return False
    return not pid_alive(holder.get('pid', -1), holder.get('pid_start'))


class WorkdirLock:
    """Context manager holding ``<workdir>/run.lock``; see the module docstring.

    ``acquire`` creates the workdir (a path that is a file raises :class:`ConfigError`; an unwritable
    one :class:`WorkdirError`), then takes the lock or raises :class:`WorkdirLockedError`.
    ``warn`` receives the one-line stale-lock message.
    """

    def __init__(
        self,
        workdir: Any,
        *,
        process_index: int = 0,
        warn: Callable[[str], None] = print,
        command: list[str] | None = None,
    ):
        self.workdir = epath.Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self.active = process_index == 0
        self.warn = warn
        self.held = False
        self.taken_over: dict[str, Any] | None = None  # the stale holder replaced, if any
        self.record = {
            'host': _hostname(),
            'pid': os.getpid(),
            'pid_start': _process_start(os.getpid()),
            'started_at': time.time(),
            'token': uuid.uuid4().hex,
            'command': list(sys.argv if command is None else command),
        }

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if not self.active or self.held:
            return
        prepare_workdir(self.workdir)
        if not supports_lock(self.workdir):
            self.warn(
                f'workdir {self.workdir}: no run lock on an object store (no atomic create through epath); '
                'make sure no other run writes this workdir'
            )
            return
        mine = self.workdir / f'.{LOCK_NAME}.{self.record["host"]}.{os.getpid()}.{self.record["token"][:8]}'
        try:
            _write(mine, json.dumps(self.record))
            for _ in range(20):
                if _try_link(mine, self.path):
                    self.held = True
                    return
                holder = read_lock(self.workdir)
                if holder is None:  # released between our link and our read: try again
                    continue
                if not lock_is_stale(holder):
                    raise WorkdirLockedError(self._refusal(holder))
                if self._remove_stale(holder):
                    self.taken_over = holder
                    self.warn(
                        f'workdir {self.workdir}: taking over the stale lock of {_describe(holder)} '
                        '(that process is gone)'
                    )
            raise WorkdirLockedError(f'workdir {self.workdir}: could not take {self.path} (contended)')
        except OSError as e:
            raise workdir_error(e, self.workdir, doing='taking the run lock', saved='nothing') from None
        finally:
            try:
                os.unlink(str(mine))
            except OSError:
                pass

    def _refusal(self, holder: dict[str, Any]) -> str:
        if not holder:
            return (
                f'workdir {self.workdir} is locked by {self.path}, which is unreadable; if no run uses this '
                'workdir, delete that file'
            )
        same_host = holder.get('host') == _hostname()
        hint = (
            'wait for it to finish, stop it, or use another --workdir'
            if same_host
            else f'if that run is dead, delete {self.path}; else use another --workdir'
        )
        return f'workdir {self.workdir} is in use by another run ({_describe(holder)}): {hint}'

    def _remove_stale(self, holder: dict[str, Any]) -> bool:
        """Removes the lock if it still is ``holder``'s, under the takeover mutex. True if removed."""
        mutex = self.workdir / f'{LOCK_NAME}.takeover'
        deadline = time.monotonic() + 10.0
        while True:
            try:
                fd = os.open(str(mutex), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                try:
                    age = time.time() - os.stat(str(mutex)).st_mtime
                except FileNotFoundError:
                    continue
                if age > _TAKEOVER_STALE_S:
                    try:
                        os.unlink(str(mutex))
                    except FileNotFoundError:
                        pass
                    continue
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
        try:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            if read_lock(self.workdir) == holder:
                os.unlink(str(self.path))
                return True
            return False
        finally:
            try:
                os.unlink(str(mutex))
            except FileNotFoundError:
                pass

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            if read_lock(self.workdir) == self.record:
                os.unlink(str(self.path))
        except OSError:
            pass


def _write(path: epath.Path, text: str) -> None:
    fd = os.open(str(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _try_link(src: epath.Path, dst: epath.Path) -> bool:
    try:
        os.link(str(src), str(dst))
        return True
    except FileExistsError:
        return False


# -- workdir problems ---------------------------------------------------------------------------
_IO_ERRNOS = {
    errno.ENOSPC: 'no space left on the device',
    errno.EDQUOT: 'disk quota exceeded',
    errno.EROFS: 'read-only file system',
    errno.EACCES: 'permission denied',
    errno.EPERM: 'operation not permitted',
}
_IO_TEXT = {  # errors that reach us as text (TensorStore, orbax's background threads)
    'No space left on device': errno.ENOSPC,
    'Disk quota exceeded': errno.EDQUOT,
    'Read-only file system': errno.EROFS,
}


def prepare_workdir(workdir: Any) -> epath.Path:
    """Creates ``workdir`` (and parents). A path that is a file raises :class:`ConfigError` (exit 2);
    one that cannot be created or written raises :class:`WorkdirError` (exit 1), one line each."""
    path = epath.Path(workdir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f'--workdir={workdir}: is an existing file, not a directory')
    # On an object store a "folder" is a name prefix (an object may share its name, and the bucket's
    # parent `gs://` is no path): only local parents are checked.
    for parent in path.parents if not storage.is_remote(path) else ():
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f'--workdir={workdir}: {parent} is an existing file, not a directory')
    try:
        path.mkdir(parents=True, exist_ok=True)
        if supports_lock(path) and not os.access(str(path), os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        if supports_lock(path):
            probe = path / f'.write_test.{os.getpid()}'
            _write(probe, '')
            os.unlink(str(probe))
    except OSError as e:
        raise workdir_error(e, path, doing='creating the workdir', saved='nothing') from None
    return path


def io_errno(exc: BaseException) -> int | None:
    """The errno of a disk-full / read-only / permission failure in ``exc`` or its causes, else None.

    Orbax and TensorStore report them wrapped in other exceptions (ValueError, JaxRuntimeError...),
    so the chain and the messages are searched."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _IO_ERRNOS:
            return exc.errno
        text = str(exc)
        for needle, code in _IO_TEXT.items():
            if needle in text:
                return code
        exc = exc.__cause__ or exc.__context__
    return None


def workdir_error(exc: BaseException, path: Any, *, doing: str, saved: str) -> WorkdirError:
    """``WorkdirError('cannot write <path> (<why>) while <doing>; saved: <saved>')``: one line.

    ``saved`` says what survives (e.g. ``'checkpoint step 40 (runs/x/checkpoints/40), metrics to step 44'``).
    """
    code = io_errno(exc)
    if code is not None:
        why = _IO_ERRNOS[code]
    else:
        why = f'{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ""}'
    where = getattr(exc, 'filename', None) or path
    return WorkdirError(f'cannot write {where} ({why}) while {doing}; saved: {saved}')
