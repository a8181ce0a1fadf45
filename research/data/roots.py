"""Where data the user owns lives: the data root ``$RESEARCH_DATA_DIR`` and ``data.path`` resolution.

Configs name the image folders they read relative to the data root, as ``$RESEARCH_DATA_DIR/<file>``
(e.g. ``$RESEARCH_DATA_DIR/cifar10-jpg.tgz``): the variable is expanded when the dataset is opened,
so a config holds no machine's path. Unset, the data root is ``~/research_data``. A missing folder
is reported in one line naming ``data.path``, the variable and the command that makes the folder
(``python -m research.data.make_folders``). TFDS datasets use their own data dir (``data.data_dir``,
``$TFDS_DATA_DIR``), not this root.
"""

from __future__ import annotations

import os
import re

from research import storage

DATA_ROOT_ENV = 'RESEARCH_DATA_DIR'
DEFAULT_DATA_ROOT = '~/research_data'

#: The folders the experiment configs read, as written in the configs (file names as in the
#: offline copies this project was developed with; ``make_folders`` writes them from TFDS).
CIFAR10_FOLDER = f'${DATA_ROOT_ENV}/cifar10-jpg.tgz'
MNIST10K_FOLDER = f'${DATA_ROOT_ENV}/mnist10k-png.tgz'

#: ``data.path`` file name -> the ``make_folders`` dataset that writes it.
MADE_BY = {'cifar10-jpg.tgz': 'cifar10', 'mnist10k-png.tgz': 'mnist10k', 'mnist-png.tgz': 'mnist'}

_VAR = re.compile(r'\$(?:\{(\w+)\}|(\w+))')


def data_root() -> str:
    """``$RESEARCH_DATA_DIR`` (``~/research_data`` when unset or empty), absolute (a remote root, e.g.
    ``gs://bucket/data``, as given)."""
    root = os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT
    return storage.absolute(root)


def expand(path: str | os.PathLike) -> str:
    """``path`` with ``$RESEARCH_DATA_DIR`` (default ``~/research_data``), other set environment
    variables and ``~`` expanded; an unset variable other than the data root raises ``ValueError``."""

    def sub(m: re.Match) -> str:
        var = m.group(1) or m.group(2)
        if var == DATA_ROOT_ENV:
            return data_root()
        if var not in os.environ:
            raise ValueError(f'data.path={os.fspath(path)!r}: environment variable ${var} is not set')
        return os.environ[var]

    return os.path.expanduser(_VAR.sub(sub, os.fspath(path)))


def uses_data_root(path: str | os.PathLike) -> bool:
    return any((m.group(1) or m.group(2)) == DATA_ROOT_ENV for m in _VAR.finditer(os.fspath(path)))


def missing_message(path: str | os.PathLike, resolved: str) -> str:
    """The one-line error for a ``data.path`` that does not exist: what was asked, where it was looked
    for, and how to make it."""
    base = os.path.basename(resolved.rstrip(os.sep))
    made_by = MADE_BY.get(base)
    make = (
        f'make it with `python -m research.data.make_folders --dataset={made_by} --out={resolved}`'
        if made_by
        else 'make a <split>/<class>/<image> folder (or a .tgz of one) there'
    )
    root = (
        f' (${DATA_ROOT_ENV}={os.environ[DATA_ROOT_ENV]!r})'
        if os.environ.get(DATA_ROOT_ENV)
        else f' (${DATA_ROOT_ENV} is unset: default {DEFAULT_DATA_ROOT})'
    )
    where = f'{root}' if uses_data_root(path) else ''
    return (
        f"data.path={os.fspath(path)!r}: '{resolved}' does not exist{where}; {make}, "
        f'or set data.path (or ${DATA_ROOT_ENV}) to your own folder'
    )
