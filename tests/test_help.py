"""``launch.py --help`` lists the project's own flags (absl key flags) and not absl's, grain's, TFDS's or
orbax's, which ``--helpfull`` keeps."""

import re
import subprocess
import sys
from pathlib import Path

from research import cli

ROOT = Path(__file__).resolve().parents[1]


def _help(flag: str) -> str:
    env = {'RESEARCH_HUGEPAGES': '0', 'PATH': '/usr/bin:/bin', 'PYTHONPATH': str(ROOT)}
    r = subprocess.run(
        [sys.executable, 'launch.py', flag], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
    )
    return r.stdout + r.stderr


def test_help_lists_the_project_flags_only():
    out = _help('--help')
    listed = re.findall(r'^  --(?:\[no\])?([a-z_]+):', out, re.M)
    assert sorted(listed) == sorted(cli.KEY_FLAGS)
    assert 'python launch.py --config=experiments/classification/lenet5_digits.py' in out
    assert '--helpfull' in out
    full = _help('--helpfull')
    for name in ('sweep', 'cpu_devices', 'grain_num_threads_fetching_records', 'logtostderr'):
        assert re.search(rf'^  --(\[no\])?{name}:', full, re.M), name
    assert len(full.splitlines()) > 3 * len(out.splitlines())
