"""The results ledger: one JSON row per run in ``<sweep workdir>/ledger.jsonl``, keyed by run id.

A row is (re)built from the run's files, so it can be rebuilt at any time: ``run.json``
(written by the sweep at each launch: git commit, versions, devices, summed wall time),
``summary.json``, ``config.json`` and ``metrics.jsonl``. Fields::

    id, sweep, status ('done' | 'partial' | 'failed'), error, overrides, config (flattened),
    seed, git_commit, versions {python, jax, flax, optax}, platform, devices, device_kind,
    num_params, step, total_steps, epoch, metrics {...}, images_per_sec, wall_time_s,
    workdir, updated

``metrics`` (``<split>`` = ``data.eval_split``, errors in %): ``<split>_error``,
``<split>_top1``, ``<split>_top5``, ``<split>_loss`` (final evaluation), ``best_<split>_error``
/ ``best_<split>_top1`` / ``best_step`` (best evaluation during the run), ``train_loss`` /
``train_error`` (the last logged training window: a running average over augmented batches),
``num_params``, ``images_per_sec``, ``wall_time_s``. Segmentation runs (``task='segmentation'``)
have ``<split>_miou`` and ``<split>_pixel_acc`` (%), ``<split>_loss``, ``best_<split>_miou``,
``best_step``, ``train_loss`` and ``train_pixel_acc`` instead. Detection runs (``task='detection'``)
have ``<split>_map50`` (VOC mAP@0.5 all-point, %), ``<split>_map50_11pt``, ``<split>_coco_ap``,
``<split>_coco_ap50`` (%), with instance masks (Mask R-CNN) also ``<split>_mask_ap``, ``<split>_mask_ap50``
(COCO mask AP, %), ``latency_ms`` (batch 1), ``proposal_ms`` (host proposals), ``total_ms``,
``eval_images_per_sec``, ``best_<split>_map50``,
``best_step`` and ``train_loss``.

Writers hold an exclusive ``flock`` on ``ledger.jsonl.lock`` and replace the file atomically,
so parallel workers may update the same ledger; re-running a sweep updates rows, never
duplicates them. A remote sweep directory (``gs://...``, through ``etils.epath``) has no file lock:
the workers of one host lock a local file named by the ledger's path (``research.storage.locked``),
and each write of the ledger replaces the object whole.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any


from research import storage
from research.train import workdir as workdir_lib
from research.train.reporting import read_metrics

REPO = Path(__file__).resolve().parents[2]


# -- provenance -----------------------------------------------------------------------------------
def git_commit(repo: str | Path = REPO) -> str | None:
    """``git rev-parse HEAD`` of the code, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ['git', 'rev-parse', 'HEAD'], cwd=repo, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else None


