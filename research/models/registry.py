"""Model registry: name -> Flax Linen module constructor (a class or a functools.partial of one).

The registry is filled in one place, ``research/models/__init__.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any, Callable

import flax.linen as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_EXCLUDED_FIELDS = ('parent', 'name')


def _module_class(constructor) -> type[nn.Module]:
    f = constructor
    while isinstance(f, functools.partial):
        f = f.func
    if not (isinstance(f, type) and issubclass(f, nn.Module)):
        raise TypeError(
            f'model constructor must be a flax.linen.Module class or a functools.partial of one; got {constructor!r}'
        )
    return f


def _bound_kwargs(constructor) -> dict[str, Any]:
    """Keywords fixed by (possibly nested) partials; outer partials override inner ones."""
    chain = []
    f = constructor
    while isinstance(f, functools.partial):
        chain.append(f.keywords)
        f = f.func
    bound: dict[str, Any] = {}
    for kw in reversed(chain):
        bound.update(kw)
    return bound


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in _EXCLUDED_FIELDS}


def _unknown_name_error(name: str) -> ValueError:
    known = sorted(_REGISTRY)
    msg = f'unknown model {name!r}; known models: {", ".join(known)}'
    close = difflib.get_close_matches(str(name), known, n=3)
    if close:
        msg += f' (did you mean {", ".join(repr(c) for c in close)}?)'
    return ValueError(msg)


def register(name: str, constructor: Callable[..., nn.Module], *, overwrite: bool = False):
    """Registers ``constructor`` under ``name``; returns the constructor (usable as a decorator-free helper)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f'model name must be a non-empty string; got {name!r}')
    _module_class(constructor)
    if name in _REGISTRY and not overwrite:
        raise ValueError(f'model {name!r} is already registered; pass overwrite=True to replace it')
    _REGISTRY[name] = constructor
    return constructor


def get_constructor(name: str) -> Callable[..., nn.Module]:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise _unknown_name_error(name) from None


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def accepted_kwargs(name: str) -> list[str]:
    """Constructor fields accepted by ``create(name, ...)`` (module dataclass fields minus parent/name)."""
    return sorted(_fields(_module_class(get_constructor(name))))


def create(name: str, **kwargs) -> nn.Module:
    """Builds the registered model ``name``; ``kwargs`` are module fields (they override a
    partial's fixed values, e.g. ``create('resnet20', shortcut='B')``)."""
    constructor = get_constructor(name)
    cls = _module_class(constructor)
    fields = _fields(cls)
    unknown = sorted(k for k in kwargs if k not in fields)
    if unknown:
        raise ValueError(
            f'unknown argument{"s" if len(unknown) > 1 else ""} {", ".join(map(repr, unknown))} '
            f'for model {name!r} ({cls.__name__}); accepted: {", ".join(sorted(fields))}'
        )
    given = {**_bound_kwargs(constructor), **kwargs}
    missing = [
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in given
    ]
    if missing:
        raise ValueError(f'model {name!r} ({cls.__name__}) requires argument(s): {", ".join(missing)}')
    return constructor(**kwargs)
