"""Accelerator installs on a CPU-only machine: the extras, the run header's hint, train.deterministic.

The hardware probes are faked (``visible_accelerators``' keyword arguments), so every case runs here.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from research.train import distributed

REPO = Path(__file__).resolve().parents[1]

NVIDIA_SMI = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 570.86.15              Driver Version: 570.86.15      CUDA Version: 12.8     |
|-----------------------------------------+------------------------+----------------------+
"""


def _probes(*, smi=None, names=(), dev=(), chips=0):
    """Keyword arguments for visible_accelerators: what nvidia-smi prints, which /dev paths exist."""

    def run(cmd):
        if '--query-gpu=name' in cmd:
            return '\n'.join(names) + '\n'
        return smi or ''

    return dict(
        which=lambda name: f'/usr/bin/{name}' if name == 'nvidia-smi' and smi else None,
        paths=lambda pattern: [p for p in dev if Path(p).match(pattern.replace('[0-9]*', '[0-9]*'))],
        run=run,
        tpu_chips=lambda: chips,
    )


def test_visible_accelerators_reads_each_probe():
    h100 = _probes(smi=NVIDIA_SMI, names=['NVIDIA H100 80GB HBM3'] * 8)
    assert distributed.visible_accelerators(**h100) == {
        'cuda': 'nvidia-smi: 8 x NVIDIA H100 80GB HBM3, driver CUDA 12.8'
    }
    # a container with the device nodes but no nvidia-smi
    assert distributed.visible_accelerators(**_probes(dev=['/dev/nvidia0', '/dev/nvidiactl'])) == {
        'cuda': '1 /dev/nvidia* device(s)'
    }
    assert distributed.visible_accelerators(**_probes(chips=4)) == {'tpu': '4 TPU chip(s) on the PCI bus'}
    assert distributed.visible_accelerators(**_probes(dev=['/dev/accel0', '/dev/accel1'])) == {
        'tpu': '2 /dev/accel* device(s)'
    }
    assert distributed.visible_accelerators(**_probes(dev=['/dev/kfd'])) == {
        'rocm': '/dev/kfd (AMD GPU driver)'
    }
    assert distributed.visible_accelerators(**_probes(dev=['/dev/null', '/dev/vfio/vfio'])) == {}


def test_accelerator_hint_names_the_install_command(monkeypatch):
    monkeypatch.delenv('JAX_PLATFORMS', raising=False)
    real = importlib.util.find_spec
    plugins = {'jax_cuda12_plugin', 'jax_cuda13_plugin', 'libtpu', 'jax_rocm7_plugin'}
    monkeypatch.setattr(importlib.util, 'find_spec', lambda n, *a: None if n in plugins else real(n, *a))
    h100 = distributed.visible_accelerators(**_probes(smi=NVIDIA_SMI, names=['NVIDIA H100 80GB HBM3']))
    hint = distributed.accelerator_hint({'cpu'}, visible=h100)
    assert hint == (
        'warning: nvidia-smi: 1 x NVIDIA H100 80GB HBM3, driver CUDA 12.8 but JAX has only CPU devices '
        "(CPU-only jaxlib): install the GPU build with pip install -U 'jax[cuda12]' "
        "(or pip install -e '.[cuda12]' in this checkout)"
    )
    cuda13 = {'cuda': 'nvidia-smi: 1 x NVIDIA B200, driver CUDA 13.0'}
    assert "pip install -U 'jax[cuda13]'" in distributed.accelerator_hint({'cpu'}, visible=cuda13)
    tpu = distributed.accelerator_hint({'cpu'}, visible={'tpu': '4 TPU chip(s) on the PCI bus'})
    assert '4 TPU chip(s)' in tpu and "install the TPU build with pip install -U 'jax[tpu]'" in tpu
    assert 'jax[rocm7-local]' in distributed.accelerator_hint({'cpu'}, visible={'rocm': '/dev/kfd'})
    assert '\n' not in hint and '\n' not in tpu  # one line each
    # nothing to say: JAX uses the accelerator, none is visible, or the user asked for the CPU
    assert distributed.accelerator_hint({'gpu'}, visible=h100) is None
    assert distributed.accelerator_hint({'cpu'}, visible={}) is None
    assert distributed.accelerator_hint({'cpu'}, visible=h100, env={'JAX_PLATFORMS': 'cpu'}) is None
    # the plugin is installed but found no device: say so instead of "install"
    monkeypatch.setattr(
        importlib.util, 'find_spec', lambda n, *a: object() if n == 'jax_cuda12_plugin' else None
    )
    broken = distributed.accelerator_hint({'cpu'}, visible=h100)
    assert 'jax_cuda12_plugin is installed' in broken and "jax.devices('gpu')" in broken


