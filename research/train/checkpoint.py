"""Orbax checkpoints of the train state and the data-iterator state: keep-last-k, checksums, fallback.

Every checkpoint ``checkpoints/<step>/`` carries ``checksums.json``: the size and sha256 of each of
its files, written into orbax's temporary directory after every byte of the step is on disk and
before orbax's atomic rename (or commit file) makes the step visible, so no finished checkpoint
lacks its record, with sync and async saves alike. Every restore checks the record first, so
unverified bytes never reach orbax or TensorStore. :meth:`Checkpointer.restore_latest` falls back
to the newest step that verifies, moving a bad one aside to ``checkpoints/corrupt/<step>-<time>``
(never deleting it). :meth:`Checkpointer.last_good` finds the step to name after a NaN stop: it must
verify, be finite (parameters, BatchNorm statistics, optimizer state) and have parameters that are
not blown up.

Paths are ``etils.epath`` paths, so a ``gs://`` workdir takes the same code (tested on local paths).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from research import storage
from research.configlib import ConfigError

CHECKSUMS = 'checksums.json'
# Files orbax writes or rewrites at the step's root *after* the record (the commit timestamp in
# _CHECKPOINT_METADATA, the success marker). Neither holds array bytes or the iterator state.
UNHASHED = ('_CHECKPOINT_METADATA', 'commit_success.txt', CHECKSUMS)
CORRUPT_DIR = 'corrupt'  # checkpoints/corrupt/<step>-<time>: steps that failed verification
REWOUND_DIR = 'rewound'  # checkpoints/rewound/<step>-<time>: steps set aside by `rewind`
_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored into this run (corrupt, or of another model/optimizer)."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint whose files do not match its checksum record (or that has none)."""

    def __init__(self, step: int, reason: str, path: Any):
        self.step, self.reason, self.path = step, reason, path
        super().__init__(f'checkpoint step {step} ({path}) failed verification: {reason}')


def as_path(path: Any) -> epath.Path:
    """``path`` as an ``epath.Path``; local paths made absolute (orbax wants absolute paths)."""
    p = epath.Path(path)
    return p if '://' in str(path) else p.resolve()


# -- checksums ----------------------------------------------------------------------------------
def _sha256(path: epath.Path) -> str:
    h = hashlib.sha256()
    with path.open('rb') as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(step_dir: epath.Path) -> dict[str, epath.Path]:
    """Relative path -> path of every file under ``step_dir`` except the unhashed root files."""
    out = {}
    for root, _, names in storage.walk(step_dir):
        for name in names:
            path = epath.Path(root) / name
            rel = str(path.relative_to(step_dir))
            if rel not in UNHASHED:
                out[rel] = path
    return out


def file_digests(step_dir: Any) -> dict[str, list]:
    """``{relative path: [size, sha256 hex]}`` of the files of a checkpoint directory."""
    step_dir = epath.Path(step_dir)
    return {rel: [int(p.stat().length), _sha256(p)] for rel, p in sorted(_files(step_dir).items())}


def write_checksums(step_dir: Any) -> None:
    """Writes ``checksums.json`` for the files now in ``step_dir`` (atomically: temp file + rename)."""
    step_dir = epath.Path(step_dir)
    record = {'algorithm': 'sha256', 'files': file_digests(step_dir)}
    tmp = step_dir / (CHECKSUMS + '.tmp')
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(step_dir / CHECKSUMS)


def has_checksums(step_dir: Any) -> bool:
    return (epath.Path(step_dir) / CHECKSUMS).exists()


