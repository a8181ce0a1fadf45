"""TFDS builder for a `<split>/<class>/<image>` folder tree or a tar(.gz) of one.

Small images are decoded with PIL at build time and stored as raw uint8 HWC
tensors (array_record, no TensorFlow needed). Grayscale trees get C=1, anything
else is converted to RGB (C=3). If all images share one size the feature has a
fixed shape, else (None, None, C). Class names are sorted and shared by all splits.

Large images (on average more than ``ENCODED_MIN_PIXELS``, 96 x 96, e.g. an
ImageNet-style tree) are stored as their original file bytes instead: the
feature is a 1-D uint8 tensor, the channel count is in the metadata
(``metadata['channels']``, ``metadata['encoded']``), and readers decode each
image when they use it (``research.data.transforms.open_image``), at full
resolution. Raw pixels of ImageNet's 1.28M images would take ~0.6 TB; their
JPEGs take 140 GB, and the random-resized crop needs the full-size image.

``data.path`` may name the data root as ``$RESEARCH_DATA_DIR/...`` (``research.data.roots``), and may be
remote (``gs://bucket/images.tgz``, a folder or an archive, read through ``etils.epath``).

The builder config name is a slug of the source, a short hash of its absolute
path and a fingerprint of its contents (a folder's image file list with each
file's size and mtime; an archive's size and mtime): a source changed after it
was built is built again, with a warning, and the previous build is removed.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import re
import shutil
import tarfile

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from research import storage
from research.data import roots
from research.data.builders import registry
from research.data.builders._base import OfflineBuilder

IMAGE_EXTENSIONS = frozenset(
    {'.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm', '.pgm', '.pbm'}
)
_GRAY_MODES = frozenset({'1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'})
# Sources whose images have more pixels than this on average store encoded file bytes.
ENCODED_MIN_PIXELS = 96 * 96
_ARCHIVE_SUFFIXES = ('.tar.gz', '.tgz', '.tar.bz2', '.tbz2', '.tar.xz', '.txz', '.tar')


def resolve_source(path: str | os.PathLike) -> str:
    """Absolute path of an existing folder or tar archive (``$RESEARCH_DATA_DIR`` and ``~`` expanded; a
    remote one, ``gs://...``, as given), else ``FileNotFoundError`` in one line naming ``data.path`` and
    how to make the folder."""
    if not str(path):
        raise FileNotFoundError(
            'data.path is empty: set it to a <split>/<class>/<image> folder or a .tgz of one '
            f'(e.g. ${roots.DATA_ROOT_ENV}/cifar10-jpg.tgz)'
        )
    abs_path = storage.absolute(roots.expand(path))
    if not storage.as_path(abs_path).exists():
        raise FileNotFoundError(roots.missing_message(path, abs_path))
    if _is_file(abs_path) and not _is_tarfile(abs_path):
        raise ValueError(
            f"data.path={os.fspath(path)!r}: '{abs_path}' is a file but not a tar archive "
            '(expected a directory or a .tgz/.tar.gz)'
        )
    return abs_path


def _is_file(source: str) -> bool:
    if storage.is_remote(source):
        p = storage.as_path(source)
        return p.exists() and not p.is_dir()
    return os.path.isfile(source)


def _is_tarfile(source: str) -> bool:
    if storage.is_remote(source):
        with storage.as_path(source).open('rb') as f:
            return tarfile.is_tarfile(f)
    return tarfile.is_tarfile(source)


def fingerprint(source: str) -> str:
    """A short hash of what ``source`` holds: for a folder its image files' relative paths, sizes and
    mtimes (ns); for an archive its size and mtime. Changes when images are added, removed, replaced
    or rewritten."""
    h = hashlib.sha1()
    if storage.is_remote(source):  # object stores: sizes and modification times (seconds)
        if _is_file(source):
            st = storage.as_path(source).stat()
            h.update(f'archive {st.length} {st.mtime}'.encode())
        else:
            for rel, path in sorted(_list_directory(source).items()):
                st = storage.as_path(path).stat()
                h.update(f'{rel}\0{st.length}\0{st.mtime}\n'.encode('utf-8', 'surrogateescape'))
    elif os.path.isfile(source):
        st = os.stat(source)
        h.update(f'archive {st.st_size} {st.st_mtime_ns}'.encode())
    else:
        for rel, path in sorted(_list_directory(source).items()):
            st = os.stat(path)
            h.update(f'{rel}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode('utf-8', 'surrogateescape'))
    return h.hexdigest()[:10]


def source_prefix(source: str) -> str:
    """`<slug>_<hash>`: readable, and unique per absolute source path."""
    base = os.path.basename(source.rstrip(os.sep)) or 'root'
    for suffix in _ARCHIVE_SUFFIXES:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    slug = re.sub(r'[^a-z0-9]+', '_', base.lower()).strip('_')[:40] or 'images'
    digest = hashlib.sha1(source.encode('utf-8')).hexdigest()[:10]
    return f'{slug}_{digest}'


def config_name(source: str, content: str | None = None) -> str:
    """`<slug>_<path hash>_<content fingerprint>` (the fingerprint of ``source`` now if not given)."""
    return f'{source_prefix(source)}_{content or fingerprint(source)}'


def stale_builds(builder) -> list[str]:
    """Prepared builds of the same source with other contents (same path, other fingerprint)."""
    root = os.path.dirname(os.path.dirname(os.fspath(builder.data_path)))  # <data_dir>/image_folder
    prefix = source_prefix(builder.source) + '_'
    folder = storage.as_path(root)  # local or remote (gs://...)
    if not folder.is_dir():
        return []
    return sorted(
        os.path.join(root, d)
        for d in (p.name for p in folder.iterdir())
        if d.startswith(prefix) and d != builder.builder_config.name and len(d) == len(prefix) + 10
    )


def remove_stale_builds(builder) -> None:
    """Warns that the source changed since it was built, and removes the old build(s)."""
    for path in stale_builds(builder):
        logging.warning(
            'image folder %s changed since it was built (files added, removed or modified): built again; '
            'removing the previous build %s',
            builder.source,
            path,
        )
        if storage.is_remote(path):
            storage.as_path(path).rmtree(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _is_image(rel: str) -> bool:
    parts = rel.split('/')
    if any(p.startswith('.') or p == '__MACOSX' for p in parts):
        return False
    return os.path.splitext(rel)[1].lower() in IMAGE_EXTENSIONS


def _list_directory(root: str) -> dict[str, str]:
    """relative posix path -> file path, for every image file under `root` (local or remote)."""
    found = {}
    if storage.is_remote(root):
        top = os.fspath(storage.as_path(root))
        for dirpath, _, filenames in storage.walk(top):
            rel_dir = os.fspath(dirpath)[len(top) :].strip('/')
            for f in filenames:
                rel = f'{rel_dir}/{f}' if rel_dir else f
                if _is_image(rel):
                    found[rel] = os.fspath(dirpath / f)
        return found
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
        rel_dir = os.path.relpath(dirpath, root)
        for f in filenames:
            rel = f if rel_dir == '.' else f'{rel_dir}/{f}'.replace(os.sep, '/')
            if _is_image(rel):
                found[rel] = os.path.join(dirpath, f)
    return found


def _list_tar(path: str) -> dict[str, bytes]:
    """relative posix path -> file bytes, streamed from the archive in one pass."""
    found = {}
    with contextlib.ExitStack() as stack:
        remote = stack.enter_context(storage.as_path(path).open('rb')) if storage.is_remote(path) else None
        tar = stack.enter_context(tarfile.open(path if remote is None else None, 'r|*', fileobj=remote))
        for member in tar:
            name = member.name
            while name.startswith('./'):
                name = name[2:]
            if member.isfile() and _is_image(name):
                found[name] = tar.extractfile(member).read()
    return found


@dataclasses.dataclass
class _Scan:
    """Result of indexing a source: files per split, classes, image format."""

    files: dict[str, list[tuple[str, int, object]]]  # split -> (key, label, ref)
    class_names: list[str]
    channels: int
    shape: tuple[int | None, int | None, int]
    mean_pixels: float = 0.0

    @property
    def encoded(self) -> bool:
        """Store the files' bytes (large images) rather than decoded pixels."""
        return self.mean_pixels > ENCODED_MIN_PIXELS


def _open(ref) -> Image.Image:
    if isinstance(ref, bytes):
        return Image.open(io.BytesIO(ref))
    return storage.open_image(ref) if storage.is_remote(ref) else Image.open(ref)


def _to_array(img: Image.Image, channels: int) -> np.ndarray:
    """PIL image -> uint8 HWC array with `channels` channels."""
    if channels == 3:
        if img.mode != 'RGB':
            img = img.convert('RGB')
        return np.asarray(img, dtype=np.uint8)
    if img.mode.startswith('I'):  # 16/32-bit grayscale: map 0..65535 to 0..255
        arr = np.asarray(img).astype(np.float64) / 257.0
        arr = np.round(arr).clip(0, 255).astype(np.uint8)
    elif img.mode == 'F':
        arr = np.round(np.asarray(img)).clip(0, 255).astype(np.uint8)
    else:
        arr = np.asarray(img if img.mode == 'L' else img.convert('L'), np.uint8)
    return arr[..., None]


def decode_image(ref, channels: int) -> np.ndarray:
    """Decodes file bytes or a file path to a uint8 [H, W, channels] array."""
    with _open(ref) as img:
        return _to_array(img, channels)


def scan_source(source: str) -> _Scan:
    """Indexes `source` (folder or tar): splits, sorted classes, channels, shape."""
    listing = _list_tar(source) if _is_file(source) else _list_directory(source)
    if not listing:
        raise ValueError(
            f"image folder '{source}' contains no image files (extensions: {sorted(IMAGE_EXTENSIONS)})"
        )
    parts = {rel: rel.split('/') for rel in listing}
    depths = {len(p) for p in parts.values()}
    tops = {p[0] for p in parts.values()}
    if depths == {4} and len(tops) == 1:  # one wrapping folder
        parts = {rel: p[1:] for rel, p in parts.items()}
    elif depths != {3}:
        bad = next(rel for rel, p in parts.items() if len(p) != 3)
        raise ValueError(
            f"image folder '{source}' must be laid out as <split>/<class>/<image> "
            f"(optionally inside one wrapping folder); found '{bad}'"
        )

    per_split = collections.defaultdict(set)
    for p in parts.values():
        per_split[p[0]].add(p[1])
    all_classes = sorted(set().union(*per_split.values()))
    for cls in all_classes:
        missing = sorted(s for s, c in per_split.items() if cls not in c)
        if missing:
            present = sorted(s for s, c in per_split.items() if cls in c)
            raise ValueError(
                f"image folder '{source}': class folder '{cls}' is in split(s) "
                f'{present} but missing from split(s) {missing}; all splits must '
                'have the same class folders'
            )
    index = {c: i for i, c in enumerate(all_classes)}

    files = collections.defaultdict(list)
    modes, sizes, pixels = set(), set(), 0
    for rel in sorted(parts):
        split, cls, _ = parts[rel]
        ref = listing[rel]
        try:
            with _open(ref) as img:
                modes.add(img.mode)
                sizes.add(img.size)
                pixels += img.size[0] * img.size[1]
        except Exception as e:  # pylint: disable=broad-except
            raise ValueError(f"image folder '{source}': cannot read image '{rel}': {e}") from e
        files[split].append(('/'.join(parts[rel]), index[cls], ref))
    channels = 1 if modes <= _GRAY_MODES else 3
    if len(sizes) == 1:
        ((w, h),) = sizes
        shape = (h, w, channels)
    else:
        shape = (None, None, channels)
    return _Scan(dict(files), all_classes, channels, shape, pixels / len(parts))


class ImageFolderConfig(tfds.core.BuilderConfig):
    """Config carrying the absolute source path (folder or archive)."""

    def __init__(self, *, source: str, **kwargs):
        super().__init__(name=config_name(source), **kwargs)
        self.source = source


class ImageFolder(OfflineBuilder, skip_registration=True):
    """Class-folder image dataset; `ImageFolder(path=..., data_dir=...)`."""

    name = 'image_folder'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}

    def __init__(self, *, path: str | os.PathLike, **kwargs):
        source = resolve_source(path)
        self._scan: _Scan | None = None
        kwargs.setdefault('file_format', 'array_record')
        super().__init__(config=ImageFolderConfig(source=source), **kwargs)

    @property
    def source(self) -> str:
        return self.builder_config.source

    def __getstate__(self):
        # TFDS re-runs __init__(**state) on unpickling (grain's worker processes): the source path
        # instead of the config this class makes from it.
        state = {k: v for k, v in self._original_state.items() if k != 'config'}
        return {'_original_state': {**state, 'path': self.source}}

    def _get_scan(self) -> _Scan:
        if self._scan is None:
            self._scan = scan_source(self.source)
        return self._scan

    def _info(self) -> tfds.core.DatasetInfo:
        if tfds.core.dataset_info.dataset_info_path(self.data_path).exists():
            # Already prepared: features and metadata are restored from disk, so the
            # source is not scanned again.
            return tfds.core.DatasetInfo(builder=self, features=None, metadata=tfds.core.MetadataDict())
        scan = self._get_scan()
        if scan.encoded:  # the original file bytes, decoded by the reader
            image = tfds.features.Tensor(shape=(None,), dtype=np.uint8, encoding='bytes')
        else:
            image = tfds.features.Tensor(shape=scan.shape, dtype=np.uint8, encoding='bytes')
        return tfds.core.DatasetInfo(
            builder=self,
            description=f'Image folder dataset built from {self.source}',
            features=tfds.features.FeaturesDict(
                {
                    'image': image,
                    'label': tfds.features.ClassLabel(names=scan.class_names),
                }
            ),
            supervised_keys=('image', 'label'),
            metadata=tfds.core.MetadataDict(
                source=self.source, class_names=scan.class_names, channels=scan.channels, encoded=scan.encoded
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        scan = self._get_scan()
        return {
            split: self._generate_examples(entries, scan.channels, scan.encoded)
            for split, entries in sorted(scan.files.items())
        }

    def _generate_examples(self, entries, channels, encoded=False):
        for key, label, ref in entries:
            if encoded:
                if not isinstance(ref, bytes):
                    with storage.as_path(ref).open('rb') as f:
                        ref = f.read()
                image = np.frombuffer(ref, np.uint8)
            else:
                image = decode_image(ref, channels)
            yield key, {'image': image, 'label': label}


def _make_image_folder(path: str, data_dir: str, params=None, config=None) -> ImageFolder:
    del params, config
    return ImageFolder(path=path, data_dir=data_dir)


registry.register(
    'image_folder',
    _make_image_folder,
    kind='classification',
    uses_path=True,
    description='your own <split>/<class>/<image> folder or .tgz of one (data.path)',
)