def test_accelerator_hint_is_silent_on_this_cpu_machine():
    """The real probes here: no GPU or TPU is visible, so no warning (a false alarm would be a defect)."""
    found = distributed.visible_accelerators()
    if found:
        pytest.skip(f'this machine shows accelerator hardware: {found}')
    assert distributed.accelerator_hint({'cpu'}) is None


def test_accelerator_extras_map_to_jax_extras():
    """pyproject's cuda12 / cuda13 / tpu extras are JAX's own extras, within the project's jax range, and
    JAX provides each of them."""
    project = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']
    jax_req = next(d for d in project['dependencies'] if d.startswith('jax>='))
    extras = project['optional-dependencies']
    provided = set(importlib.metadata.metadata('jax').get_all('Provides-Extra'))
    for name in ('cuda12', 'cuda13', 'tpu'):
        assert extras[name] == [f'jax[{name}]{jax_req[3:]}'], extras[name]
        assert name in provided


def test_set_deterministic_adds_the_flag_before_the_backend(monkeypatch):
    monkeypatch.setattr(distributed, 'backend_started', lambda: False)
    monkeypatch.setenv(
        'XLA_FLAGS', '--xla_force_host_platform_device_count=2 --xla_gpu_deterministic_ops=false'
    )
    assert distributed.set_deterministic(False) is False
    assert os.environ['XLA_FLAGS'].endswith('=false')  # off: the user's flags are left alone
    assert distributed.set_deterministic(True) is True
    assert (
        os.environ['XLA_FLAGS'] == '--xla_force_host_platform_device_count=2 --xla_gpu_deterministic_ops=true'
    )
    assert distributed.set_deterministic(True) is True  # idempotent
    assert os.environ['XLA_FLAGS'].count('deterministic') == 1
    monkeypatch.delenv('XLA_FLAGS')
    monkeypatch.setattr(distributed, 'backend_started', lambda: True)
    with pytest.raises(RuntimeError, match='train.deterministic=True: a JAX backend already started'):
        distributed.set_deterministic(True)
    monkeypatch.setenv('XLA_FLAGS', '--xla_gpu_deterministic_ops')  # already set by the user: fine
    assert distributed.set_deterministic(True) is True


