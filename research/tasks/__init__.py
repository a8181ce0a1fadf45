"""Tasks: one module per kind of run, looked up by ``config.task`` (``get``), run by the one loop.

=================  ====================================================================
``classification`` :mod:`research.tasks.classification` (any classifier, any dataset)
``segmentation``   :mod:`research.tasks.segmentation` (dense per-pixel labels, mIoU)
``detection``      :mod:`research.tasks.detection` (detectors' loss terms, VOC/COCO AP)
``gan``            :mod:`research.tasks.gan` (DCGAN: two optimizers, classifier score)
``style_transfer`` :mod:`research.tasks.style` (Gatys et al.: optimise the image)
``fast_style``     :mod:`research.tasks.style` (Johnson et al.: train a transformer net)
``speedrun``       :mod:`research.tasks.speedrun` (airbench: K steps per jitted call)
=================  ====================================================================

``create(config)`` checks the config (known keys, the task's values, and the optional knobs the
task does not support, refused by name) and returns the task; ``train_and_evaluate(config,
workdir)`` runs it through :func:`research.train.loop.run`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from research.configlib import check_keys, to_dict
from research.tasks.base import KNOBS, DataInfo, Picture, Task, check_knobs
from research.tasks.checks import check_values
from research.tasks.classification import Classification
from research.tasks.detection import Detection
from research.tasks.gan import Gan
from research.tasks.segmentation import Segmentation
from research.tasks.speedrun import Speedrun
from research.tasks.style import FastStyle, StyleTransfer
from research.train import loop
from research.train.schema import generic_config

_REGISTRY: dict[str, type[Task]] = {}


def register(task: type[Task]) -> type[Task]:
    if task.name in _REGISTRY:
        raise ValueError(f'task {task.name!r} is already registered')
    _REGISTRY[task.name] = task
    return task


for _t in (Classification, Segmentation, Detection, Gan, StyleTransfer, FastStyle, Speedrun):
    register(_t)


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> type[Task]:
    """The task class registered as ``name`` (``config.task``)."""
    try:
        return _REGISTRY[str(name)]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ''
        raise KeyError(f'unknown task {name!r} (known: {", ".join(_REGISTRY)}){hint}') from None


def base_config() -> ConfigDict:
    """Every known configuration key with its default: the generic sections plus each task's own."""
    c = generic_config()
    for task in _REGISTRY.values():
        if task.section and task.section not in c:
            c[task.section] = task.defaults()
    return c


def validate_config(config: ConfigDict) -> None:
    """Raises ``KeyError`` naming any key the schema does not know (with a suggestion)."""
    check_keys(config, base_config())


def create(config: ConfigDict) -> Task:
    """The task of ``config.task`` for ``config``, after checking the config: known keys, values
    (``research.tasks.checks.check_values``: one line naming the key and the value), the optional
    knobs (one the task does not support is refused) and the task's own values (``Task.check``)."""
    task = get(config.get('task', 'classification'))(config)
    validate_config(config)
    check_values(config)
    check_knobs(task, config)
    task.check()
    return task


def trainer(config: ConfigDict, *, show_progress: bool = True) -> loop.Trainer:
    """The run of ``config`` resolved (data, mesh, model, compiled steps), not started."""
    return loop.Trainer(create(config), show_progress=show_progress)


def train_and_evaluate(
    config: ConfigDict,
    workdir: str | Path,
    *,
    stop_after_steps: int | None = None,
    show_progress: bool = True,
    allow_config_change: bool = False,
) -> dict[str, Any]:
    """Trains ``config`` (any task) in ``workdir``, resuming from its newest checkpoint that verifies;
    returns the summary (``summary.json``). ``stop_after_steps``: stop early with a checkpoint, as a
    preemption. ``allow_config_change``: resume although the config changed in a key that may not
    change on resume (``research.train.records``; the change is recorded)."""
    return loop.run(
        trainer(config, show_progress=show_progress),
        workdir,
        stop_after_steps=stop_after_steps,
        allow_config_change=allow_config_change,
        defaults=to_dict(base_config()),
    )


def knob_table() -> str:
    """The task x knob table (markdown): 'yes' where the task implements the knob, '-' where it refuses
    it at config time (docs/tasks.md holds this table; tests/test_tasks.py checks it is current)."""
    names_ = names()
    lines = ['| knob | ' + ' | '.join(names_) + ' |', '|---|' + '|'.join(':-:' for _ in names_) + '|']
    for knob in KNOBS:
        row = ['yes' if knob in get(n).supports else '-' for n in names_]
        lines.append(f'| `{knob}` | ' + ' | '.join(row) + ' |')
    return '\n'.join(lines)


__all__ = [
    'KNOBS',
    'knob_table',
    'DataInfo',
    'Picture',
    'Task',
    'base_config',
    'create',
    'get',
    'names',
    'register',
    'train_and_evaluate',
    'trainer',
    'validate_config',
]
