"""Metric writers (JSONL, TensorBoard, Weights & Biases), a profiler hook, and a terminal progress
bar with throughput and ETA.

The run loops talk to one :class:`MetricWriter`: ``write(split, step, metrics)`` for scalars,
``image(tag, step, path_or_array)`` for pictures, ``close()`` at the end. It fans out to the writers
the config's ``logging`` section turns on:

- ``metrics.jsonl`` (:class:`JsonlWriter`), always: the ledger, the tables and the plots read it;
- TensorBoard event files in ``<workdir>/tb`` (:class:`TensorBoardWriter`, tensorboardX; on by default,
  ``logging.tensorboard``); view them with ``tensorboard --logdir runs`` (the ``tensorboard`` extra);
- Weights & Biases (:class:`WandbWriter`, ``logging.wandb=True``, the ``wandb`` extra): the scalars,
  the config and the pictures, one W&B run per workdir (a relaunch resumes it).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol, TextIO

import numpy as np
from etils import epath

from research import storage


class Writer(Protocol):
    """One destination of a run's metrics. ``MetricWriter`` calls these on the main process only."""

    def write(self, split: str, step: int, metrics: dict[str, Any]) -> None: ...

    def image(self, tag: str, step: int, image: np.ndarray, path: epath.Path | None) -> None: ...

    def close(self) -> None: ...


