"""Config helpers with no project imports: durations, config-file arguments, plain dicts, key checks.

Every layer may import this module (the schema itself is assembled in :mod:`research.config` from
the generic sections of :mod:`research.train.schema` and each task's own section).
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Iterable, Mapping

from ml_collections import ConfigDict

#: Sections whose keys are free-form (checked elsewhere, e.g. model kwargs against the constructor).
FREE_FORM_SECTIONS = ('model',)


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key and the value (CLI exit code 2)."""


def with_model(config: ConfigDict, name: str, **kwargs: Any) -> ConfigDict:
    """Sets ``config.model`` to ``name`` plus constructor arguments."""
    config.model = ConfigDict({'name': name, **kwargs})
    return config


def walk(d: Mapping, prefix: str = ''):
    """``(dotted path, value)`` of every key of a nested config, sections included."""
    for k, v in d.items():
        path = f'{prefix}{k}'
        yield path, v
        if isinstance(v, (ConfigDict, dict)):
            yield from walk(v, path + '.')


def check_keys(config: ConfigDict, schema: ConfigDict) -> None:
    """Raises ``KeyError`` naming any key of ``config`` that ``schema`` does not know (with a suggestion)."""
    known = dict(walk(schema))
    for path, _ in walk(config):
        if path.split('.')[0] in FREE_FORM_SECTIONS and '.' in path:
            continue
        if path not in known:
            close = difflib.get_close_matches(path, list(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ''
            raise KeyError(f"unknown config key '{path}'{hint}")


_DURATION = re.compile(r'^\s*([0-9]*\.?[0-9]+)\s*(epochs?|ep|steps?|st)?\s*$', re.IGNORECASE)


def parse_duration(value: Any, steps_per_epoch: int, *, name: str = 'duration') -> int:
    """Resolves ``'30 epochs'`` / ``'1000 steps'`` / ``1000`` to a number of steps."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f'{name}={value!r} is negative')
        return int(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ConfigError(f"cannot parse {name}={value!r}: use e.g. '30 epochs' or '1000 steps'")
    amount, unit = float(m.group(1)), (m.group(2) or 'steps').lower()
    if unit.startswith('ep'):
        return int(round(amount * steps_per_epoch))
    return int(amount)


def parse_arg(arg: str | None, defaults: dict[str, Any]) -> dict[str, Any]:
    """Parses a config-file argument like ``'depth=56,shortcut=B,quick'``.

    ``defaults`` lists the accepted keys with default values; a bare word sets a
    boolean key to True. Unknown keys raise ``ValueError`` naming them.
    """
    out = dict(defaults)
    if not arg:
        return out
    for token in filter(None, (t.strip() for t in arg.split(','))):
        key, sep, value = token.partition('=')
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ''
            raise ValueError(f"unknown config argument '{key}' (accepted: {', '.join(defaults)}){hint}")
        default = defaults[key]
        if not sep:
            if not isinstance(default, bool):
                raise ValueError(f"config argument '{key}' needs a value, e.g. {key}={default}")
            out[key] = True
        elif isinstance(default, bool):
            out[key] = value.lower() in ('1', 'true', 'yes', 'on')
        elif isinstance(default, int):
            out[key] = int(value)
        elif isinstance(default, float):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def to_dict(config: ConfigDict | Mapping) -> dict[str, Any]:
    """A JSON-friendly plain dict of a config."""

    def conv(v):
        if isinstance(v, (ConfigDict, dict)):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(config)


def flatten(config: ConfigDict | dict, prefix: str = '') -> dict[str, Any]:
    """``{'train.batch_size': 128, ...}``."""
    out = {}
    items: Iterable = config.items()
    for k, v in items:
        if isinstance(v, (ConfigDict, dict)):
            out.update(flatten(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out
