"""TFDS catalog datasets by name (``cifar10``, ``imagenet2012``, ``voc/2007``, ``coco/2017``, ...).

Preparing (download + ``download_and_prepare(file_format='array_record')``, once per ``data_dir``)
runs TFDS's own builder code, which reads the raw files and encodes the images with TensorFlow:
that needs the ``prepare`` extra (``pip install -e '.[prepare]'``, i.e. ``tensorflow-cpu``). Without
it, :func:`open_dataset` stops before any download with one line naming the dataset and the
install command. Datasets whose TFDS builder wants a manual download (``imagenet2012``) are checked
for their files in ``<data_dir>/downloads/manual`` first, also before anything is fetched.

Reading a prepared dataset needs no TensorFlow: the builder is restored from its prepared files
(``dataset_info.json`` and the array_record shards, ``tfds.builder_from_directory``), without the
catalog's code, and examples are decoded with NumPy/OpenCV/PIL by ``as_data_source``.
"""

from __future__ import annotations

import contextlib
import logging
import os

import tensorflow_datasets as tfds

from research import storage
from research.data.builders import registry

INSTALL_PREPARE = "pip install -e '.[prepare]' (or: pip install tensorflow-cpu)"


class PrepareError(RuntimeError):
    """A TFDS dataset cannot be prepared here (missing extra, missing manual download, failed build)."""


@contextlib.contextmanager
def no_progress_bars():
    """Turns off TFDS tqdm bars while building (they flood non-tty logs)."""
    from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top

    previous = getattr(tqdm_utils, '_active', True)
    tqdm_utils._active = False  # pylint: disable=protected-access
    try:
        yield
    finally:
        tqdm_utils._active = previous  # pylint: disable=protected-access


def prepared(name: str, data_dir: str):
    """The read-only builder of ``name`` prepared in ``data_dir``, or None if it is not prepared.

    ``name`` is a TFDS name with optional config and version (``voc/2007``, ``cifar10:3.0.2``); without
    a config the catalog's default config is used, without a version the newest prepared one.
    """
    try:
        builder = tfds.core.read_only_builder.builder_from_files(name, data_dir=data_dir)
    except (tfds.core.registered.DatasetNotFoundError, FileNotFoundError, ValueError):
        return None
    if '/' not in name.split(':')[0]:  # no config named: only the catalog's default config counts
        default = _default_config(name)
        if default is not None and (builder.builder_config is None or builder.builder_config.name != default):
            path = os.path.join(data_dir, name.split(':')[0], default)
            folder = storage.as_path(path)  # local or remote (gs://...)
            versions = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            full = [
                v
                for v in versions
                if tfds.core.dataset_info.dataset_info_path(os.path.join(path, v)).exists()
            ]
            return tfds.builder_from_directory(os.path.join(path, full[-1])) if full else None
    return builder


def _default_config(name: str) -> str | None:
    try:
        cls = tfds.builder_cls(name.split(':')[0])
    except Exception:  # pylint: disable=broad-except
        return None
    configs = getattr(cls, 'BUILDER_CONFIGS', None) or []
    default = getattr(cls, 'DEFAULT_BUILDER_CONFIG_NAME', None)
    return default or (configs[0].name if configs else None)


def catalog_builder(name: str, data_dir: str):
    """TFDS's (unprepared) catalog builder for ``name``; ``ValueError`` for names TFDS does not know."""
    try:
        return tfds.builder(name, data_dir=data_dir, file_format='array_record')
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(
            f"unknown dataset data.name={name!r}: not one of this project's builders "
            f'{list(registry.names())} and not a TFDS dataset ({str(e).splitlines()[0]})'
        ) from e
    except ModuleNotFoundError as e:  # a builder whose code needs TensorFlow just to describe itself
        if _is_tensorflow(e):
            raise missing_tensorflow(name) from e
        raise


def missing_tensorflow(name: str) -> PrepareError:
    return PrepareError(
        f"preparing TFDS dataset '{name}' needs TensorFlow (TFDS reads its raw files and encodes its "
        f'images with it; reading it once prepared does not): {INSTALL_PREPARE}'
    )


def _is_tensorflow(e: BaseException) -> bool:
    return isinstance(e, ModuleNotFoundError) and (e.name or '').split('.')[0] == 'tensorflow'


def has_image_features(feature) -> bool:
    """Whether a TFDS feature (dict, sequence, ...) holds an ``Image`` or ``Video`` (encoded with
    TensorFlow when a builder yields arrays)."""
    if isinstance(feature, (tfds.features.Image, tfds.features.Video)):
        return True
    if isinstance(feature, tfds.features.FeaturesDict):
        return any(has_image_features(f) for f in feature.values())
    inner = getattr(feature, 'feature', None)
    return inner is not None and inner is not feature and has_image_features(inner)


def require_tensorflow(name: str, builder=None) -> None:
    """Raises :class:`PrepareError` (one line) unless TensorFlow imports; with ``builder``, only if
    its features hold images (TFDS's builders with images read and encode them with TensorFlow)."""
    if builder is not None:
        try:
            if not has_image_features(builder.info.features):
                return
        except ModuleNotFoundError as e:
            if _is_tensorflow(e):
                raise missing_tensorflow(name) from e
            raise
    try:
        import tensorflow  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError as e:
        raise missing_tensorflow(name) from e


def manual_dir(data_dir: str) -> str:
    """Where TFDS looks for manually downloaded files: ``<data_dir>/downloads/manual``."""
    return os.path.join(data_dir, 'downloads', 'manual')


def check_manual_download(name: str, builder, data_dir: str) -> None:
    """For a builder that needs a manual download, its files must be in :func:`manual_dir`."""
    instructions = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
    if not instructions:
        return
    where = manual_dir(data_dir)
    folder = storage.as_path(where)  # local or remote (gs://...)
    if folder.is_dir() and any(True for _ in folder.iterdir()):
        return
    hint = ' '.join(str(instructions).split())
    raise PrepareError(
        f"TFDS dataset '{name}' needs a manual download: put its files in {where} "
        f'(data.data_dir or $TFDS_DATA_DIR sets the data dir). TFDS says: {hint}'
    )


def open_dataset(name: str, data_dir: str):
    """The prepared (read-only) builder of TFDS dataset ``name`` in ``data_dir``, prepared first if
    needed (then TensorFlow is required; see the module docstring)."""
    builder = prepared(name, data_dir)
    if builder is not None:
        return builder
    builder = catalog_builder(name, data_dir)  # an unknown name fails here, before TensorFlow loads
    check_manual_download(name, builder, data_dir)
    require_tensorflow(name, builder)
    logging.info('Preparing TFDS dataset %s in %s', name, data_dir)
    try:
        with no_progress_bars():
            builder.download_and_prepare(file_format='array_record')
    except PrepareError:
        raise
    except ModuleNotFoundError as e:
        if _is_tensorflow(e):  # a builder that reads its raw files with TensorFlow
            raise missing_tensorflow(name) from e
        raise
    except Exception as e:  # one line, the cause chained for --verbose / debugging
        first = next((line for line in str(e).splitlines() if line.strip()), '')
        raise PrepareError(
            f"preparing TFDS dataset '{name}' in {data_dir} failed: {type(e).__name__}: {first}"
        ) from e
    return tfds.builder_from_directory(os.fspath(builder.data_path))