def verify_dir(step_dir: Any) -> str | None:
    """None if every recorded file of ``step_dir`` has its recorded size and sha256, else why not.

    Sizes are checked for all files first (a stat each: truncated, zero-byte and missing files are
    found without reading), then the hashes. Read errors other than a missing file propagate (an
    unreadable filesystem is not a corrupt checkpoint).
    """
    step_dir = epath.Path(step_dir)
    try:
        record = json.loads((step_dir / CHECKSUMS).read_text())
        files = record['files']
    except FileNotFoundError:
        return f'no {CHECKSUMS} record'
    except (ValueError, KeyError, TypeError):
        return f'unreadable {CHECKSUMS}'
    for rel, (size, _) in files.items():
        path = step_dir / rel
        if not path.exists():
            return f'{rel} is missing'
        actual = int(path.stat().length)
        if actual != size:
            return f'{rel} has {actual} bytes, {size} recorded' + (' (truncated)' if actual < size else '')
    for rel, (_, digest) in files.items():
        if _sha256(step_dir / rel) != digest:
            return f'{rel} does not match its sha256 (bytes changed)'
    return None


def _checksummed(base: type) -> type:
    """An orbax TemporaryPath class that records the checksums just before the step is committed.

    orbax calls ``finalize`` on the primary process once every process's writes and the handlers'
    own finalisation (OCDBT manifest merge) are done; ``finalize`` then stamps the commit time into
    ``_CHECKPOINT_METADATA``, writes ``commit_success.txt`` and renames the directory (or, on object
    stores, the success file commits it). The record is written first, in the temporary directory.
    """

    class Checksummed(base):
        async def finalize(self, *args, **kwargs):
            # orbax uses this class for the step directory and for its items (state/, data/, meta/):
            # record once, for the step (named by its number), covering the items' files.
            if epath.Path(self.get_final()).name.isdigit():
                await asyncio.to_thread(write_checksums, epath.Path(self.get()))
            return await super().finalize(*args, **kwargs)

    Checksummed.__name__ = Checksummed.__qualname__ = f'Checksummed{base.__name__}'
    return Checksummed


_RENAME = _checksummed(ocp.path.atomicity.AtomicRenameTemporaryPath)
_COMMIT_FILE = _checksummed(ocp.path.atomicity.CommitFileTemporaryPath)


def _temporary_path_class(directory: epath.Path) -> type:
    default = ocp.path.atomicity_defaults.get_default_temporary_path_class(directory)
    return _COMMIT_FILE if issubclass(default, ocp.path.atomicity.CommitFileTemporaryPath) else _RENAME


class _DropOrbaxErrors(logging.Filter):
    """Drops orbax's ERROR log records (with their tracebacks) from the absl logger: the same failure
    reaches the caller as an exception (e.g. a full disk from ``save``/``wait``) and is reported there
    in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and f'{os.sep}orbax{os.sep}' in (record.pathname or ''))


_ORBAX_FILTER = _DropOrbaxErrors()


def quiet_orbax_errors(enable: bool = True) -> None:
    """Keeps orbax's multi-block ERROR logs (background-thread tracebacks) off stderr, or (False)
    lets them through again. For entry points (``launch.py`` without ``--verbose``); no effect on
    import."""
    logger = logging.getLogger('absl')
    if enable:
        logger.addFilter(_ORBAX_FILTER)
        if not getattr(sys.excepthook, '_drops_closed_loop', False):
            sys.excepthook = _drop_closed_loop(sys.excepthook)
    else:
        logger.removeFilter(_ORBAX_FILTER)
        sys.excepthook = getattr(sys.excepthook, '_wrapped', sys.excepthook)


def _drop_closed_loop(hook):
    """After a failed save, TensorStore's completion callbacks may still call into orbax's closed
    asyncio loop and print ``RuntimeError: Event loop is closed`` through ``sys.excepthook``."""

    def excepthook(kind, value, tb):
        if kind is RuntimeError and str(value) == 'Event loop is closed':
            return
        hook(kind, value, tb)

    excepthook._drops_closed_loop = True
    excepthook._wrapped = hook
    return excepthook


def check_keep(keep: Any) -> int:
    """``train.keep_checkpoints`` must be an integer >= 1 (the final checkpoint is always kept)."""
    if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or keep < 1:
        raise ConfigError(
            f'train.keep_checkpoints={keep!r}: must be an integer >= 1 (the newest k checkpoints are '
            'kept; the final one always)'
        )
    return int(keep)


def _one_line(e: BaseException, limit: int = 240) -> str:
    """``Type: first line of the message`` (TensorStore errors carry a multi-line JSON spec)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ''
    if len(text) > limit:
        text = text[: limit - 3] + '...'
    return f'{type(e).__name__}: {text}' if text else type(e).__name__


