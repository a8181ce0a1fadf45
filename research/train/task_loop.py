"""The run loop the dense-prediction tasks share (segmentation, detection): resume from the newest
checkpoint (a different model or dataset in the workdir is refused), train with windowed metrics and
a progress bar, evaluate / checkpoint every N steps, stop on a non-finite loss naming the last good
checkpoint, save on interruption, final evaluation, ``summary.json``.

A task supplies a *trainer* (``SegTrainer``, ``DetTrainer``) with: ``is_main``, ``batch_size``,
``steps_per_epoch``, ``total_steps``, ``eval_every``, ``ckpt_every``, ``schedule``, ``num_params``,
``train_step``, ``init_state()``, ``train_iterator()``, ``next_batch(it)`` (the host batch),
``resolved()`` (the ``_resolved`` block of config.json), ``describe()`` (the first log line),
``evaluate_at(state, step, final)`` -> (metrics, picture writer or None), ``eval_message(res)``,
``done_message(res)``, ``best_metric`` (the key maximised by ``summary['best']``), ``task`` and
``dataset``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jax

from research.config import parse_duration, to_dict
from research.kernels import onednn
from research.train import checkpoint as ckpt_lib
from research.train import mesh as mesh_lib
from research.train.loop import NonFiniteLossError, _check_same_run
from research.train.optim import make_optimizer, make_schedule
from research.train.reporting import MetricWriter, Progress, format_seconds

__all__ = ['check_finite', 'resolve_schedule', 'run_task_loop']


def resolve_schedule(tr, config, n_train: int) -> None:
    """Sets the trainer's batch sizes (checked against its mesh), ``steps_per_epoch``, ``total_steps``,
    ``eval_every``, ``ckpt_every``, ``schedule`` and ``tx`` from ``config.train`` / ``optimizer`` /
    ``schedule`` and the train split's size; ``cpu_conv`` ('onednn' or 'xla', ``train.cpu_conv``
    resolved: wrap the jitted steps in ``onednn.scoped``)."""
    tc = config.train
    tr.batch_size = tc.batch_size
    tr.eval_batch_size = tc.eval_batch_size or tc.batch_size
    mesh_lib.check_batch_size(tr.batch_size, tr.mesh)
    mesh_lib.check_batch_size(tr.eval_batch_size, tr.mesh, name='train.eval_batch_size')
    tr.steps_per_epoch = n_train // tr.batch_size
    if tr.steps_per_epoch < 1:
        raise ValueError(f'train.batch_size={tr.batch_size} is larger than the train split ({n_train})')
    spe = tr.steps_per_epoch
    tr.total_steps = parse_duration(tc.duration, spe, name='train.duration')
    tr.eval_every = parse_duration(tc.eval_every or 0, spe, name='train.eval_every')
    tr.ckpt_every = parse_duration(tc.checkpoint_every or 0, spe, name='train.checkpoint_every')
    tr.schedule = make_schedule(config.schedule, config.optimizer.lr, tr.total_steps, spe)
    tr.tx = make_optimizer(config.optimizer, tr.schedule)
    tr.cpu_conv = onednn.resolve(str(tc.get('cpu_conv', 'auto')), tr.mesh.devices.size)


def check_finite(step: int, loss: float, ckpt) -> None:
    """Raises ``NonFiniteLossError`` naming the step and the last good checkpoint (none is written)."""
    if not math.isfinite(loss):
        ckpt.wait()
        raise NonFiniteLossError(
            f'loss is {loss} at step {step}; stopping. last good checkpoint: {ckpt.latest_step()}'
        )


def run_task_loop(
    tr, config, workdir: str | Path, *, stop_after_steps: int | None = None, show_progress: bool = True
) -> dict[str, Any]:
    """Trains ``tr`` (a task trainer, see the module docstring) in ``workdir``; returns the summary."""
    workdir = Path(workdir)
    wall0 = time.perf_counter()
    tc = config.train
    log = print if tr.is_main else (lambda *a, **k: None)
    if tr.is_main:
        workdir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_lib.Checkpointer(workdir, keep=tc.keep_checkpoints, async_save=tc.async_checkpoints)
    state = tr.init_state()
    train_it = tr.train_iterator()
    start = ckpt.latest_step()
    if start is not None:
        _check_same_run(workdir, config)  # a different model or dataset in this workdir is refused
        arrays, data_state, _ = ckpt.restore(start, ckpt_lib.abstract_like(state.arrays()))
        state = state.replace_arrays(arrays)
        train_it.set_state(ckpt_lib.from_jsonable(data_state))
        log(f'resumed from {ckpt.directory / str(start)} (step {start})')
    start = start or 0
    if tr.is_main:
        resolved = to_dict(config)
        resolved['_resolved'] = dict(
            steps_per_epoch=tr.steps_per_epoch, total_steps=tr.total_steps, num_params=tr.num_params,
            devices=jax.device_count(), **tr.resolved(),
        )  # fmt: skip
        (workdir / 'config.json').write_text(json.dumps(resolved, indent=2, default=str))
    log(tr.describe(workdir))
    writer = MetricWriter(workdir, enabled=tr.is_main, resume_step=start)
    progress = Progress(tr.total_steps, start, tr.batch_size, enabled=show_progress and tr.is_main)
    sharding = mesh_lib.batch_sharding(tr.mesh)
    stop_at = tr.total_steps if stop_after_steps is None else min(stop_after_steps, tr.total_steps)
    history: list[dict[str, Any]] = []
    window: dict[str, float] = {}
    window_n, window_count, t0, train_time, timed_steps = 0, 0, time.perf_counter(), 0.0, 0
    step, last_saved = start, (start or None)

    def save(s: int) -> None:
        nonlocal last_saved
        ckpt.save(s, state.arrays(), train_it.get_state(), {'step': s, 'model': config.model.name})
        last_saved = s

    def run_eval(s: int, final: bool = False) -> dict[str, Any]:
        res, picture = tr.evaluate_at(state, s, final)
        res['epoch'] = s / tr.steps_per_epoch
        writer.write(config.data.eval_split, s, res)
        if tr.is_main and picture is not None:
            picture(workdir / 'viz' / f'step_{s:06d}.png')
        history.append({'step': s, **res})
        progress.message(f'eval @ step {s}: {tr.eval_message(res)}')
        return res

    try:
        while step < stop_at:
            state, metrics = tr.train_step(state, mesh_lib.to_global(tr.next_batch(train_it), sharding))
            step += 1
            m = jax.device_get(metrics)
            check_finite(step, float(m['loss']), ckpt)
            if step == start + 1:  # the first step compiles: not timed
                t0 = time.perf_counter()
                progress.reset_clock(step)
            else:
                window_n += 1
            window_count += 1
            for k, v in m.items():
                window[k] = window.get(k, 0.0) + float(v)
            if step % tc.log_every_steps == 0 or step == stop_at:
                dt = time.perf_counter() - t0
                train_time, timed_steps = train_time + dt, timed_steps + window_n
                row = {k: v / window_count for k, v in window.items()}
                row.update(
                    epoch=step / tr.steps_per_epoch,
                    lr=float(tr.schedule(step - 1)),
                    images_per_sec=window_n * tr.batch_size / dt if dt > 0 and window_n else float('nan'),
                )
                writer.write('train', step, row)
                progress.update(step, {'loss': row['loss'], 'lr': row['lr']})
                window, window_n, window_count, t0 = {}, 0, 0, time.perf_counter()
            if tr.eval_every and step % tr.eval_every == 0 and step != tr.total_steps:
                run_eval(step)
                t0 = time.perf_counter()
            if tr.ckpt_every and step % tr.ckpt_every == 0 and step != stop_at:
                save(step)
        if last_saved != step:
            save(step)
    except BaseException:
        progress.close()
        ckpt.close()
        writer.close()
        raise
    progress.close()
    ckpt.close()
    summary: dict[str, Any] = {
        'task': tr.task, 'model': config.model.name, 'dataset': tr.dataset, 'num_params': tr.num_params,
        'step': step, 'total_steps': tr.total_steps, 'complete': step >= tr.total_steps,
        'images_per_sec': timed_steps * tr.batch_size / train_time if train_time > 0 else None,
        'devices': jax.device_count(), 'jax': jax.__version__, 'workdir': str(workdir),
    }  # fmt: skip
    if step >= tr.total_steps:
        res = run_eval(step, final=True)
        summary['final'] = {config.data.eval_split: res}
        best = max(history, key=lambda r: r[tr.best_metric])
        summary['best'] = {tr.best_metric: best[tr.best_metric], 'step': best['step']}
    summary['wall_time_s'] = time.perf_counter() - wall0
    writer.close()
    if tr.is_main:
        (workdir / 'summary.json').write_text(json.dumps(summary, indent=2))
        if 'final' in summary:
            res = summary['final'][config.data.eval_split]
            log(
                f'done: {config.model.name} on {tr.dataset} | {step} steps in '
                f'{format_seconds(summary["wall_time_s"])} | {tr.done_message(res)} | workdir {workdir}'
            )
        else:
            log(f'stopped at step {step}/{tr.total_steps}; relaunch the same command to resume')
    return summary
