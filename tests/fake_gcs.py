"""A stand-in for Google Cloud Storage in tests: ``gs://<bucket>/<key>`` is ``<root>/<bucket>/<key>``.

:func:`install` makes a process reach ``gs://`` through the same code as with the real thing, with the
bytes kept under a local folder:

- ``etils.epath`` (the project's paths, TFDS's, orbax's directory operations) through its fsspec backend
  (``EPATH_USE_TF=false``; with TensorFlow installed epath would otherwise use ``tf.io.gfile``), with an
  fsspec filesystem registered for the ``gs``/``gcs`` protocols. Like GCS through gcsfs it has no append
  (``open(mode='a')`` raises), folders exist only while objects are under them (``mkdir`` is a no-op),
  and ``walk`` yields roots without the ``gs://`` prefix.
- The libraries that have their own native GCS client get their spec or path mapped to the same folder:
  TensorStore (orbax's array data: its ``gcs`` kvstore becomes the ``file`` kvstore), orbax's
  hierarchical-namespace query (a GCS API call: answered "no"), and ArrayRecord (TFDS's array_record
  files: riegeli's own GCS reader/writer). Those native clients are those libraries' responsibility;
  what is tested is that every byte the project writes or reads reaches them as a ``gs://`` path.

Call :func:`install` first thing in a fresh process (before ``etils.epath`` decides its backend).
"""

from __future__ import annotations

import os

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

ROOT_ENV = 'FAKE_GCS_ROOT'


def local_path(url: str) -> str:
    """Where ``gs://bucket/key`` lives on the local disk."""
    url = os.fspath(url)
    if not url.startswith('gs://'):
        raise ValueError(f'not a gs:// path: {url!r}')
    return os.path.join(os.environ[ROOT_ENV], url[len('gs://') :])


class FakeGCSFileSystem(DirFileSystem):
    """fsspec ``gs://`` over a local folder (``$FAKE_GCS_ROOT``), without append."""

    protocol = ('gs', 'gcs')

    def __init__(self, *args, **kwargs):
        kwargs.pop('finalize_on_close', None)  # epath passes gcsfs's option
        super().__init__(path=os.environ[ROOT_ENV], fs=LocalFileSystem(auto_mkdir=True))

    def _join(self, path):
        if isinstance(path, str) and not self._strip_protocol(path).strip('/'):
            raise ValueError(f'{path!r} names no bucket')  # gs:// alone is no path (gcsfs lists buckets)
        return super()._join(path)

    # Like gcsfs: folders are name prefixes, made by writing an object under them; creating one is a
    # no-op, so an empty "folder" does not exist.
    def mkdir(self, path, *args, **kwargs):
        pass

    def makedirs(self, path, exist_ok=False):
        pass

    def open(self, path, mode='rb', *args, **kwargs):
        if 'a' in mode or '+' in mode:
            raise NotImplementedError(
                f'GCS objects cannot be appended to or updated in place: {path} ({mode=})'
            )
        return super().open(path, mode, *args, **kwargs)


def install(root: str) -> None:
    """Routes ``gs://`` to ``root`` in this process (see the module docstring)."""
    os.environ[ROOT_ENV] = os.path.abspath(root)
    os.environ['EPATH_USE_TF'] = 'false'
    fsspec.register_implementation('gs', FakeGCSFileSystem, clobber=True)
    fsspec.register_implementation('gcs', FakeGCSFileSystem, clobber=True)

    from orbax.checkpoint._src.path import gcs_utils

    def kvstore_for_gcs(ckpt_path: str) -> dict:
        return {'driver': 'file', 'path': local_path(ckpt_path)}

    gcs_utils.get_kvstore_for_gcs = kvstore_for_gcs
    gcs_utils.is_hierarchical_namespace_enabled = lambda path: False

    from array_record.python import array_record_module

    def mapped(cls, writer: bool):
        class Mapped(cls):
            def __init__(self, path, *args, **kwargs):
                path = os.fspath(path)
                if path.startswith('gs://'):
                    path = local_path(path)
                    if writer:  # an object store needs no folder before an object is written
                        os.makedirs(os.path.dirname(path), exist_ok=True)
                super().__init__(path, *args, **kwargs)

        Mapped.__name__ = Mapped.__qualname__ = cls.__name__
        return Mapped

    array_record_module.ArrayRecordReader = mapped(array_record_module.ArrayRecordReader, writer=False)
    array_record_module.ArrayRecordWriter = mapped(array_record_module.ArrayRecordWriter, writer=True)