def _finite_and_rms(tree: Any) -> tuple[bool, float]:
    """Whether every float leaf is finite, and the root-mean-square of the leaves (float64)."""
    total, count, finite = 0.0, 0, True
    for leaf in jax.tree.leaves(tree):
        a = np.asarray(leaf)
        if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.complexfloating):
            continue
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            finite = False
            continue
        total += float(np.sum(np.abs(a) ** 2))
        count += a.size
    return finite, math.sqrt(total / count) if count else 0.0


# -- the checkpointer ---------------------------------------------------------------------------
@dataclasses.dataclass
class Restored:
    """What :meth:`Checkpointer.restore_latest` returns."""

    step: int
    state: Any
    data: Any
    meta: dict[str, Any]
    skipped: list[tuple[int, str]]  # newer steps that failed verification (moved aside), and why


@dataclasses.dataclass
class LastGood:
    """The answer of :meth:`Checkpointer.last_good` for a NaN stop at ``nan_step``."""

    nan_step: int
    step: int | None  # newest checkpoint before the NaN that verifies, is finite and not blown up
    earlier: int | None  # the good checkpoint before ``step`` (None: only step 0 is earlier)
    rejected: list[tuple[int, str]]  # newer checkpoints (newest first) and why each was rejected
    rms: float | None = None  # parameter root-mean-square of ``step``
    reference_rms: float | None = None

    @property
    def right_before(self) -> bool:
        """``step`` is the newest checkpoint before the blow-up (no rejected one in between)."""
        return self.step is not None and not self.rejected

    def message(self, directory: Any = '', lr: Any = None) -> str:
        """The sentences after ``loss is nan at step N (epoch E); stopping.`` (one line)."""
        where = f' in {directory}' if directory else ''
        lr_now = f' (now {lr})' if lr is not None else ''
        rejected = '; '.join(f'step {s}: {why}' for s, why in self.rejected)
        rejected = f' Rejected: {rejected}.' if rejected else ''
        if self.step is None:
            return (
                f'No good checkpoint is kept{where}.{rejected} Lower optimizer.lr{lr_now} or add a '
                'warm-up and start again from step 0 (a new --workdir).'
            )
        scale = ''
        if self.rms is not None and self.reference_rms:
            scale = f'; parameter RMS {self.rms:.3g}, {self.rms / self.reference_rms:.2g}x the reference'
        head = f'The last good checkpoint is step {self.step}{where} (verified, finite{scale}).{rejected}'
        if self.right_before:
            restart = f'step {self.earlier}' if self.earlier is not None else 'step 0 (a new --workdir)'
            return (
                f'{head} It is the checkpoint right before the blow-up, and resume is exact, so relaunching '
                f'from it repeats the NaN; lowering optimizer.lr{lr_now} needs the run restarted from an '
                f'earlier step: {restart}'
                + (
                    f' (python -m research.train.checkpoint_tool rewind <workdir> {self.earlier}, then '
                    'relaunch with the lower lr and --allow_config_change).'
                    if self.earlier is not None
                    else '.'
                )
            )
        return (
            f'{head} To lower optimizer.lr{lr_now}, restart from step {self.step} (python -m '
            f'research.train.checkpoint_tool rewind <workdir> {self.step}, then relaunch with the lower lr '
            'and --allow_config_change).'
        )


