"""oneDNN convolutions for JAX on CPU, as XLA FFI custom calls (issue 8).

XLA:CPU runs the small convolutions of CIFAR-size networks (16x16x32, 8x8x64) on one thread, and
per core its kernels are 1.3-1.8x slower than oneDNN's, the filter gradient most
(benchmarks/RESULTS.md). PyTorch on CPU uses oneDNN. This module compiles ``onednn_conv.cc``
(forward, input gradient and filter gradient of a dense 2D convolution, NHWC / HWIO, float32)
against the oneDNN of the ``onednn`` extra (``pip install -e '.[onednn]'``: Intel's
``onednn-cpu-gomp`` wheels) on first use, caches the shared library, registers the three
handlers with ``jax.ffi`` and exposes :func:`conv2d`, a differentiable convolution (first order:
gradients of gradients are not defined through it).

:func:`research.kernels.cpu.conv_general_dilated` (``Conv`` / ``FlaxConv``, so every model),
routes dense float32 2D convolutions here while :func:`use_onednn` is on: the trainers do so by
default where the extra is installed and the run has one CPU device (``train.cpu_conv``,
:func:`resolve`); ``benchmarks/train_step.py`` times both.

Environment: ``RESEARCH_ONEDNN_ROOT`` (a prefix holding ``include/dnnl.hpp`` and ``lib/libdnnl.so``;
default: this Python's prefix, where the wheels put them), ``RESEARCH_KERNEL_CACHE`` (where the
built library goes; default ``~/.cache/research/kernels``), ``CXX`` (the compiler; default ``g++``).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = pathlib.Path(__file__).with_name('onednn_conv.cc')
TARGETS = {
    'fwd': ('research_onednn_conv_fwd', 'ResearchOnednnConvFwd'),
    'bwd_data': ('research_onednn_conv_bwd_data', 'ResearchOnednnConvBwdData'),
    'bwd_weights': ('research_onednn_conv_bwd_weights', 'ResearchOnednnConvBwdWeights'),
}
INSTALL_HINT = (
    "pip install -e '.[onednn]' (Intel's onednn-cpu-gomp and onednn-devel-cpu-gomp wheels) and a C++ compiler"
)


class OnednnUnavailable(RuntimeError):
    """oneDNN convolutions were asked for but cannot be built or loaded here."""


def _roots() -> list[pathlib.Path]:
    env = os.environ.get('RESEARCH_ONEDNN_ROOT')
    if env:
        return [pathlib.Path(env)]
    return [pathlib.Path(sys.prefix), pathlib.Path('/usr/local'), pathlib.Path('/usr')]


def _find_onednn() -> tuple[pathlib.Path, pathlib.Path]:
    """(include dir, lib dir) of a oneDNN install, or OnednnUnavailable naming where it looked."""
    for root in _roots():
        inc = root / 'include'
        for lib in (root / 'lib', root / 'lib64', root / 'lib' / 'x86_64-linux-gnu'):
            if (inc / 'dnnl.hpp').is_file() and any(lib.glob('libdnnl.so*')):
                return inc, lib
    looked = ', '.join(str(r) for r in _roots())
    raise OnednnUnavailable(f'oneDNN headers and library not found under {looked}; install: {INSTALL_HINT}')


def _cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get('RESEARCH_KERNEL_CACHE', '~/.cache/research/kernels')).expanduser()


def build() -> pathlib.Path:
    """Compile ``onednn_conv.cc`` (once per source, JAX and oneDNN install) and return the library."""
    inc, lib = _find_onednn()
    cxx = os.environ.get('CXX', 'g++')
    if shutil.which(cxx) is None:
        raise OnednnUnavailable(f'C++ compiler {cxx!r} not found (set CXX); needed to build {SOURCE.name}')
    jax_inc = jax.ffi.include_dir()
    key = hashlib.sha256(
        b'\0'.join(
            [
                SOURCE.read_bytes(),
                jax.__version__.encode(),
                str(inc).encode(),
                str(lib).encode(),
                cxx.encode(),
            ]
        )
    ).hexdigest()[:16]
    out = _cache_dir() / f'onednn_conv_{key}.so'
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_out = pathlib.Path(tmp) / out.name
        cmd = [
            cxx,
            '-O2',
            '-std=c++17',
            '-shared',
            '-fPIC',
            '-w',
            f'-I{jax_inc}',
            f'-I{inc}',
            str(SOURCE),
            f'-L{lib}',
            '-ldnnl',
            f'-Wl,-rpath,{lib}',
            '-o',
            str(tmp_out),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise OnednnUnavailable(
                f'building {SOURCE.name} failed ({" ".join(cmd)}):\n{proc.stderr[-4000:]}'
            )
        os.replace(tmp_out, out)  # atomic: concurrent builders (sweep workers) never see half a file
    return out


_LOCK = threading.Lock()
_LOADED: dict[str, OnednnUnavailable | None] = {}  # 'result': None once registered, or the failure


def load() -> None:
    """Build (if needed) and register the handlers, once per process; raises OnednnUnavailable with
    the reason (remembered: a failed build is not retried by every caller)."""
    with _LOCK:
        if 'result' not in _LOADED:
            try:
                lib = ctypes.CDLL(str(build()))
            except OSError as e:  # a library that does not load (e.g. libdnnl moved since the build)
                _LOADED['result'] = OnednnUnavailable(f'loading the oneDNN kernels failed: {e}')
            except OnednnUnavailable as e:
                _LOADED['result'] = e
            else:
                for name, symbol in TARGETS.values():
                    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform='cpu')
                _LOADED['result'] = None
        if _LOADED['result'] is not None:
            raise _LOADED['result']


def available() -> bool:
    try:
        load()
    except OnednnUnavailable:
        return False
    return True


def unavailable_reason() -> str | None:
    try:
        load()
    except OnednnUnavailable as e:
        return str(e)
    return None


def _attrs(strides, pads, dilation) -> dict:
    return dict(
        strides=np.asarray(strides, np.int64),
        pad_lo=np.asarray([p[0] for p in pads], np.int64),
        pad_hi=np.asarray([p[1] for p in pads], np.int64),
        dilation=np.asarray(dilation, np.int64),
    )


def output_shape(x_shape, w_shape, strides, pads, dilation) -> tuple[int, ...]:
    n, h, w, _ = x_shape
    spatial = [
        (size + lo + hi - ((k - 1) * d + 1)) // s + 1
        for size, k, s, (lo, hi), d in zip((h, w), w_shape[:2], strides, pads, dilation)
    ]
    return (n, *spatial, w_shape[3])


def _call(which, out_shape, *args, strides, pads, dilation):
    name = TARGETS[which][0]
    out = jax.ShapeDtypeStruct(out_shape, jnp.float32)
    return jax.ffi.ffi_call(name, out, vmap_method='sequential')(*args, **_attrs(strides, pads, dilation))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d(x, w, strides, pads, dilation):
    """Cross-correlation of an NHWC float32 ``x`` with an HWIO ``w``: ``lax.conv_general_dilated(x, w,
    strides, pads, rhs_dilation=dilation, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))`` computed by
    oneDNN. ``pads``: ((lo, hi), (lo, hi)), non-negative."""
    out = output_shape(x.shape, w.shape, strides, pads, dilation)
    return _call('fwd', out, x, w, strides=strides, pads=pads, dilation=dilation)


def _conv2d_fwd(x, w, strides, pads, dilation):
    return conv2d(x, w, strides, pads, dilation), (x, w)


def _conv2d_bwd(strides, pads, dilation, res, g):
    x, w = res
    kw = dict(strides=strides, pads=pads, dilation=dilation)
    dx = _call('bwd_data', x.shape, g, w, **kw)
    dw = _call('bwd_weights', w.shape, x, g, **kw)
    return dx, dw


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


_ENABLED = contextvars.ContextVar('research_onednn', default=False)

#: Values of ``train.cpu_conv``.
CHOICES = ('auto', 'onednn', 'xla')


def enabled() -> bool:
    """Whether :func:`research.kernels.cpu.conv_general_dilated` routes convolutions here now (in the
    program lowered for CPU)."""
    return _ENABLED.get()


def set_enabled(on: bool) -> None:
    """Route dense float32 2D convolutions of :func:`research.kernels.cpu.conv_general_dilated`
    through oneDNN in the current context (for scripts; programs traced afterwards). Turning it on
    builds and loads the kernels, raising OnednnUnavailable with the reason if that fails."""
    if on:
        load()
    _ENABLED.set(bool(on))


@contextlib.contextmanager
def use_onednn(on: bool = True):
    """:func:`set_enabled` for the duration of a block (programs traced inside it)."""
    if on:
        load()
    token = _ENABLED.set(bool(on))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def scoped(fn, on: bool):
    """``fn`` (a jitted function) called, and lowered (``.lower``), within ``use_onednn(on)``, so its
    trace, made on the first call, has the convolutions it was configured with whatever the caller's
    context. (jit's trace cache is keyed by the function, not by this setting: trace a function
    under one setting only.)"""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with use_onednn(on):
            return fn(*args, **kwargs)

    def lower(*args, **kwargs):
        with use_onednn(on):
            return fn.lower(*args, **kwargs)

    call.lower = lower
    return call


def resolve(choice: str, num_devices: int) -> str:
    """``train.cpu_conv`` resolved to what the convolutions run on: 'onednn' or 'xla'.

    'auto' (default): oneDNN when the backend is CPU, the mesh has one device and the ``onednn``
    extra is installed (and builds), else XLA. 'onednn': the same, but an error naming the reason
    where it cannot be used. 'xla': XLA's convolutions. Only CPU is affected."""
    if choice not in CHOICES:
        raise ValueError(f'unknown train.cpu_conv {choice!r}; expected one of {", ".join(CHOICES)}')
    if choice == 'xla' or jax.default_backend() != 'cpu':
        return 'xla'
    if num_devices > 1:
        if choice == 'onednn':
            raise ValueError(
                f"train.cpu_conv='onednn' runs each convolution on all cores of one device, but the mesh "
                f"has {num_devices} devices (--cpu_devices): use --cpu_devices=1, or train.cpu_conv='xla'"
            )
        return 'xla'
    if choice == 'auto':
        return 'onednn' if available() else 'xla'
    load()  # raises OnednnUnavailable with the reason
    return 'onednn'
