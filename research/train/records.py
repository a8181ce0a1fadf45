"""A run's record across relaunches: config changes on resume, segments, epochs, finished runs, totals.

* :func:`config_changes` / :func:`check_config_change`: the resolved config of a relaunch against the
  saved ``config.json``. Keys in :data:`RESUMABLE_KEYS` may change; any other difference is refused
  with :class:`ConfigChangeError` (a :class:`~research.config.ConfigError`: exit code 2) listing
  ``key: saved -> now``, unless the change is allowed (``--allow_config_change``).
* :func:`write_config`: ``config.json`` = the current segment's resolved config plus ``_segments``,
  one entry per stretch of steps run with one config (its start step, batch size, steps per epoch and
  the keys that changed at its start); every change is also appended to ``config_history.jsonl``.
  :func:`segment_configs` rebuilds the full config each segment used.
* :func:`epoch_at` / :func:`examples_at`: epochs and examples seen, true to the data when the batch
  size changed between segments.
* :func:`finished_summary`: the summary of a finished run of this length (relaunch changes nothing).
* :class:`RunTotals`: wall time, training time and images over all segments.

Files are written atomically (temp file + rename); paths are ``etils.epath`` paths.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import time
from typing import Any

from etils import epath

from research import storage
from research.configlib import ConfigError

CONFIG = 'config.json'
HISTORY = 'config_history.jsonl'
SUMMARY = 'summary.json'
SEGMENTS = '_segments'

# Keys that may change when a run is resumed: they decide how long the run goes, how often it
# reports or saves, and how it is executed, not what a step computes. Anything else (seed, batch size,
# lr, model, data, augmentation, precision, ghost BN...) changes the experiment and is refused unless
# allowed explicitly. Patterns use fnmatch ('*' within a key). Keep this the one list.
RESUMABLE_KEYS = (
    'train.duration',  # extending (or shortening) a run; the schedule is re-resolved against it
    'train.log_every_steps',
    'train.eval_every',
    'train.eval_batch_size',  # evaluation is exact (masked padding) for any batch
    'train.checkpoint_every',
    'train.keep_checkpoints',
    'train.async_checkpoints',
    'train.cpu_conv',  # which kernels run the convolutions: equal up to float rounding
    'train.model_parallel',  # how parameters are laid out over the devices, not their values
    'model.remat',  # recompute activations in the backward pass: same parameters, values and checkpoints
    'data.num_threads',
    'data.num_workers',
    'data.data_dir',  # where the same prepared dataset lives (its content is fingerprinted, issue 24)
    '*.viz_examples',  # pictures written at evaluations
    'det.latency_images',
    'det.coco_eval',
    'seg.crf_eval',
    'gan.grid_samples',
    'gan.score_samples',
    'style.log_every',
)


class ConfigChangeError(ConfigError):
    """A relaunch whose config differs from the saved one in a key that may not change on resume."""


def resumable(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE_KEYS)


# -- config.json --------------------------------------------------------------------------------
def _read_json(path: epath.Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _write_atomic(path: epath.Path, text: str) -> None:
    if storage.is_remote(path):  # an object store: one object write is atomic (and rename is a copy)
        path.write_text(text)
        return
    tmp = path.parent / f'.{path.name}.tmp'
    tmp.write_text(text)
    tmp.replace(path)


def load_config(workdir: Any) -> dict[str, Any] | None:
    """The saved ``config.json`` (None if there is none)."""
    return _read_json(epath.Path(workdir) / CONFIG)


def _plain(x: Any) -> Any:
    """JSON round trip: tuples become lists, ConfigDicts dicts, as in config.json."""
    return json.loads(json.dumps(x, default=str))


def _flat(d: Any, prefix: str = '') -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if not prefix and str(k).startswith('_'):
            continue  # _resolved, _segments: not config keys
        if isinstance(v, dict):
            out.update(_flat(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out


def config_changes(
    saved: dict[str, Any], now: dict[str, Any], defaults: dict[str, Any] | None = None
) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved, now)}`` for every leaf that differs (``_``-prefixed top-level keys ignored).

    A key missing from the saved config (written by an older version) compares as its value in
    ``defaults`` (the schema's defaults) if given; a key the config no longer has is not compared.
    """
    a, b = _flat(_plain(saved)), _flat(_plain(now))
    d = _flat(_plain(defaults)) if defaults is not None else {}
    out = {}
    for key, value in b.items():
        if key in a:
            old = a[key]
        elif key in d:
            old = d[key]
        else:
            old = None
        if old != value:
            out[key] = (old, value)
    return out