class Checkpointer:
    """Saves ``{'state': arrays, 'data': iterator state, 'meta': json}`` under ``workdir/checkpoints``.

    ``keep`` (``train.keep_checkpoints``) must be >= 1: the newest ``keep`` steps are kept, so the
    final checkpoint always is. ``cleanup_tmp``: remove orbax temporary directories left by a killed
    run; only for the run that holds the workdir lock (a reader must not touch a live run's files).
    """

    def __init__(self, workdir: Any, *, keep: int = 3, async_save: bool = True, cleanup_tmp: bool = False):
        keep = check_keep(keep)
        self.directory = as_path(workdir) / 'checkpoints'
        self.async_save = bool(async_save)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            # Always the async checkpointer (its finalize is where the checksums are recorded);
            # `async_save=False` waits for each save to finish.
            enable_async_checkpointing=True,
            cleanup_tmp_directories=cleanup_tmp,
            temporary_path_class=_temporary_path_class(self.directory),
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                'state': ocp.StandardCheckpointHandler(),
                'data': ocp.JsonCheckpointHandler(),
                'meta': ocp.JsonCheckpointHandler(),
            },
        )

    # -- listing ----------------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        """The newest step on disk (not verified: use :meth:`restore_latest` to resume)."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def verify(self, step: int) -> str | None:
        """None if checkpoint ``step`` matches its checksum record, else the reason (one phrase)."""
        return verify_dir(self.step_dir(step))

    # -- save -------------------------------------------------------------------------------------
    def save(self, step: int, state_arrays: Any, data_state: Any, meta: dict[str, Any]) -> None:
        """Saves ``step`` (waits for it when ``async_save=False``).

        On a local disk with too little free space for the arrays (uncompressed, plus 10%), raises
        ``OSError(ENOSPC)`` before anything is written (orbax would fail half-way, from a background
        thread); the previous checkpoints stay as they are.
        """
        self._check_space(step, state_arrays)
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state_arrays),
                data=ocp.args.JsonSave(_jsonable(data_state)),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        if not self.async_save:
            self.manager.wait_until_finished()

    def _check_space(self, step: int, state_arrays: Any) -> None:
        if '://' in str(self.directory):
            return
        need = int(1.1 * sum(int(getattr(x, 'nbytes', 0)) for x in jax.tree.leaves(state_arrays))) + (1 << 16)
        self.manager.wait_until_finished()  # the previous save's bytes are on disk
        free = shutil.disk_usage(str(self.directory)).free
        if free < need:
            raise OSError(
                errno.ENOSPC,
                f'No space left on device: checkpoint step {step} needs about {need / 1e6:.1f} MB, '
                f'{free / 1e6:.1f} MB free',
                str(self.step_dir(step)),
            )

    # -- restore ----------------------------------------------------------------------------------
    def _check(self, step: int) -> None:
        reason = self.verify(step)
        if reason is not None:
            raise CorruptCheckpointError(step, reason, self.step_dir(step))

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any, dict[str, Any]]:
        """Verifies ``step``, then restores it onto the shardings of ``abstract_state``.

        Raises :class:`CorruptCheckpointError` if the files do not match their record (nothing is
        read by orbax then), :class:`CheckpointError` (one line) if orbax cannot restore them into
        this state (another model or optimizer).
        """
        self._check(step)
        path = self.step_dir(step)
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:  # orbax raises many types for mismatched trees
            raise CheckpointError(
                f'cannot restore checkpoint {path}: {_one_line(e)}. It verifies against its checksums, '
                'so it was written by a different model/optimizer config: use another --workdir'
            ) from e
        _check_tree(restored['state'], abstract_state, path)
        return restored['state'], restored['data'], dict(restored['meta'] or {})

    def restore_latest(self, abstract_state: Any, *, warn: Callable[[str], None] = print) -> Restored | None:
        """Restores the newest checkpoint that verifies; None if there is no checkpoint at all.

        A newer step that fails verification is moved to ``checkpoints/corrupt/<step>-<time>`` with one
        ``warn`` line naming it. Call only from the process that writes the workdir (it holds the
        lock); on multi-host runs process 0 decides and the step is broadcast to the others.
        Raises :class:`CheckpointError` (one line) when checkpoints exist but none verifies.
        """
        steps = self.all_steps()
        if not steps:
            return None
        skipped: list[tuple[int, str]] = []
        chosen = None
        if jax.process_index() == 0:
            legacy = not any(has_checksums(self.step_dir(s)) for s in steps)
            if legacy:
                raise CheckpointError(
                    f'the checkpoints in {self.directory} (steps {", ".join(map(str, steps))}) have no '
                    f'{CHECKSUMS} record (written before checksums existed), so they cannot be verified; '
                    f'to trust them: python -m research.train.checkpoint_tool trust {self.directory.parent}'
                )
            for step in reversed(steps):
                reason = self.verify(step)
                if reason is None:
                    chosen = step
                    break
                dest = self.set_aside(step, CORRUPT_DIR)
                skipped.append((step, reason))
                older = [s for s in steps if s < step]
                then = f'trying step {older[-1]}' if older else 'no older checkpoint'
                warn(f'checkpoint step {step} failed verification ({reason}); moved to {dest}; {then}')
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            chosen = int(multihost_utils.broadcast_one_to_all(np.int64(-1 if chosen is None else chosen)))
            chosen = None if chosen < 0 else chosen
            self.manager.reload()
        if chosen is None:
            raise CheckpointError(
                f'no checkpoint in {self.directory} verifies (moved to {self.directory / CORRUPT_DIR}); '
                'relaunch to start again from step 0, or use another --workdir'
            )
        state, data, meta = self.restore(chosen, abstract_state)
        return Restored(chosen, state, data, meta, skipped)

    def restore_raw(self, step: int | None = None) -> dict[str, Any]:
        """The arrays of a (verified) checkpoint as saved (host numpy arrays), without a target."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f'no checkpoint in {self.directory}')
        self._check(step)
        try:
            try:
                return self.manager.restore(step)['state']
            except ValueError:  # saved on another topology (other devices/processes): onto one device
                one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
                meta = self.manager.item_metadata(step)['state']
                target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
                restored = self.manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
                )
                return restored['state']
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f'cannot read checkpoint {self.step_dir(step)}: {_one_line(e)}') from e

    # -- NaN stops --------------------------------------------------------------------------------
    def last_good(
        self, nan_step: int, *, reference_params: Any = None, blowup_factor: float = 100.0
    ) -> LastGood:
        """The newest checkpoint before ``nan_step`` to restart from after a non-finite loss.

        A checkpoint is good when it verifies against its checksums, every float array of its state
        (parameters, BatchNorm statistics, optimizer state) is finite, and its parameters are not blown
        up: their root-mean-square is at most ``blowup_factor`` times the reference's.
        ``reference_params`` is the run's initial parameters (the loop can rebuild them from the seed);
        without it, the oldest kept checkpoint that verifies and is finite is the reference. (Without
        data the loss cannot be checked; a diverging run's parameters grow by orders of magnitude,
        normal training changes their RMS by a small factor.)
        """
        self.wait()
        steps = [s for s in self.all_steps() if s < nan_step]
        checked: dict[int, tuple[str | None, float | None]] = {}

        def check(step: int) -> tuple[str | None, float | None]:
            if step not in checked:
                reason, rms, state = None, None, None
                try:
                    state = self.restore_raw(step)  # verifies first
                except CorruptCheckpointError as e:
                    reason = e.reason
                except CheckpointError as e:  # verified bytes orbax cannot read: not a restart point
                    reason = str(e)
                if state is not None:
                    finite, _ = _finite_and_rms(state)
                    if finite:
                        _, rms = _finite_and_rms(state.get('params', state))
                    else:
                        bad = [k for k, v in state.items() if not _finite_and_rms(v)[0]] or ['state']
                        reason = f'{"/".join(bad)} not finite'
                checked[step] = (reason, rms)
            return checked[step]

        ref = None
        if reference_params is not None:
            ref = _finite_and_rms(reference_params)[1]
        else:
            for s in steps:
                reason, rms = check(s)
                if reason is None:
                    ref = rms
                    break
        rejected: list[tuple[int, str]] = []
        good: list[int] = []
        good_rms: dict[int, float] = {}
        for s in reversed(steps):
            reason, rms = check(s)
            if reason is None and ref and rms is not None and rms > blowup_factor * ref:
                reason = f'parameters blown up (RMS {rms:.3g}, {rms / ref:.3g}x the reference {ref:.3g})'
            if reason is None:
                good.append(s)
                good_rms[s] = rms
                if len(good) == 2:
                    break
            elif not good:
                rejected.append((s, reason))
        step = good[0] if good else None
        return LastGood(
            nan_step=nan_step,
            step=step,
            earlier=good[1] if len(good) > 1 else None,
            rejected=rejected,
            rms=good_rms.get(step) if step is not None else None,
            reference_rms=ref,
        )

    # -- moving steps aside -----------------------------------------------------------------------
    def set_aside(self, step: int, kind: str = CORRUPT_DIR) -> epath.Path:
        """Moves ``checkpoints/<step>`` to ``checkpoints/<kind>/<step>-<time>`` (never deletes)."""
        src = self.step_dir(step)
        dest_dir = self.directory / kind
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
        n = 1
        while dest.exists():
            n += 1
            dest = dest_dir / f'{step}-{time.strftime("%Y%m%d-%H%M%S")}-{n}'
        src.rename(dest)
        self.manager.reload()
        return dest

    def rewind(self, step: int) -> list[epath.Path]:
        """Sets every checkpoint newer than ``step`` aside (``checkpoints/rewound/``): the next launch
        resumes from ``step``. ``step`` must be a checkpoint that verifies."""
        steps = self.all_steps()
        if step not in steps:
            raise CheckpointError(f'no checkpoint step {step} in {self.directory} (steps: {steps})')
        self._check(step)
        return [self.set_aside(s, REWOUND_DIR) for s in steps if s > step]

    def trust(self) -> list[int]:
        """Records checksums for the steps that have none (checkpoints written before checksums)."""
        done = []
        for s in self.all_steps():
            if not has_checksums(self.step_dir(s)):
                write_checksums(self.step_dir(s))
                done.append(s)
        return done

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding skeleton of a pytree of arrays (the restore target)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)), tree
    )


def _check_tree(restored: Any, target: Any, path: Any) -> None:
    r_paths = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(restored)}
    t_paths = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(target)}
    if r_paths.keys() != t_paths.keys():
        missing = sorted(t_paths.keys() - r_paths.keys())[:5]
        extra = sorted(r_paths.keys() - t_paths.keys())[:5]
        raise CheckpointError(
            f'checkpoint {path} does not match this model: missing {missing}, unexpected {extra}'
        )
    for k, t in t_paths.items():
        if tuple(r_paths[k].shape) != tuple(t.shape):
            raise CheckpointError(
                f'checkpoint {path} does not match this model: {k} has shape '
                f'{tuple(r_paths[k].shape)} in the checkpoint, {tuple(t.shape)} here'
            )


def _jsonable(x: Any) -> Any:
    """grain iterator states are JSON-friendly dicts (bytes are decoded)."""
    if isinstance(x, bytes):
        return {'__bytes__': x.decode('latin1')}
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def from_jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {'__bytes__'}:
            return x['__bytes__'].encode('latin1')
        return {k: from_jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [from_jsonable(v) for v in x]
    return x
