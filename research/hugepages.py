"""Transparent huge pages for glibc's malloc, set by restarting the process (issue 8).

XLA:CPU allocates each execution's temporary buffers afresh: ResNet-20's training step at batch
128 maps one 284 MB block per step, and touching it costs ~72,800 page faults and zero-fills
(every step; seen with ``strace`` and ``getrusage``), a third of the step on 2 cores. Where the
kernel's transparent huge pages are in ``madvise`` mode (Debian/Ubuntu's default) glibc (>= 2.35)
asks for them when ``GLIBC_TUNABLES`` holds ``glibc.malloc.hugetlb=1``: ~300 faults per step,
and the step runs 1.3x faster (benchmarks/RESULTS.md). The tunable is read only at process start,
so :func:`reexec_with_hugepages` restarts the interpreter with it, once, before anything else
runs. ``launch.py`` and ``benchmarks/train_step.py`` call it; ``RESEARCH_HUGEPAGES=0`` opts out.
Nothing to do (no restart) on other systems, where THP is ``always`` or ``never``, or where the
tunable is already set.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'


def _thp_mode() -> str | None:
    try:
        text = open(THP_MODE).read()
    except OSError:
        return None
    return text[text.find('[') + 1 : text.find(']')] if '[' in text else None


def wanted() -> bool:
    """Whether a restart would turn huge pages on here (and has not been done)."""
    if os.environ.get('RESEARCH_HUGEPAGES', '1') == '0' or sys.platform != 'linux':
        return False
    if 'glibc.malloc.hugetlb' in os.environ.get('GLIBC_TUNABLES', ''):
        return False
    libc, version = platform.libc_ver()
    try:
        new_enough = libc == 'glibc' and tuple(int(v) for v in version.split('.')[:2]) >= (2, 35)
    except ValueError:
        new_enough = False
    return new_enough and _thp_mode() == 'madvise'


def environment() -> dict[str, str]:
    """``os.environ`` with the tunable added to ``GLIBC_TUNABLES``."""
    current = os.environ.get('GLIBC_TUNABLES', '')
    return dict(os.environ, GLIBC_TUNABLES=f'{current}:{TUNABLE}' if current else TUNABLE)


def reexec_with_hugepages() -> None:
    """Restart this Python process with the same arguments and huge pages for malloc, if
    :func:`wanted`. Call it first thing in an entry point (before JAX starts, threads, files)."""
    if wanted():
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment())