def _fmt(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else repr(v)


def format_changes(changes: dict[str, tuple[Any, Any]], limit: int = 12) -> str:
    """``train.batch_size: 32 -> 64, seed: 0 -> 7`` (one line)."""
    items = [f'{k}: {_fmt(a)} -> {_fmt(b)}' for k, (a, b) in sorted(changes.items())]
    more = f', and {len(items) - limit} more' if len(items) > limit else ''
    return ', '.join(items[:limit]) + more


def check_config_change(
    changes: dict[str, tuple[Any, Any]], *, workdir: Any, allow: bool = False
) -> dict[str, tuple[Any, Any]]:
    """Refuses ``changes`` outside :data:`RESUMABLE_KEYS` unless ``allow``; returns those refused-or-allowed.

    Raises :class:`ConfigChangeError`, one line:
    ``workdir runs/x holds a run with another config: seed: 0 -> 7, train.batch_size: 32 -> 64; ...``.
    """
    fixed = {k: v for k, v in changes.items() if not resumable(k)}
    if fixed and not allow:
        raise ConfigChangeError(
            f'workdir {workdir} holds a run with another config: {format_changes(fixed)}; relaunch with '
            'the saved values, use another --workdir, or pass --allow_config_change to continue this run '
            f'with the change (recorded in {HISTORY})'
        )
    return fixed


@dataclasses.dataclass(frozen=True)
class Segment:
    """A stretch of steps run with one config."""

    start_step: int
    batch_size: int
    steps_per_epoch: int
    changes: dict[str, list] = dataclasses.field(default_factory=dict)  # key -> [before, after]


def segments(config_json: dict[str, Any] | None) -> list[Segment]:
    """The segments recorded in a ``config.json`` (one from its own values if it has none)."""
    if not config_json:
        return []
    rows = config_json.get(SEGMENTS)
    if not rows:
        resolved = config_json.get('_resolved', {})
        return [
            Segment(
                0,
                int(config_json.get('train', {}).get('batch_size', 0)),
                int(resolved.get('steps_per_epoch', 0)),
            )
        ]
    return [
        Segment(
            int(r['start_step']), int(r['batch_size']), int(r['steps_per_epoch']), dict(r.get('changes', {}))
        )
        for r in rows
    ]


def write_config(
    workdir: Any,
    resolved: dict[str, Any],
    *,
    step: int,
    batch_size: int,
    steps_per_epoch: int,
    changes: dict[str, tuple[Any, Any]] | None = None,
    allowed: dict[str, tuple[Any, Any]] | None = None,
) -> list[Segment]:
    """Writes ``config.json`` for a run starting or resuming at ``step``; returns its segments.

    ``resolved`` is the full resolved config (plus ``_resolved``). A new run (``step == 0`` or no
    saved config) starts one segment. A resume with ``changes`` (:func:`config_changes`, already
    checked) starts a new segment at ``step`` and appends ``{"step", "time", "changes", "allowed"}``
    to ``config_history.jsonl``; segments that started at or after ``step`` (a rewound run) are
    dropped. A resume without changes keeps the segments and rewrites nothing but what changed.
    """
    workdir = epath.Path(workdir)
    saved = load_config(workdir)
    previous = segments(saved) if saved is not None and step > 0 else []
    previous = [s for s in previous if s.start_step < step] if step > 0 else []
    changes = changes or {}
    if not previous or changes:
        new = Segment(
            int(step), int(batch_size), int(steps_per_epoch), {k: [a, b] for k, (a, b) in changes.items()}
        )
        previous = previous + [new]
    out = dict(_plain(resolved))
    out[SEGMENTS] = [dataclasses.asdict(s) for s in previous]
    text = json.dumps(out, indent=2, default=str)
    path = workdir / CONFIG
    if changes and step > 0:
        row = {
            'step': int(step),
            'time': time.strftime('%Y-%m-%dT%H:%M:%S'),
            'changes': {k: [a, b] for k, (a, b) in sorted(changes.items())},
            'allowed': sorted((allowed or {}).keys()),
        }
        storage.append_text(workdir / HISTORY, json.dumps(row, default=str) + '\n')
    try:
        unchanged = path.read_text() == text
    except FileNotFoundError:
        unchanged = False
    if not unchanged:
        _write_atomic(path, text)
    return previous


def _unflatten_set(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split('.')
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def segment_configs(config_json: dict[str, Any]) -> list[tuple[Segment, dict[str, Any]]]:
    """Each segment with the full config it ran with (the current one, changes undone backwards)."""
    segs = segments(config_json)
    current = {k: v for k, v in _plain(config_json).items() if not k.startswith('_')}
    out = []
    for seg in reversed(segs):
        out.append((seg, json.loads(json.dumps(current))))
        for key, (before, _) in seg.changes.items():
            _unflatten_set(current, key, before)
    return list(reversed(out))


def examples_at(segs: list[Segment], step: int) -> int:
    """Training examples seen by the end of ``step`` (global batches summed over the segments)."""
    total = 0
    for i, seg in enumerate(segs):
        end = segs[i + 1].start_step if i + 1 < len(segs) else step
        total += max(0, min(step, end) - seg.start_step) * seg.batch_size
    return total


def epoch_at(segs: list[Segment], step: int) -> float:
    """Epochs of data seen by the end of ``step``: each segment's steps over its steps per epoch."""
    total = 0.0
    for i, seg in enumerate(segs):
        end = segs[i + 1].start_step if i + 1 < len(segs) else step
        n = max(0, min(step, end) - seg.start_step)
        if n:
            total += n / seg.steps_per_epoch
    return total


# -- finished runs and totals --------------------------------------------------------------------
def load_summary(workdir: Any) -> dict[str, Any] | None:
    try:
        return _read_json(epath.Path(workdir) / SUMMARY)
    except ValueError:  # a damaged summary: treat as absent (the run is not known to be finished)
        return None


def finished_summary(workdir: Any, total_steps: int, latest_checkpoint: int | None = None) -> dict | None:
    """The saved summary if the run in ``workdir`` is finished at ``total_steps``, else None.

    Finished: ``summary.json`` says ``complete``, its ``step`` and ``total_steps`` equal this launch's
    ``total_steps``, and it has its final evaluation; and (if given) the newest checkpoint is that step. A
    longer ``train.duration`` gives None (the run resumes). The loop prints the summary and writes
    nothing when this returns one; check the config (:func:`check_config_change`) first.
    """
    summary = load_summary(workdir)
    if not summary or not summary.get('complete') or 'final' not in summary:
        return None
    if int(summary.get('total_steps', -1)) != int(total_steps) or int(summary.get('step', -1)) != int(
        total_steps
    ):
        return None
    if latest_checkpoint is not None and int(latest_checkpoint) != int(total_steps):
        return None
    return summary


@dataclasses.dataclass
class RunTotals:
    """Time and throughput over all of a run's segments.

    Store ``as_record()`` in each checkpoint's meta and in ``summary.json`` under ``"totals"``; on
    resume start from ``RunTotals.from_record(meta.get("totals"))`` of the restored checkpoint (work
    after it is redone, so its time is not counted twice) and add the new segment.
    """

    wall_time_s: float = 0.0  # launch to exit, summed over segments
    train_time_s: float = 0.0  # timed training steps (compilation and evaluations excluded)
    train_images: int = 0  # images of those timed steps
    segments: int = 0

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> RunTotals:
        if not record:
            return cls()
        return cls(
            float(record.get('wall_time_s', 0.0)),
            float(record.get('train_time_s', 0.0)),
            int(record.get('train_images', 0)),
            int(record.get('segments', 0)),
        )

    def plus(self, wall_time_s: float, train_time_s: float, train_images: int) -> RunTotals:
        """These totals with one more segment's figures added."""
        return RunTotals(
            self.wall_time_s + float(wall_time_s),
            self.train_time_s + float(train_time_s),
            self.train_images + int(train_images),
            self.segments + 1,
        )

    @property
    def images_per_sec(self) -> float | None:
        return self.train_images / self.train_time_s if self.train_time_s > 0 and self.train_images else None

    def as_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def write_summary(workdir: Any, summary: dict[str, Any]) -> None:
    """Writes ``summary.json`` atomically (a reader never sees half a file)."""
    _write_atomic(epath.Path(workdir) / SUMMARY, json.dumps(summary, indent=2, default=str))


def summary_line(summary: dict[str, Any]) -> str:
    """The ``done: ...`` line of a finished run, from its ``summary.json`` (for a relaunch)."""
    split, res = next(iter(summary.get('final', {}).items()), ('test', {}))
    parts = [f'done: {summary.get("model")} on {summary.get("dataset")}']
    parts.append(f'{summary.get("step")} steps ({float(summary.get("epoch", 0.0)):.1f} epochs)')
    if 'top1' in res:
        parts.append(
            f'{split} top1 {100 * res["top1"]:.2f}%' + (f' loss {res["loss"]:.4f}' if 'loss' in res else '')
        )
    ips = summary.get('images_per_sec')
    if isinstance(ips, (int, float)) and math.isfinite(ips):
        parts.append(f'{ips:.0f} train img/s')
    wall = summary.get('wall_time_s')
    if isinstance(wall, (int, float)):
        parts.append(f'{wall:.1f} s')
    return ' | '.join(parts) + f' | workdir {summary.get("workdir")} (finished; nothing was changed)'
