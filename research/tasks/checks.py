"""Value checks of a whole config: one-line errors naming the key and the value (exit code 2).

Run by :func:`research.tasks.create` after the keys are checked (``validate_config``) and before
anything is built or written: ``train.batch_size=0: must be an integer >= 1``.
"""

from __future__ import annotations

import difflib
from typing import Any

from ml_collections import ConfigDict
from tensorflow_datasets.core import ReadInstruction

from research import models
from research.configlib import ConfigError, parse_duration


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_at_least(config: ConfigDict, key: str, low: int, what: str = '') -> None:
    v = _get(config, key)
    if not _is_int(v) or v < low:
        raise ConfigError(f'{key}={v!r}: must be an integer >= {low}{what}')


def _number_at_least(config: ConfigDict, key: str, low: float, what: str = '') -> None:
    v = _get(config, key)
    if not _is_number(v) or not v >= low:  # `not >=` also refuses NaN
        raise ConfigError(f'{key}={v!r}: must be a number >= {low:g}{what}')


def _get(config: ConfigDict, key: str) -> Any:
    node: Any = config
    for part in key.split('.'):
        node = node[part]
    return node


def _has(config: ConfigDict, key: str) -> bool:
    node: Any = config
    for part in key.split('.'):
        if not isinstance(node, (ConfigDict, dict)) or part not in node:
            return False
        node = node[part]
    return True


def _check_duration(config: ConfigDict, key: str, *, empty_ok: bool) -> None:
    v = _get(config, key)
    if empty_ok and v in ('', None, 0):
        return
    try:
        steps = parse_duration(v, 1, name=key)
    except ValueError:
        raise ConfigError(
            f"{key}={v!r}: not a duration; use e.g. '30 epochs', '1000 steps' or a number of steps"
        ) from None
    if steps < 0:
        raise ConfigError(f'{key}={v!r}: must not be negative')


def check_split(key: str, split: Any) -> None:
    """A TFDS split expression (``train``, ``train[:90%]``, ``train[10:20]+test``), by its syntax only.

    Whether the dataset has that split is checked when the dataset is opened."""
    if not isinstance(split, str) or not split.strip():
        raise ConfigError(f"{key}={split!r}: must be a split name such as 'train' or 'train[:90%]'")
    try:
        ReadInstruction.from_spec(split)
    except (ValueError, AssertionError) as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        why = lines[1] if len(lines) > 1 else 'not a split expression'
        why = why.split('. See format')[0].split('. Got:')[0].rstrip('.')
        raise ConfigError(
            f"{key}={split!r}: {why} (TFDS split syntax: 'train', 'train[:90%]', 'train[10:20]', 'train+test')"
        ) from None


def model_kwarg_error(model_name: str, key: str, value: Any = None) -> ConfigError | None:
    """The error for ``model.<key>`` when the registered model ``model_name`` takes no such argument."""
    try:
        accepted = models.accepted_kwargs(model_name)
    except (KeyError, ValueError):  # an unknown model name: reported by its own check
        return None
    if key in accepted:
        return None
    close = difflib.get_close_matches(key, accepted, n=1)
    hint = f'; did you mean model.{close[0]}?' if close else ''
    shown = f'={value!r}' if value is not None else ''
    return ConfigError(
        f"model.{key}{shown}: model '{model_name}' takes no argument '{key}'; "
        f'accepted: {", ".join(accepted)}{hint}'
    )


def check_values(config: ConfigDict) -> None:
    """Raises :class:`ConfigError` (one line, naming the key and its value) for a value that cannot run.

    Run after :func:`validate_config` (unknown keys) and before anything is built or written.
    ``train.duration='0 steps'`` passes: the run evaluates only (the loop says so).
    """
    _int_at_least(config, 'seed', -(2**63))
    _int_at_least(config, 'train.batch_size', 1)
    _int_at_least(config, 'train.eval_batch_size', 0, ' (0 = train.batch_size)')
    _int_at_least(config, 'train.log_every_steps', 1)
    _int_at_least(
        config, 'train.keep_checkpoints', 1, ' (the newest k checkpoints are kept; the final one always)'
    )
    _check_duration(config, 'train.duration', empty_ok=False)
    _check_duration(config, 'train.eval_every', empty_ok=True)
    _check_duration(config, 'train.checkpoint_every', empty_ok=True)
    ls = _get(config, 'train.label_smoothing')
    if not _is_number(ls) or not 0 <= ls < 1:
        raise ConfigError(f'train.label_smoothing={ls!r}: must be a number in [0, 1)')
    _int_at_least(config, 'data.image_size', 0, ' (0 = the native size)')
    _int_at_least(config, 'data.num_threads', 0)
    for key in ('data.train_split', 'data.eval_split'):
        check_split(key, _get(config, key))
    _number_at_least(config, 'optimizer.lr', 0.0)
    _number_at_least(config, 'optimizer.weight_decay', 0.0)
    _number_at_least(config, 'optimizer.grad_clip_norm', 0.0, ' (0 = off)')
    if _has(config, 'schedule.warmup'):
        _check_duration(config, 'schedule.warmup', empty_ok=True)
    name = config.model.get('name') if 'model' in config else None
    if isinstance(name, str):
        for key, value in config.model.items():
            if key != 'name':
                err = model_kwarg_error(name, key, value)
                if err is not None:
                    raise err