def versions() -> dict[str, str | None]:
    def v(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {'python': platform.python_version(), 'jax': v('jax'), 'flax': v('flax'), 'optax': v('optax')}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')


def _read_json(path: storage.AnyPath) -> dict[str, Any]:
    try:
        return json.loads(storage.as_path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_json(path: storage.AnyPath, obj: Any) -> None:
    storage.write_text(path, json.dumps(obj, indent=2, default=str), atomic=True, parents=False)


def start_run_meta(run, sweep_name: str) -> dict[str, Any]:
    """Writes ``<run>/run.json`` at a launch of ``run`` (kept across launches) and returns it."""
    path = run.workdir / 'run.json'
    meta = _read_json(path)
    meta.update(
        id=run.id,
        sweep=sweep_name,
        overrides=run.overrides,
        git_commit=git_commit(),
        versions=versions(),
        launches=meta.get('launches', 0) + 1,
        last_launch=_now(),
    )
    meta.setdefault('first_launch', meta['last_launch'])
    meta.setdefault('wall_time_s', 0.0)
    _write_json(path, meta)
    return meta


def finish_run_meta(run, meta: dict[str, Any], wall_s: float) -> None:
    """Adds this launch's wall time and the device kind to ``run.json``."""
    meta['wall_time_s'] = float(meta.get('wall_time_s', 0.0)) + wall_s
    try:
        import jax

        meta['device_kind'] = jax.devices()[0].device_kind
    except Exception:  # noqa: BLE001 - provenance only
        pass
    _write_json(run.workdir / 'run.json', meta)


# -- rows -----------------------------------------------------------------------------------------
def _read_metrics(workdir: storage.AnyPath) -> list[dict[str, Any]]:
    return read_metrics(workdir)


def _err(top1: Any) -> float | None:
    return 100.0 * (1.0 - float(top1)) if isinstance(top1, (int, float)) else None


def split_base(split: str) -> str:
    """The split a TFDS sub-split slices: ``test[:2000]`` -> ``test`` (a plain name is returned as is)."""
    return str(split).split('[', 1)[0]


def run_metrics(workdir: str | os.PathLike, eval_split: str = 'test') -> dict[str, Any]:
    """Final and best metrics of a run directory (see the module docstring). A TFDS sub-split
    (``test[:2000]``, ``test[50%:]``) reports under its split's name (``test_error``), so tables of
    reduced-scale runs read the same keys as full ones (the ledger row's config keeps the slice)."""
    out = _run_metrics(workdir, eval_split)
    base = split_base(eval_split)
    if base == eval_split:
        return out
    return {k.replace(eval_split, base): v for k, v in out.items()}


def _run_metrics(workdir: str | os.PathLike, eval_split: str) -> dict[str, Any]:
    workdir = storage.as_path(workdir)
    summary = _read_json(workdir / 'summary.json')
    rows = _read_metrics(workdir)
    out: dict[str, Any] = {}
    final = summary.get('final', {}).get(eval_split)
    if summary.get('task') == 'segmentation' or (final and 'miou' in final):
        return _segmentation_metrics(final, rows, eval_split)
    if summary.get('task') == 'detection' or (final and 'map50' in final):
        return _detection_metrics(final, rows, eval_split)
    if final:
        out.update(
            {
                f'{eval_split}_error': _err(final['top1']),
                f'{eval_split}_top1': final['top1'],
                f'{eval_split}_top5': final.get('top5'),
                f'{eval_split}_loss': final.get('loss'),
            }
        )
    evals = [r for r in rows if r['split'] == eval_split and isinstance(r.get('top1'), (int, float))]
    if evals:
        best = max(evals, key=lambda r: r['top1'])
        out.update(
            {
                f'best_{eval_split}_error': _err(best['top1']),
                f'best_{eval_split}_top1': best['top1'],
                'best_step': best['step'],
            }
        )
    train = [r for r in rows if r['split'] == 'train' and isinstance(r.get('loss'), (int, float))]
    if train:
        out['train_loss'] = train[-1]['loss']
        out['train_error'] = _err(train[-1].get('top1'))
    return out


def _pct(x: Any) -> float | None:
    return 100.0 * float(x) if isinstance(x, (int, float)) else None


def _segmentation_metrics(final: dict | None, rows: list[dict[str, Any]], eval_split: str) -> dict[str, Any]:
    """``<split>_miou`` / ``<split>_pixel_acc`` (%), ``<split>_loss``, ``best_<split>_miou``, ``best_step``,
    ``train_loss`` and ``train_pixel_acc`` (%, last logged window) of a segmentation run."""
    out: dict[str, Any] = {}
    if final:
        out.update(
            {
                f'{eval_split}_miou': _pct(final.get('miou')),
                f'{eval_split}_pixel_acc': _pct(final.get('pixel_acc')),
                f'{eval_split}_loss': final.get('loss'),
            }
        )
    evals = [r for r in rows if r['split'] == eval_split and isinstance(r.get('miou'), (int, float))]
    if evals:
        best = max(evals, key=lambda r: r['miou'])
        out.update({f'best_{eval_split}_miou': _pct(best['miou']), 'best_step': best['step']})
    train = [r for r in rows if r['split'] == 'train' and isinstance(r.get('loss'), (int, float))]
    if train:
        out['train_loss'] = train[-1]['loss']
        out['train_pixel_acc'] = _pct(train[-1].get('pixel_acc'))
    return out


def _detection_metrics(final: dict | None, rows: list[dict[str, Any]], eval_split: str) -> dict[str, Any]:
    """``<split>_map50`` / ``_map50_11pt`` / ``_coco_ap`` / ``_coco_ap50`` (%; + ``_mask_ap`` /
    ``_mask_ap50`` when the run reported mask AP), ``latency_ms``, ``eval_images_per_sec``,
    ``best_<split>_map50``, ``best_step``, ``train_loss`` of a detection run."""
    out: dict[str, Any] = {}
    if final:
        for k in ('map50', 'map50_11pt', 'coco_ap', 'coco_ap50'):
            out[f'{eval_split}_{k}'] = _pct(final.get(k))
        for k in ('mask_ap', 'mask_ap50'):
            if k in final:
                out[f'{eval_split}_{k}'] = _pct(final[k])
        for k in ('latency_ms', 'proposal_ms', 'total_ms'):
            out[k] = final.get(k)
        out['eval_images_per_sec'] = final.get('eval_images_per_sec')
    evals = [r for r in rows if r['split'] == eval_split and isinstance(r.get('map50'), (int, float))]
    if evals:
        best = max(evals, key=lambda r: r['map50'])
        out.update({f'best_{eval_split}_map50': _pct(best['map50']), 'best_step': best['step']})
    train = [r for r in rows if r['split'] == 'train' and isinstance(r.get('loss'), (int, float))]
    if train:
        out['train_loss'] = train[-1]['loss']
    return out


def row_metrics(run, *, meta=None, summary=None, resolved=None) -> dict[str, Any]:
    """The ``metrics`` of ``run``'s ledger row, read from its directory (final/best metrics of its
    eval split, parameters, images/s, wall time)."""
    wd = storage.as_path(run.workdir)
    meta = _read_json(wd / 'run.json') if meta is None else meta
    summary = _read_json(wd / 'summary.json') if summary is None else summary
    resolved = _read_json(wd / 'config.json').get('_resolved', {}) if resolved is None else resolved
    metrics = run_metrics(wd, run.flat_config.get('data.eval_split', 'test'))
    metrics.update(
        num_params=summary.get('num_params', resolved.get('num_params')),
        images_per_sec=summary.get('images_per_sec'),
        wall_time_s=meta.get('wall_time_s', summary.get('wall_time_s')),
    )
    return metrics


def run_status(workdir: str | os.PathLike) -> str:
    """``'running'`` (a live run holds its lock), ``'done'`` (summary.json complete), ``'partial'`` (has
    checkpoints) or ``'new'``."""
    workdir = storage.as_path(workdir)
    holder = workdir_lib.read_lock(workdir) if (workdir / workdir_lib.LOCK_NAME).exists() else None
    if holder is not None and not workdir_lib.lock_is_stale(holder):
        return 'running'
    summary = workdir / 'summary.json'
    if summary.exists():
        try:
            if json.loads(summary.read_text()).get('complete'):
                return 'done'
        except json.JSONDecodeError:
            pass
    ckpts = workdir / 'checkpoints'
    if ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
        return 'partial'
    return 'new'


def build_row(run, sweep_name: str, *, status: str | None = None, error: str | None = None) -> dict[str, Any]:
    """The ledger row of ``run`` (a :class:`~research.experiments.sweep.Run`) from its files."""
    wd = storage.as_path(run.workdir)
    meta = _read_json(wd / 'run.json')
    summary = _read_json(wd / 'summary.json')
    resolved = _read_json(wd / 'config.json').get('_resolved', {})
    flat = run.flat_config
    status = status or run_status(wd)
    metrics = row_metrics(run, meta=meta, summary=summary, resolved=resolved)
    return {
        'id': run.id,
        'sweep': sweep_name,
        'status': status,
        'error': error,
        'overrides': run.overrides,
        'config': flat,
        'seed': flat.get('seed'),
        'git_commit': meta.get('git_commit'),
        'versions': meta.get('versions') or versions(),
        'platform': summary.get('platform'),
        'devices': summary.get('devices', resolved.get('devices')),
        'device_kind': meta.get('device_kind'),
        'num_params': metrics['num_params'],
        'step': summary.get('step'),
        'total_steps': summary.get('total_steps', resolved.get('total_steps')),
        'epoch': summary.get('epoch'),
        'metrics': metrics,
        'images_per_sec': metrics['images_per_sec'],
        'wall_time_s': metrics['wall_time_s'],
        'workdir': str(wd),
        'updated': _now(),
    }


# -- the file -------------------------------------------------------------------------------------
def read(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The ledger's rows (one per run id, the last written wins), in first-written order."""
    text = storage.read_text(storage.as_path(path))
    if text is None:
        return []
    rows: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row['id']] = row
    return list(rows.values())


def find(path: str | os.PathLike, run_id: str) -> dict[str, Any] | None:
    return next((r for r in read(path) if r['id'] == run_id), None)


def upsert(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Adds ``row`` or replaces the row with the same id (atomic, under a file lock)."""
    path = storage.as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with storage.locked(path):
        rows = read(path)
        ids = [r['id'] for r in rows]
        if row['id'] in ids:
            rows[ids.index(row['id'])] = row
        else:
            rows.append(row)
        storage.write_text(path, ''.join(json.dumps(r, default=str) + '\n' for r in rows), atomic=True)


def ensure_row(path: str | os.PathLike, run, sweep_name: str) -> None:
    """For a finished run skipped on relaunch: rebuild its row unless a 'done' row is there."""
    row = find(path, run.id)
    if row is None or row.get('status') != 'done':
        upsert(path, build_row(run, sweep_name))
