"""The benchmark scripts run end to end (tiny settings); their figures are in benchmarks/RESULTS.md."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from research.kernels import onednn

REPO = Path(__file__).resolve().parents[1]


def test_input_pipeline_benchmark_prints_rates_and_ratios(tmp_path):
    cmd = [
        sys.executable,
        str(REPO / 'benchmarks' / 'input_pipeline.py'),
        '--config=experiments/classification/lenet5_digits.py',
        f'--set=data.data_dir={tmp_path}',
        '--set=train.batch_size=64',
        '--steps=3',
        '--num_threads=0,1',
        '--no-hugepages',
        '--on_device',
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert re.search(r'host pipeline alone, data\.num_threads=1: [\d,]+ img/s', out), out
    assert re.search(r'host pipeline alone, data\.num_threads=0, data\.on_device: [\d,]+ img/s', out), out
    assert re.search(r"data\.on_device's augmentation in the step alone \(cpu\): [\d,]+ img/s", out), out
    rows = {
        m[0]: (float(m[1].replace(',', '')), float(m[2]))
        for m in re.findall(
            r'^(synthetic|pipeline, \d threads|on device, \d threads)\s+([\d,]+)\s+([\d.]+)', out, re.M
        )
    }
    assert set(rows) == {
        'synthetic',
        'pipeline, 0 threads',
        'pipeline, 1 threads',
        'on device, 0 threads',
        'on device, 1 threads',
    }, out
    assert rows['synthetic'][1] == 1.0 and all(rate > 0 and ratio > 0 for rate, ratio in rows.values())
    assert 'model lenet5_modern' in out and 'batch 64' in out


def test_layers_benchmark_times_batchnorm_in_train_mode():
    # The BatchNorm row applies the project's BatchNorm with batch statistics (mutable batch_stats).
    cmd = [
        sys.executable,
        str(REPO / 'benchmarks' / 'layers.py'),
        '--only=batchnorm',
        '--batch=4',
        '--size=8',
        '--channels=8',
        '--iters=1',
        '--warmup=1',
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = re.findall(r'^batchnorm \+ relu \(train\)\s+([\d.]+)\s+(\S+)\s+(\S+)$', r.stdout, re.M)
    assert len(rows) == 1 and float(rows[0][0]) > 0, r.stdout
    assert 'conv 3x3' not in r.stdout  # --only filters


def test_layers_benchmark_times_fcn32_upsampling_with_the_trainers_convolutions():
    cmd = [
        sys.executable,
        str(REPO / 'benchmarks' / 'layers.py'),
        '--only=s32',
        '--batch=8',
        '--size=8',
        '--channels=4',
        '--iters=1',
        '--warmup=1',
        '--cpu_conv=auto',
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = re.findall(r'^transposed 64x64 s32 \[(\w+)\]\s+([\d.]+)\s', r.stdout, re.M)
    assert [impl for impl, _ in rows] == ['subpixel', 'lhs_dilation'] and all(float(ms) > 0 for _, ms in rows)
    want = 'oneDNN' if onednn.resolve('auto', 1) == 'onednn' else 'XLA'
    assert f'JAX convolutions: {want}' in r.stdout, r.stdout


def test_input_pipeline_vs_torch_dataloader_prints_the_ratio(tmp_path):
    # --vs_torch: the 224-px recipe's host side (random-resized crop + flip + ImageNet normalisation)
    # against torch's DataLoader on the same JPEGs; tiny settings.
    cmd = [
        sys.executable,
        str(REPO / 'benchmarks' / 'input_pipeline.py'),
        '--vs_torch',
        '--workers=0',
        '--rounds=1',
        '--images=20',
        '--batch=4',
        '--batches=1',
        f'--jpeg_dir={tmp_path}',
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list((tmp_path / 'train').rglob('*.jpg'))) == 20
    rows = re.findall(r'^\s+0\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)', r.stdout, re.M)
    assert len(rows) == 1, r.stdout
    ours, theirs, _, _, ratio = (float(v.replace(',', '')) for v in rows[0])
    assert ours > 0 and theirs > 0 and abs(ratio - ours / theirs) < 0.02 * ratio + 0.01
    assert '20 JPEGs (500x375' in r.stdout


def test_batchnorm_rule_benchmark_times_both_rules():
    cmd = [sys.executable, str(REPO / 'benchmarks' / 'batchnorm_rule.py'), '--batch=4', '--iters=2']
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = re.findall(
        r'^4x\d+x\d+x\d+: torch rule min ([\d.]+) / median [\d.]+ ms, flax rule min ([\d.]+)', r.stdout, re.M
    )
    assert len(rows) == 3 and all(float(a) > 0 and float(b) > 0 for a, b in rows), r.stdout
