"""Shared base for the project's offline TFDS builders."""

from __future__ import annotations

import inspect

import tensorflow_datasets as tfds
from etils import epath


class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """GeneratorBasedBuilder that needs no network and no TensorFlow.

    TFDS locates a builder's code through `importlib_resources` for builders
    living in a package, which is not a dependency here; the source file path
    is all it needs (no checksums file, no metadata folder).
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:  # pylint: disable=no-self-argument
        return epath.Path(inspect.getfile(cls))
