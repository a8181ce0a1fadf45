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

import difflib

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
from research.tasks.checks import check_split, check_values, model_kwarg_error


def load_config_file(spec: str) -> ConfigDict:
    """``get_config(arg)`` of ``path/to/file.py[:arg]`` (what ``--config`` loads), without overrides."""
    import importlib.util

    path, _, arg = spec.partition(':')
    module_spec = importlib.util.spec_from_file_location('_research_config_file', path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f'--config={spec!r}: not a Python file')
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def _config_args(argv: list[str]) -> tuple[str | None, list[tuple[str, str, str]]]:
    """``(the --config= spec or None, [(argument, key, value)] of every --config.<key>=<value>)``."""
    spec, overrides = None, []
    for a in argv:
        if a.startswith('--config='):
            spec = a.partition('=')[2]
        elif a.startswith('--config.'):
            key, _, value = a[len('--config.') :].partition('=')
            overrides.append((a, key, value))
    return spec, overrides


def split_model_overrides(argv: list[str], config: ConfigDict | None = None) -> tuple[list[str], dict]:
    """Takes the ``--config.model.<arg>=<value>`` overrides of constructor arguments the experiment's
    config does not set out of ``argv``: ``(the rest of argv, {arg: value})``.

    ``config.model`` holds the model's constructor arguments, but an experiment file sets only the
    ones it changes, and the locked config refuses a key it lacks. Any argument the model accepts
    (``models.accepted_kwargs``: ``--config.model.norm=batch_biased``, ``--config.model.remat=True``)
    is taken here and added to ``config.model`` after the flags are parsed
    (:func:`add_model_overrides`); a key the model does not take stays in ``argv`` and is refused by
    name. Values are Python literals (``True``, ``0.1``, ``(1, 2)``, ``None``), else strings.
    """
    import ast

    spec, overrides = _config_args(argv)
    if not any(key.startswith('model.') for _, key, _ in overrides):
        return list(argv), {}
    if config is None:
        if spec is None:
            return list(argv), {}
        try:
            config = load_config_file(spec)
        except Exception:  # the config file's own error is reported by flag parsing
            return list(argv), {}
    if 'model' not in config:
        return list(argv), {}
    name = {k: v for _, k, v in overrides}.get('model.name', config.model.get('name'))
    taken, added = set(), {}
    for a, key, value in overrides:
        section, _, arg = key.partition('.')
        if section != 'model' or not arg or '.' in arg or arg in config.model or arg == 'name':
            continue
        if not isinstance(name, str) or model_kwarg_error(name, arg) is not None:
            continue
        try:
            added[arg] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            added[arg] = value
        taken.add(a)
    return [a for a in argv if a not in taken], added


def add_model_overrides(config: ConfigDict, added: dict) -> None:
    """Sets the constructor arguments :func:`split_model_overrides` took into ``config.model``."""
    if added:
        with config.unlocked():
            for k, v in added.items():
                config.model[k] = v


def explain_override_error(argv: list[str], config: ConfigDict | None = None) -> ConfigError | None:
    """The one-line error for a ``--config.<key>=<value>`` override the config has no key for.

    ``launch.py``'s config is locked, so ``--config.model.depth=20`` on LeNet fails inside flag
    parsing with a bare ``AttributeError: depth``. Given the command line (and the loaded config file,
    else it is loaded from ``--config=``), this names the key, its value and, for ``model.*``, the
    model's accepted arguments. None when every override names an existing key.
    """
    spec, args = _config_args(argv)
    overrides = [(key, value) for _, key, value in args]
    if config is None:
        if spec is None:
            return None
        try:
            config = load_config_file(spec)
        except Exception:  # the config file's own error is reported by the caller
            return None
    flat = flatten(config)
    model_name = dict(overrides).get('model.name', config.model.get('name') if 'model' in config else None)
    for key, value in overrides:
        if key in flat or any(k.startswith(key + '.') for k in flat):
            continue
        section, _, rest = key.partition('.')
        if section == 'model' and rest and '.' not in rest and isinstance(model_name, str):
            err = model_kwarg_error(model_name, rest, value)
            if err is not None:
                return err
            return ConfigError(
                f"--config.{key}={value}: the experiment's config sets no model.{rest}; "
                f"set it in the experiment file (model '{model_name}' accepts it)"
            )
        close = difflib.get_close_matches(key, list(flat), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ''
        return ConfigError(f"--config.{key}={value}: unknown config key '{key}'{hint}")
    return None


__all__ = [
    'FREE_FORM_SECTIONS',
    'ConfigDict',
    'ConfigError',
    'base_config',
    'check_split',
    'check_values',
    'add_model_overrides',
    'explain_override_error',
    'flatten',
    'load_config_file',
    'ml_collections',
    'model_kwarg_error',
    'parse_arg',
    'parse_duration',
    'split_model_overrides',
    'to_dict',
    'validate_config',
    'with_model',
]