class JsonlWriter:
    """``workdir/metrics.jsonl``: one JSON object per line, ``{"split", "step", <metric>: value}``.

    On resume, rows past the restored step are dropped so the file reads as one run. Pictures are
    not recorded here (they are files in the workdir). In a remote workdir (an object store: no
    append) each row rewrites the file from the rows kept in memory."""

    def __init__(self, workdir: str | os.PathLike, *, resume_step: int = 0):
        self.path = storage.as_path(workdir) / 'metrics.jsonl'
        self._remote = storage.is_remote(self.path)
        self._text = ''
        text = storage.read_text(self.path)
        if text is not None:
            keep = [l for l in text.splitlines() if l.strip() and json.loads(l)['step'] <= resume_step]
            self._text = ''.join(l + '\n' for l in keep)
            self.path.write_text(self._text)

    def write(self, split: str, step: int, metrics: dict[str, Any]) -> None:
        row = {'split': split, 'step': int(step)}
        row.update({k: _plain(v) for k, v in metrics.items()})
        line = json.dumps(row) + '\n'
        if self._remote:
            self._text += line
            storage.write_text(self.path, self._text, parents=False)
        else:
            with self.path.open('a') as f:
                f.write(line)

    def image(self, tag: str, step: int, image: np.ndarray, path: epath.Path | None) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardWriter:
    """TensorBoard event files in ``workdir/tb`` (tensorboardX): scalars as ``<split>/<metric>``,
    pictures as images, the config as text. A resumed run purges the events past its step.

    In a remote workdir (``gs://...``) the event files are written through ``etils.epath`` (as
    tensorboardX's own S3/GCS writers do: the file is kept in memory and written whole at each
    flush), so any filesystem epath reaches works."""

    def __init__(self, workdir: str | os.PathLike, *, resume_step: int = 0, config: dict | None = None):
        from tensorboardX import SummaryWriter

        logdir = str(storage.as_path(workdir) / 'tb')
        if storage.is_remote(logdir):
            logdir = _epath_logdir(logdir)
        self._tb = SummaryWriter(logdir, purge_step=resume_step + 1 if resume_step else None)
        if config is not None and not resume_step:
            text = json.dumps(config, indent=2, default=str)
            self._tb.add_text('config', '    ' + text.replace('\n', '\n    '), 0)

    def write(self, split: str, step: int, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            v = _plain(v)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(f'{split}/{k}', v, int(step))

    def image(self, tag: str, step: int, image: np.ndarray, path: epath.Path | None) -> None:
        self._tb.add_image(tag, image, int(step), dataformats='HWC')

    def close(self) -> None:
        self._tb.close()


class _EpathRecordFile:
    """A tensorboardX event file written through ``etils.epath``: kept in memory, written whole on
    flush and close (object stores have no append)."""

    def __init__(self, path: str):
        self.path = epath.Path(path)
        self.buffer = io.BytesIO()
        self._written = 0

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        if self.buffer.tell() != self._written:
            self.path.write_bytes(self.buffer.getvalue())
            self._written = self.buffer.tell()

    def close(self) -> None:
        self.flush()


class _EpathRecordFactory:
    def open(self, path: str) -> _EpathRecordFile:
        return _EpathRecordFile(path[len(_EPATH_PREFIX) :])

    def directory_check(self, path: str) -> None:
        epath.Path(path[len(_EPATH_PREFIX) :]).mkdir(parents=True, exist_ok=True)


_EPATH_PREFIX = 'epath+'


def _epath_logdir(logdir: str) -> str:
    """``epath+<scheme>://...``: a logdir tensorboardX writes through :class:`_EpathRecordFactory`
    (registered for that prefix on first use)."""
    from tensorboardX import record_writer

    prefix = _EPATH_PREFIX + logdir.split('://', 1)[0]
    if prefix not in record_writer.REGISTERED_FACTORIES:
        record_writer.register_writer_factory(prefix, _EpathRecordFactory())
    return _EPATH_PREFIX + logdir


class WandbWriter:
    """A Weights & Biases run: scalars as ``<split>/<metric>`` against the run's ``step``, the config,
    and pictures as ``wandb.Image``. Files go to ``workdir/wandb``; the run id is kept in
    ``workdir/wandb_run_id`` so a relaunch of the same workdir continues the same W&B run. W&B keeps
    its files on a local disk: for a remote workdir (``gs://...``) they go to a local folder named by
    the workdir (:func:`wandb_local_dir`); the run id file stays in the workdir.

    ``mode``: '' (wandb's default: online, or ``$WANDB_MODE``), 'online', 'offline' or 'disabled'."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        config: dict | None = None,
        project: str = 'research',
        entity: str = '',
        mode: str = '',
        name: str = '',
        group: str = '',
        tags: Sequence[str] = (),
        resume_step: int = 0,
    ):
        try:
            import wandb
        except ImportError:
            raise RuntimeError(
                "logging.wandb=True needs the wandb package: pip install -e '.[wandb]'"
            ) from None
        if mode not in WANDB_MODES:
            raise ValueError(f'logging.wandb_mode={mode!r}: use one of {WANDB_MODES}')
        workdir = storage.as_path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        id_file = workdir / 'wandb_run_id'
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id + '\n')
        files = wandb_local_dir(workdir) if storage.is_remote(workdir) else str(workdir)
        os.makedirs(files, exist_ok=True)
        self._wandb = wandb
        self.run = wandb.init(
            project=project or None,
            entity=entity or None,
            mode=mode or None,
            name=name or workdir.name,
            group=group or None,
            tags=list(tags) or None,
            config=config,
            dir=files,
            id=run_id,
            resume='allow',
            reinit='create_new',
        )
        self.run.define_metric('step')
        self.run.define_metric('*', step_metric='step')

    def write(self, split: str, step: int, metrics: dict[str, Any]) -> None:
        row: dict[str, Any] = {'step': int(step)}
        for k, v in metrics.items():
            v = _plain(v)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                row[f'{split}/{k}'] = v
        if len(row) > 1:
            self.run.log(row)

    def image(self, tag: str, step: int, image: np.ndarray, path: epath.Path | None) -> None:
        local = path is not None and not storage.is_remote(path)
        self.run.log({'step': int(step), tag: self._wandb.Image(str(path) if local else image)})

    def close(self) -> None:
        self.run.finish()


WANDB_MODES = ('', 'online', 'offline', 'disabled')


def wandb_local_dir(workdir: Any) -> str:
    """The local folder of W&B's files for a remote workdir: ``<tmp>/research-wandb/<name>-<hash>``."""
    text = str(workdir)
    name = text.rstrip('/').rsplit('/', 1)[-1] or 'run'
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return os.path.join(tempfile.gettempdir(), 'research-wandb', f'{name}-{digest}')


def writers_from_config(
    workdir: str | os.PathLike, config: Any = None, *, resume_step: int = 0
) -> list[Writer]:
    """The writers ``config.logging`` asks for (JSONL always first); with no config: JSONL and TensorBoard."""
    log = _logging_section(config)
    plain = _plain_config(config)
    out: list[Writer] = [JsonlWriter(workdir, resume_step=resume_step)]
    if log.get('tensorboard', True):
        try:
            out.append(TensorBoardWriter(workdir, resume_step=resume_step, config=plain))
        except ImportError:  # pragma: no cover - tensorboardX is a dependency
            pass
    if log.get('wandb', False):
        out.append(
            WandbWriter(
                workdir,
                config=plain,
                project=str(log.get('wandb_project', 'research')),
                entity=str(log.get('wandb_entity', '')),
                mode=str(log.get('wandb_mode', '')),
                name=str(log.get('wandb_name', '')),
                group=str(log.get('wandb_group', '')),
                tags=tuple(log.get('wandb_tags', ()) or ()),
                resume_step=resume_step,
            )
        )
    return out


class MetricWriter:
    """The run's metric writer: JSONL (``workdir/metrics.jsonl``) plus what ``config.logging`` turns on.

    ``MetricWriter(workdir, enabled=is_main_process, resume_step=start, config=config)``; without
    ``config``: JSONL and TensorBoard (the behaviour before the ``logging`` section). ``writers``
    replaces the list (tests, custom destinations: any object with ``write``/``image``/``close``).
    Rows: ``{"split": "train"|"test"|..., "step": int, <metric>: float}``; on resume, rows past the
    restored step are dropped so the file reads as one run.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        enabled: bool = True,
        resume_step: int = 0,
        config: Any = None,
        writers: Sequence[Writer] | None = None,
    ):
        self.enabled = enabled
        self.workdir = storage.as_path(workdir)
        self.path = self.workdir / 'metrics.jsonl'
        self.writers: list[Writer] = []
        if not enabled:
            return
        self.writers = (
            list(writers)
            if writers is not None
            else writers_from_config(workdir, config, resume_step=resume_step)
        )

    def write(self, split: str, step: int, metrics: dict[str, Any]) -> None:
        for w in self.writers:
            w.write(split, int(step), metrics)

    def image(self, tag: str, step: int, path_or_array: str | os.PathLike | np.ndarray) -> None:
        """Logs a picture: a PNG path (as the tasks write them) or an [H, W(, C)] array (uint8, or floats
        in [0, 1]) to TensorBoard and W&B; JSONL keeps scalars only."""
        if not self.writers:
            return
        path = None
        if isinstance(path_or_array, (str, os.PathLike)):
            path = storage.as_path(path_or_array)
            with storage.open_image(path) as im:
                image = np.asarray(im.convert('RGB'))
        else:
            image = _rgb_uint8(path_or_array)
        for w in self.writers:
            w.image(tag, int(step), image, path)

    def close(self) -> None:
        for w in self.writers:
            w.close()
        self.writers = []


def _rgb_uint8(image) -> np.ndarray:
    """[H, W], [H, W, 1] or [H, W, 3] (uint8, or floats in [0, 1]) -> uint8 [H, W, 3]."""
    x = np.asarray(image)
    if x.dtype != np.uint8:
        x = np.round(np.clip(np.asarray(x, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    if x.ndim == 2:
        x = x[..., None]
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x[..., :3]


def _logging_section(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    try:
        section = config['logging']
    except (KeyError, TypeError, AttributeError):
        return {}
    return dict(section.to_dict() if hasattr(section, 'to_dict') else section)


def _plain_config(config: Any) -> dict | None:
    if config is None:
        return None
    return json.loads(
        json.dumps(config.to_dict() if hasattr(config, 'to_dict') else dict(config), default=str)
    )


def parse_profile_steps(spec: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``logging.profile_steps``: '' (off), ``'START:STOP'`` or ``(START, STOP)``: trace steps
    START <= step < STOP. A bad value raises ``ValueError`` naming it."""
    if spec is None or spec == '' or spec == ():
        return None
    try:
        if isinstance(spec, str):
            a, sep, b = spec.partition(':')
            if not sep:
                raise ValueError
            start, stop = int(a), int(b)
        else:
            start, stop = (int(v) for v in spec)
    except (TypeError, ValueError):
        raise ValueError(
            f"logging.profile_steps={spec!r}: use 'START:STOP' (trace steps START <= step < STOP), e.g. '10:15'"
        ) from None
    if not 0 <= start < stop:
        raise ValueError(f'logging.profile_steps={spec!r}: need 0 <= START < STOP')
    return start, stop


class ProfilerHook:
    """A ``jax.profiler`` trace of a few training steps into ``workdir/profile`` (TensorBoard's profile
    plugin or Perfetto read it).

    Call ``hook.step(step)`` before running step ``step`` (the loop's step counter, as in
    ``metrics.jsonl``) and ``hook.close()`` at the end; the trace starts before step START and stops
    before step STOP. ``block`` (e.g. the train state) is waited on before stopping, so the traced
    steps have finished. Nothing happens when ``steps`` is off or ``enabled`` is False."""

    def __init__(
        self, workdir: str | os.PathLike, steps: str | Sequence[int] | None, *, enabled: bool = True
    ):
        self.window = parse_profile_steps(steps) if enabled else None
        self.log_dir = storage.as_path(workdir) / 'profile'
        self._local_dir: str | None = None  # a remote workdir: traced here, then copied to log_dir
        self.active = False
        self.done = False

    def step(self, step: int, block: Any = None) -> None:
        if self.window is None or self.done:
            return
        start, stop = self.window
        if not self.active and start <= step < stop:
            import jax

            if storage.is_remote(self.log_dir):
                self._local_dir = tempfile.mkdtemp(prefix='research-profile-')
            else:
                self.log_dir.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(self._local_dir or str(self.log_dir))
            self.active = True
        elif self.active and step >= stop:
            self._stop(block)

    def _stop(self, block: Any = None) -> None:
        import jax

        if block is not None:
            jax.block_until_ready(block)
        jax.profiler.stop_trace()
        self.active, self.done = False, True
        if self._local_dir is not None:  # the trace files, copied to the remote workdir
            for root, _, files in os.walk(self._local_dir):
                for f in files:
                    src = os.path.join(root, f)
                    with open(src, 'rb') as fh:
                        storage.write_bytes(self.log_dir / os.path.relpath(src, self._local_dir), fh.read())
            shutil.rmtree(self._local_dir, ignore_errors=True)
            self._local_dir = None

    def close(self, block: Any = None) -> None:
        if self.active:
            self._stop(block)


def read_metrics(workdir: str | os.PathLike, split: str | None = None) -> list[dict[str, Any]]:
    text = storage.read_text(storage.as_path(workdir) / 'metrics.jsonl', '')
    rows = [json.loads(l) for l in text.splitlines() if l.strip()]
    return [r for r in rows if split is None or r['split'] == split]


def _plain(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    if isinstance(v, (int, bool)):
        return v
    return f if math.isfinite(f) else str(f)


def format_seconds(s: float) -> str:
    if not math.isfinite(s):
        return '--:--'
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f'{h:d}:{m:02d}:{sec:02d}' if h else f'{m:02d}:{sec:02d}'


class Progress:
    """``[#####.....] 1200/5000 24% | 15.2 it/s 1946 img/s | loss 0.41 top1 87.1% | ETA 04:10``.

    Redraws in place on a terminal; elsewhere (logs, CI) prints one line per update.
    """

    def __init__(
        self,
        total_steps: int,
        start_step: int,
        batch_size: int,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
    ):
        self.total, self.batch = total_steps, batch_size
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and getattr(self.stream, 'isatty', lambda: False)()
        self._t0, self._s0 = time.perf_counter(), start_step
        self._last_len = 0

    def reset_clock(self, step: int) -> None:
        """Restarts the rate estimate (after compilation or an evaluation pause)."""
        self._t0, self._s0 = time.perf_counter(), step

    def rate(self, step: int) -> float:
        dt = time.perf_counter() - self._t0
        return (step - self._s0) / dt if dt > 0 and step > self._s0 else float('nan')

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        rate = self.rate(step)
        eta = (self.total - step) / rate if rate == rate and rate > 0 else float('nan')
        frac = step / max(self.total, 1)
        bar = '#' * int(20 * frac) + '.' * (20 - int(20 * frac))
        parts = [f'[{bar}] {step}/{self.total} {100 * frac:3.0f}%']
        if rate == rate:
            parts.append(f'{rate:.2f} it/s {rate * self.batch:.0f} img/s')
        shown = ' '.join(f'{k} {_fmt(k, v)}' for k, v in metrics.items())
        if shown:
            parts.append(shown)
        parts.append(f'ETA {format_seconds(eta)}')
        line = ' | '.join(parts)
        if self.tty:
            pad = max(self._last_len - len(line), 0)
            self.stream.write('\r' + line + ' ' * pad)
            self._last_len = len(line)
        else:
            self.stream.write(line + '\n')
        self.stream.flush()

    def message(self, text: str) -> None:
        """Prints a line without breaking the bar."""
        if not self.enabled:
            return
        if self.tty and self._last_len:
            self.stream.write('\r' + ' ' * self._last_len + '\r')
            self._last_len = 0
        self.stream.write(text + '\n')
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._last_len:
            self.stream.write('\n')
            self.stream.flush()
            self._last_len = 0


def _fmt(key: str, v: float) -> str:
    if key.startswith('top'):
        return f'{100 * v:.2f}%'
    if key == 'lr':
        return f'{v:.3g}'
    return f'{v:.4f}'