def test_deterministic_flag_is_accepted_by_xla():
    """XLA parses the flag at backend start (an unknown flag aborts the process): a CPU step runs."""
    code = (
        'from research.train import distributed; import os; assert distributed.set_deterministic(True); '
        "import jax.numpy as jnp; print(float(jnp.arange(4.0).sum()), os.environ['XLA_FLAGS'])"
    )
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
    r = subprocess.run(
        [sys.executable, '-c', code],
        cwd=REPO,
        env=dict(env, JAX_PLATFORMS='cpu'),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[0] == '6.0' and distributed.DETERMINISTIC_FLAG in r.stdout.split()[1:]


def test_deterministic_is_a_train_config_key():
    from research.config import base_config

    assert base_config().train.deterministic is False


# -- benchmarks/accelerator_check.py --------------------------------------------------------------
def _tiny_cifar(root: Path) -> Path:
    """A CIFAR-10-shaped <split>/<class>/<image> folder: 10 classes, 8 train and 2 test 32x32 PNGs each."""
    import numpy as np
    from PIL import Image

    r = np.random.default_rng(0)
    for split, n in (('train', 8), ('test', 2)):
        for c in range(10):
            d = root / split / f'class{c}'
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(r.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f'{i}.png')
    return root


def test_accelerator_check_smoke_prints_ratios_and_appends_a_block(tmp_path):
    """The whole script on CPU with tiny sizes: the three checks print their figures and ratios, and one dated
    block is appended to the results file (its earlier content kept)."""
    import re

    data = _tiny_cifar(tmp_path / 'cifar')
    results = tmp_path / 'RESULTS.md'
    results.write_text('# earlier figures\n')
    cmd = [
        sys.executable,
        str(REPO / 'benchmarks' / 'accelerator_check.py'),
        '--smoke',
        f'--cifar10={data}',
        '--model=lenet5_modern',
        '--no-torch_compile',
        f'--results={results}',
    ]
    env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / 'tfds'))
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    text = results.read_text()
    assert text.startswith('# earlier figures\n') and text.count('### Accelerator check, ') == 1
    assert re.search(
        r'### Accelerator check, \d{4}-\d\d-\d\d \d\d:\d\d UTC: 1 x cpu \(cpu\) \[smoke\]', text
    ), text
    rows = {
        m[0]: m[1:] for m in re.findall(r'^\| ([^|]+?) \| ([^|]+?) \| ([^|]*?) \| ([^|]*?) \|', text, re.M)
    }
    step = rows['lenet5_modern bf16 training step, batch 8']
    assert re.fullmatch(r'[\d,.]+ img/s', step[0]) and 'torch AMP bf16 + channels_last on cpu' in step[1]
    assert re.fullmatch(r'\d+\.\d\dx', step[2]), step
    pipe = rows['input pipeline (ResNet-20 bf16, 32 px, batch 16, 0 threads)']
    assert re.fullmatch(r'[\d,.]+ img/s', pipe[0]) and re.fullmatch(r'\d+\.\d\d', pipe[2]), pipe
    air = rows['airbench94 speed run, CIFAR-10, bf16 (smoke settings)']
    assert re.match(r'\d+\.\d\d s \(\d+\.\d\d% TTA top-1', air[0]) and re.fullmatch(r'\d+\.\d\dx', air[2]), (
        air
    )
    assert 'failed' not in text and r.stdout.count('### Accelerator check') == 1


def test_accelerator_check_records_failures_and_missing_data(tmp_path):
    """No --cifar10: the data checks say so; a failing check is recorded with its cause, not raised."""
    sys.path.insert(0, str(REPO / 'benchmarks'))
    import accelerator_check as ac

    class A:
        smoke, model, batch, torch_compile = False, 'resnet50', 256, True
        pipeline_desc = 'ResNet-50 bf16, 224 px, batch 256, 16 threads'

    dev = {
        'platform': 'tpu',
        'kind': 'TPU v5 lite',
        'count': 8,
        'jax': '0.10.2',
        'torch': '2.9',
        'torch_cuda': '',
    }
    block = ac.format_block(
        {
            'train_step': {'jax_img_s': 4100.0, 'torch_note': "no CUDA device for PyTorch beside JAX's tpu"},
            'pipeline': 'skipped: no --cifar10 data given',
            'airbench': 'failed: launch.py exit 1: OOM',
        },
        dev,
        'python benchmarks/accelerator_check.py',
        A(),
    )
    assert ': 8 x TPU v5 lite (tpu)' in block.splitlines()[0]
    assert (
        '| resnet50 bf16 training step, batch 256 | 4,100 img/s '
        "| no CUDA device for PyTorch beside JAX's tpu | - |" in block
    )
    assert '| skipped: no --cifar10 data given |' in block and '| failed: launch.py exit 1: OOM |' in block
