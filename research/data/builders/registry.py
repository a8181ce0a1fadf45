"""The registry of this project's own dataset builders, by ``data.name``.

Each builder module of ``research.data.builders`` registers its builders when it is imported
(``research.data.builders`` imports them all), so the generic data module finds a builder by name
without importing any task package. A name that is not registered here is a TFDS catalog name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

#: What a registered builder's dataset holds, i.e. which task reads it.
KINDS = ('classification', 'segmentation', 'detection')


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered builder.

    ``make(path, data_dir, params=None, config=None)`` returns the (unprepared) TFDS builder: ``path``
    is the resolved ``data.path`` (``''`` for builders that read none), ``params`` the generation
    settings of a synthetic dataset (``None``: its defaults), ``config`` the builder config named after
    a slash (``voc_seg/2007``; ``None``: the first of ``configs``). ``default_path`` is used when
    ``data.path`` is empty (``''``: the builder needs ``data.path`` or reads none). ``downloads``:
    preparing it fetches files (network, or the user's manual download).
    """

    name: str
    make: Callable
    kind: str
    uses_path: bool = False
    default_path: str = ''
    configs: tuple[str, ...] = ()
    downloads: bool = False
    description: str = ''

    def build(self, name: str, path: str, data_dir: str, params=None):
        """``make`` for the full ``data.name`` (``voc_seg/2007``: config '2007'); an unknown config raises."""
        config = str(name).partition('/')[2] or None
        if config is not None and config not in self.configs:
            known = f'its configs: {", ".join(self.configs)}' if self.configs else 'it has no configs'
            raise ValueError(f'data.name={name!r}: unknown config {config!r} of {self.name!r} ({known})')
        return self.make(path, data_dir, params, config)


_ENTRIES: dict[str, Entry] = {}


def register(
    name: str,
    make: Callable,
    *,
    kind: str,
    uses_path: bool = False,
    default_path: str = '',
    configs: tuple[str, ...] = (),
    downloads: bool = False,
    description: str = '',
) -> Entry:
    """Registers builder ``name`` (a second registration of one name is an error)."""
    if kind not in KINDS:
        raise ValueError(f'builder {name!r}: kind must be one of {KINDS}, got {kind!r}')
    if name in _ENTRIES:
        raise ValueError(f'dataset builder {name!r} is registered twice')
    entry = Entry(name, make, kind, uses_path, default_path, tuple(configs), downloads, description)
    _ENTRIES[name] = entry
    return entry


def lookup(name: str) -> Entry | None:
    """The entry of ``name`` (``'voc_seg/2012'``: the entry of ``voc_seg``), or None for TFDS names."""
    return _ENTRIES.get(str(name).split('/')[0].split(':')[0])


def names(kind: str | None = None) -> tuple[str, ...]:
    """Registered names (of one kind), in registration order."""
    return tuple(n for n, e in _ENTRIES.items() if kind is None or e.kind == kind)
