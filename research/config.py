"""Experiment configuration: the schema every experiment starts from.

An experiment file (``experiments/**.py``) defines ``get_config(arg=None)`` that starts from
:func:`base_config` and changes values. ``launch.py`` loads it through ``ml_collections.config_flags``
with ``lock_config=True``, so a command-line override of a key that does not exist fails at once.
Keys added inside an experiment file that the schema does not know are caught by
:func:`validate_config` (``config.model`` is free-form: its keys other than ``name`` are the model
constructor's arguments and are checked against them).

The schema is the generic sections the one loop reads (``research/train/schema.py``: seed, task,
model, data, optimizer, schedule, init, train) plus each task's own section (``config.seg``,
``config.det``, ``config.gan``, ``config.style``, ``config.speedrun``: ``Task.defaults()`` in
``research/tasks/``). Durations (``train.duration``, ``train.eval_every``, ``schedule.boundaries``...)
are strings resolved at run time against the dataset size: ``'30 epochs'``, ``'64000 steps'`` (short
forms ``'30ep'``, ``'64000st'``; a bare number means steps).
"""

from __future__ import annotations

import ml_collections
from ml_collections import ConfigDict

from research.configlib import (
    FREE_FORM_SECTIONS,
    ConfigError,
    flatten,
    parse_arg,
    parse_duration,
    to_dict,
    with_model,
)
from research.tasks import base_config, validate_config

__all__ = [
    "FREE_FORM_SECTIONS",
    "ConfigDict",
    "ConfigError",
    "base_config",
    "flatten",
    "ml_collections",
    "parse_arg",
    "parse_duration",
    "to_dict",
    "validate_config",
    "with_model",
]
