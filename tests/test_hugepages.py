"""Huge pages for malloc (research/hugepages.py): when the restart applies, and that it removes the
per-step page faults of XLA:CPU's temporary buffers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from research import hugepages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# faults per call of a jitted function with two 64 MB temporaries (XLA maps them afresh per call)
_FAULTS = """
import resource, jax, jax.numpy as jnp
from jax import lax
from research import hugepages
hugepages.reexec_with_hugepages()
f = jax.jit(lambda x: lax.optimization_barrier(lax.optimization_barrier(x * 2.0) + 1.0).sum())
x = jnp.ones((16 * 1024 * 1024,))
f(x).block_until_ready()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 5
print(__import__('json').dumps([__import__('os').environ.get('GLIBC_TUNABLES', ''), faults]))
"""


def test_wanted_respects_opt_out_and_existing_tunable(monkeypatch):
    monkeypatch.setenv('RESEARCH_HUGEPAGES', '0')
    assert not hugepages.wanted()
    monkeypatch.delenv('RESEARCH_HUGEPAGES')
    monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.hugetlb=1')
    assert not hugepages.wanted()  # already restarted (or set by the user): no second restart
    monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.arena_max=2')
    assert hugepages.environment()['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'


def _faults(env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', 'RESEARCH_HUGEPAGES')}
    r = subprocess.run(
        [sys.executable, '-c', _FAULTS], capture_output=True, text=True, env={**env, **env_extra}, cwd=REPO
    )
    assert r.returncode == 0, r.stderr[-2000:]
    tunables, faults = json.loads(r.stdout.strip().splitlines()[-1])
    return tunables, faults


def test_restart_sets_tunable_and_removes_page_faults():
    if not hugepages.wanted():
        pytest.skip('transparent huge pages not in madvise mode / glibc < 2.35 here: nothing to restart for')
    off_tunables, off = _faults({'RESEARCH_HUGEPAGES': '0'})
    on_tunables, on = _faults({})
    assert 'hugetlb' not in off_tunables and on_tunables == 'glibc.malloc.hugetlb=1'
    assert off > 10_000  # ~2 x 64 MB of fresh 4 KB pages per call
    assert on < off / 10, (on, off)
