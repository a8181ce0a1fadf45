"""Shared base for the project's offline TFDS builders."""

from __future__ import annotations

import inspect

import tensorflow_datasets as tfds
from etils import epath


class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """GeneratorBasedBuilder that needs no network and no TensorFlow.

    TFDS locates a builder's code through `importlib_resources` for builders
    living in a package; the source file path is all these builders need (no
    checksums file, no metadata folder), so that lookup is skipped.
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:  # pylint: disable=no-self-argument
        return epath.Path(inspect.getfile(cls))
