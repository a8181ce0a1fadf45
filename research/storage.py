"""Files that may be local or remote (``gs://bucket/...`` and the other schemes ``etils.epath`` reads).

Every path the project writes or reads that a user names (workdirs, sweep directories, data folders
and archives, TFDS data dirs, weights) goes through ``etils.epath``, so ``gs://bucket/runs/x`` works
wherever the matching filesystem is installed (``pip install gcsfs``, or TensorFlow's ``tf.io.gfile``).
Object stores differ from a disk in three ways this module hides:

- no append: :func:`append_text` rewrites the object (a local file is appended to, as before);
- no atomic rename, but every object write is atomic: :func:`write_text` / :func:`write_bytes` with
  ``atomic=True`` write a temporary file and rename it on a local disk, and write the object once
  elsewhere;
- libraries that want a file name (PIL, matplotlib): :func:`save_image` / :func:`save_figure` encode
  into memory and write the bytes; :func:`open_image` reads them.

And one difference of epath's fsspec backend: its ``walk`` yields ``bucket/dir`` without the scheme;
:func:`walk` puts it back. No side effects on import; no project imports.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import pathlib
import tempfile
from collections.abc import Iterator
from typing import Any, Union

from etils import epath

#: What :func:`as_path` returns.
AnyPath = Union[pathlib.Path, epath.Path]


def is_remote(path: Any) -> bool:
    """Whether ``path`` names an object store (``scheme://...``) rather than the local filesystem."""
    return '://' in os.fspath(path)


def as_path(path: Any) -> AnyPath:
    """``path`` (a string, ``pathlib`` or ``epath`` path) as a path object: an ``epath.Path`` for a remote
    one (``scheme://...``), a ``pathlib.Path`` for a local one (so local callers see what they always
    did). Both have the ``pathlib`` methods used here (``/``, ``open``, ``read_*``/``write_*``,
    ``exists``, ``is_dir``, ``iterdir``, ``mkdir``)."""
    return epath.Path(path) if is_remote(path) else pathlib.Path(path)


def absolute(path: Any) -> str:
    """A local path made absolute (``~`` expanded); a remote one as given."""
    s = os.fspath(path)
    return s if is_remote(s) else os.path.abspath(os.path.expanduser(s))


def walk(top: Any) -> Iterator[tuple[epath.Path, list[str], list[str]]]:
    """``(root, dirs, files)`` under ``top`` as ``os.walk``, with each ``root`` a full path (epath's
    fsspec backend yields remote roots without their ``scheme://``)."""
    top = epath.Path(top)
    text = os.fspath(top)
    scheme = text.split('://', 1)[0] if is_remote(text) else None
    for root, dirs, files in top.walk():
        r = os.fspath(root)
        if scheme and not is_remote(r):
            root = epath.Path(f'{scheme}://{r.lstrip("/")}')
        yield epath.Path(root), dirs, files


def _local_atomic_write(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(
        dir=os.path.dirname(path) or '.', prefix=f'.{os.path.basename(path)}.', suffix='.tmp'
    )
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path: Any, data: bytes, *, atomic: bool = False, parents: bool = True) -> AnyPath:
    """Writes ``data`` to ``path`` (its folder made first when ``parents``). ``atomic``: readers never
    see a partial file (a temporary file renamed on a local disk; one object write elsewhere)."""
    p = as_path(path)
    if parents:
        p.parent.mkdir(parents=True, exist_ok=True)
    if atomic and not is_remote(p):
        _local_atomic_write(os.fspath(p), data)
    else:
        p.write_bytes(data)
    return p


def write_text(path: Any, text: str, *, atomic: bool = False, parents: bool = True) -> AnyPath:
    """:func:`write_bytes` of ``text`` in UTF-8."""
    return write_bytes(path, text.encode('utf-8'), atomic=atomic, parents=parents)


def read_text(path: Any, default: str | None = None) -> str | None:
    """The text of ``path``; ``default`` if it does not exist."""
    try:
        return as_path(path).read_text()
    except FileNotFoundError:
        return default


def append_text(path: Any, text: str) -> None:
    """Appends ``text`` to ``path`` (created if missing). Object stores have no append: the object is
    read and written again whole (fine for logs of a few MB; each write replaces it atomically)."""
    p = as_path(path)
    if not is_remote(p):
        with open(os.fspath(p), 'a') as f:
            f.write(text)
        return
    p.write_text((read_text(p, '') or '') + text)


def _format_for(path: Any, fmt: str | None) -> str | None:
    if fmt:
        return fmt
    ext = os.path.splitext(os.fspath(path))[1].lower()
    return ext[1:] if ext else None


def save_image(
    image: Any, path: Any, *, format: str | None = None, parents: bool = True, **params
) -> AnyPath:
    """Saves a PIL image (format from the suffix unless ``format``; ``params`` as ``Image.save``):
    encoded in memory, then written to ``path`` (local or remote)."""
    from PIL import Image

    fmt = format
    if fmt is None:
        ext = os.path.splitext(os.fspath(path))[1].lower()
        fmt = Image.registered_extensions().get(ext)
        if fmt is None:
            raise ValueError(f'cannot tell the image format of {os.fspath(path)!r} from its suffix')
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return write_bytes(path, buf.getvalue(), parents=parents)


def save_figure(fig: Any, path: Any, *, parents: bool = True, **params) -> AnyPath:
    """``fig.savefig`` (format from the suffix) into memory, then written to ``path``."""
    buf = io.BytesIO()
    fig.savefig(buf, format=_format_for(path, params.pop('format', None)), **params)
    return write_bytes(path, buf.getvalue(), parents=parents)


def open_image(path: Any):
    """A PIL image read from ``path`` (local or remote; the bytes are read at once)."""
    from PIL import Image

    return Image.open(io.BytesIO(as_path(path).read_bytes()))


def configure_remote() -> None:
    """Process settings for remote paths, for entry points (``launch.py``): gcsfs (epath's fsspec
    backend for ``gs://``) lists folders afresh instead of caching each listing for the life of the
    process, since other processes (parallel sweep workers) and TensorStore (checkpoint arrays) write
    objects it would not see. A value the user set (fsspec's config files, ``$FSSPEC_GS...``) is kept."""
    import fsspec.config

    conf = fsspec.config.conf
    if not any('use_listings_cache' in conf.get(p, {}) for p in ('gs', 'gcs')):
        conf.setdefault('gs', {})['use_listings_cache'] = False


def lock_dir() -> str:
    """Where :func:`locked` keeps the lock files of remote paths (this host only)."""
    return os.path.join(tempfile.gettempdir(), f'research-locks-{os.getuid()}')


@contextlib.contextmanager
def locked(path: Any) -> Iterator[None]:
    """An exclusive ``flock`` for read-modify-write of ``path`` between the processes of this host:
    on ``<path>.lock`` for a local path, on a file named by the path's hash in :func:`lock_dir` for a
    remote one (object stores have no lock; writers on other hosts are not excluded)."""
    text = os.fspath(path)
    if is_remote(text):
        os.makedirs(lock_dir(), exist_ok=True)
        lock_path = os.path.join(lock_dir(), hashlib.sha256(text.encode()).hexdigest()[:32] + '.lock')
    else:
        os.makedirs(os.path.dirname(os.path.abspath(text)), exist_ok=True)
        lock_path = text + '.lock'
    with open(lock_path, 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
