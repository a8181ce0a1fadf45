"""XLA flags the project sets for itself, before a JAX backend starts (imported by ``research``).

``--xla_disable_hlo_passes=cse_barrier_expander`` on CPU-only installs: keeps the
``optimization_barrier`` ops of :func:`research.kernels.cpu.materialize` (the residual stream of
every residual block) through XLA's fusion passes. XLA:CPU otherwise expands them away early and
then fuses each block's ``act(y + x)`` chain into every consumer, recomputing all earlier blocks of
a stage once per weight-gradient convolution: quadratic in depth, ResNet-56 training ran at half
the speed of plain-56 (benchmarks/RESULTS.md, "Residual stream"). Not set where a GPU/TPU plugin is
installed (those backends materialize the stream anyway), unless ``JAX_PLATFORMS=cpu`` forces the CPU.
Opt out with ``RESEARCH_XLA_FLAGS=0``.
"""

from __future__ import annotations

import importlib.util
import logging
import os

PASS = 'cse_barrier_expander'
_ACCELERATOR_PLUGINS = (
    'jax_cuda12_plugin',
    'jax_cuda13_plugin',
    'jax_rocm60_plugin',
    'jax_rocm7_plugin',
    'libtpu',
)


def _accelerator_installed() -> bool:
    return any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_PLUGINS)


def with_disabled_pass(flags: str, name: str = PASS) -> str:
    """``flags`` (an XLA_FLAGS string) with pass ``name`` added to ``--xla_disable_hlo_passes``."""
    parts = flags.split()
    for i, p in enumerate(parts):
        if p.startswith('--xla_disable_hlo_passes='):
            passes = [q for q in p.split('=', 1)[1].split(',') if q]
            if name not in passes:
                parts[i] = '--xla_disable_hlo_passes=' + ','.join(passes + [name])
            return ' '.join(parts)
    return ' '.join(parts + [f'--xla_disable_hlo_passes={name}'])


def backend_started() -> bool:
    """Whether a JAX backend has started (after which XLA flags and ``jax_num_cpu_devices`` no longer
    apply); the one place that asks JAX's private ``xla_bridge``."""
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # private API moved: assume not started
        return False


def _cpu_forced() -> bool:
    """``JAX_PLATFORMS`` names the CPU only: the process runs on the CPU whatever plugin is installed."""
    platforms = [p.strip() for p in os.environ.get('JAX_PLATFORMS', '').split(',') if p.strip()]
    return platforms == ['cpu']


def apply() -> bool:
    """Adds the project's flags to ``XLA_FLAGS``; returns whether they are in effect for this process."""
    if os.environ.get('RESEARCH_XLA_FLAGS', '1') == '0' or (_accelerator_installed() and not _cpu_forced()):
        return False
    flags = os.environ.get('XLA_FLAGS', '')
    new = with_disabled_pass(flags)
    if new == flags:
        return True
    if backend_started():
        logging.getLogger(__name__).warning(
            'a JAX backend started before `import research`: XLA flag --xla_disable_hlo_passes=%s not '
            'applied, deep residual nets train slower on CPU (import research first)',
            PASS,
        )
        return False
    os.environ['XLA_FLAGS'] = new
    return True
