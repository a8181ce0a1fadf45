"""Model summary: exact params / MACs / receptive fields of LeNet-5 and the CIFAR ResNets (shape-only
tracing, no FLOPs), DAG rules, and ``launch.py --summary``."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import flax.linen as nn
import pytest

from research.experiments import summary as summary_cmd
from research.config import base_config, with_model
from research.layers import blocks
from research.layers.summary import format_count, summarize
from research.models import create

REPO = Path(__file__).resolve().parents[1]

# He et al. 2015, Table 6 params; MACs per 32x32 image as commonly quoted (rounded to 0.1M).
RESNETS = {
    20: (269_722, '40.6M'),
    32: (464_154, '68.9M'),
    44: (658_586, '97.2M'),
    56: (853_018, '125.5M'),
    110: (1_727_962, '252.9M'),
}


def _rf(summary, path):
    (row,) = [row for row in summary.layers if row.path == path]
    return row


def resnet_cifar_macs(n: int) -> int:
    """Hand count for depth 6n + 2: 3x3 convs only (option A shortcuts are free) + the dense head."""
    stem = 32 * 32 * 16 * 9 * 3
    stage1 = 2 * n * (32 * 32 * 16 * 9 * 16)
    stage2 = 16 * 16 * 32 * 9 * 16 + (2 * n - 1) * (16 * 16 * 32 * 9 * 32)
    stage3 = 8 * 8 * 64 * 9 * 32 + (2 * n - 1) * (8 * 8 * 64 * 9 * 64)
    return stem + stage1 + stage2 + stage3 + 64 * 10


# --------------------------------------------------------------------------- LeNet-5


def test_lenet5_faithful():
    s = summarize(create('lenet5'), (1, 32, 32, 1))
    assert s.params == 60_000
    assert s.collections == {'params': 60_000, 'constants': 840}  # fixed RBF centres
    rows = {row.path: row for row in s.layers}
    assert list(rows) == ['C1', 'S2', 'C3', 'S4', 'C5', 'F6', 'output']
    assert {k: r.params for k, r in rows.items()} == {
        'C1': 156,
        'S2': 12,
        'C3': 1_516,
        'S4': 32,
        'C5': 48_120,
        'F6': 10_164,
        'output': 0,
    }
    # MACs (conv + linear only): C3 counts its 60 connected 5x5 kernels; S2/S4 (2x2 sum times one
    # coefficient per map: a pool plus a per-map affine) and the RBF distances count 0.
    macs = {
        'C1': 28 * 28 * 6 * 5 * 5 * 1,
        'S2': 0,
        'C3': 60 * 25 * 10 * 10,
        'S4': 0,
        'C5': 1 * 1 * 120 * 5 * 5 * 16,
        'F6': 120 * 84,
        'output': 0,
    }
    assert macs['C3'] == 150_000
    assert {k: r.macs for k, r in rows.items()} == macs
    assert s.macs == sum(macs.values()) == 325_680
    # Receptive fields: 5, 6, 14, 16, then C5 sees the whole 32x32 input.
    assert [rows[k].rf[0] for k in ('C1', 'S2', 'C3', 'S4', 'C5')] == [5, 6, 14, 16, 32]
    assert [rows[k].jump[0] for k in ('C1', 'S2', 'C3', 'S4', 'C5')] == [1, 2, 2, 4, 4]
    assert s.receptive_field == (32, 32) and s.receptive_field_layer == 'C5'
    assert not rows['F6'].spatial and rows['F6'].rf == (32, 32)
    assert s.approximations == ()


def test_lenet5_modern_pool_rows():
    s = summarize(create('lenet5_modern'), (1, 28, 28, 1))  # padded to 32x32 inside the model
    assert [(r.path, r.op) for r in s.layers if r.kind == 'pool'] == [
        ('max_pool_0', 'MaxPool 2x2/2'),
        ('max_pool_1', 'MaxPool 2x2/2'),
    ]
    assert [r.rf[0] for r in s.layers if r.spatial] == [5, 6, 14, 16]
    assert s.params == 61_706 and s.macs == 117_600 + 240_000 + 48_000 + 10_080 + 840


# --------------------------------------------------------------------------- CIFAR ResNets


@pytest.mark.parametrize('depth', sorted(RESNETS))
def test_resnet_cifar_params_and_macs(depth):
    s = summarize(create(f'resnet{depth}'), (1, 32, 32, 3))
    params, macs = RESNETS[depth]
    assert s.params == params
    assert s.macs == resnet_cifar_macs((depth - 2) // 6)
    assert f'{s.macs / 1e6:.1f}M' == format_count(s.macs) == macs
    assert s.unlisted_params == 0  # every parameter sits in a conv / BN / dense row
    assert s.collections['batch_stats'] > 0


def test_resnet20_exact_macs_and_receptive_field():
    s = summarize(create('resnet20'), (1, 32, 32, 3))
    assert s.macs == 40_551_040 == resnet_cifar_macs(3)
    assert 443_008 + 14_155_776 * 3 - 2_359_296 == s.macs  # stem + head + 6n convs, 2 of them strided
    # Chain of 19 3x3 convs: stem 3; stage 1 (6 convs, j=1) 15; stride-2 conv 17 (j=2), 5 more +4
    # each: 37; stride-2 conv 41 (j=4), 5 more +8 each: 81 (more than the 32x32 input).
    assert s.receptive_field == (81, 81) and s.jump == (4, 4)
    assert s.receptive_field_layer == 'stage3_block3/conv2'
    assert _rf(s, 'stage1_block3/conv2').rf[0] == 15
    assert _rf(s, 'stage2_block1/conv1').rf[0] == 17
    assert _rf(s, 'stage2_block3/conv2').rf[0] == 37
    assert _rf(s, 'stage3_block1/conv1').rf[0] == 41
    # Global average pool over the 8x8 map (jump 4): 81 + 7 * 4.
    assert s.output_receptive_field == (109, 109)
    text = str(s)
    assert '269,722' in text and '40,551,040 (40.6M' in text and 'batch_stats 1,376' in text
    md = s.to_markdown()
    assert md.count('\n| ') == len(s.layers) + 1 and '| stage3_block3/conv2 | Conv 3x3 |' in md


def test_resnet_train_mode_traces():
    s = summarize(create('resnet20'), (2, 32, 32, 3), train=True)  # BN batch stats; MACs per example
    assert s.macs == 40_551_040 and s.params == 269_722


# --------------------------------------------------------------------------- receptive-field rules


class DilatedChain(nn.Module):
    """Yu & Koltun 2016, context module (basic): 3x3 convs with dilations 1, 1, 2, 4, 8, 16, 1."""

    @nn.compact
    def __call__(self, x):
        for i, d in enumerate((1, 1, 2, 4, 8, 16, 1)):
            x = nn.relu(nn.Conv(4, (3, 3), kernel_dilation=d, padding=d, name=f'conv{i}')(x))
        return x


def test_dilated_chain_rf():
    s = summarize(DilatedChain(), (1, 80, 80, 2))
    assert [r.rf[0] for r in s.layers] == [3, 5, 9, 17, 33, 65, 67]
    assert s.receptive_field == (67, 67) and s.receptive_field_layer == 'output'
    assert 'd16' in s.layers[5].op


def test_dag_rf_is_max_over_paths():
    # Inception: branches 1x1 (1), 3x3 (3), 5x5 (5), pool 3x3 -> 1x1 (3); the concat takes the max.
    s = summarize(blocks.InceptionModule(8, 4, 8, 4, 8, 8), (1, 12, 12, 8))
    assert [(r.path, r.rf[0]) for r in s.layers if r.kind != 'norm'] == [
        ('b1_conv', 1),
        ('b2_reduce_conv', 1),
        ('b2_conv', 3),
        ('b3_reduce_conv', 1),
        ('b3_conv', 5),
        ('max_pool_0', 3),
        ('b4_conv', 3),
    ]
    assert s.receptive_field == (5, 5)
    # Residual block: the conv path (3x3/2 then 3x3: 3 + 2*2 = 7) beats the 1x1 projection (1).
    s = summarize(blocks.BasicBlock(8, strides=2), (1, 8, 8, 4))
    assert _rf(s, 'proj_conv').rf == (1, 1) and s.receptive_field == (7, 7) and s.jump == (2, 2)
    # SE's squeeze sees the whole map, so the gated output does too (theoretical RF).
    s = summarize(blocks.BasicBlock(8, se_reduction=4), (1, 8, 8, 8))
    assert _rf(s, 'se/fc1').rf == (5 + 7, 5 + 7) and s.receptive_field == (12, 12)


def test_macs_conventions():
    # Depthwise / grouped: out_H out_W out_C kH kW in_C / groups.
    s = summarize(blocks.InvertedResidual(16, strides=2), (1, 8, 8, 16))
    assert _rf(s, 'dw_conv').macs == 4 * 4 * 96 * 9 * 1
    assert s.macs == 8 * 8 * 96 * 16 + 4 * 4 * 96 * 9 + 4 * 4 * 16 * 96
    # Transposed conv, fvcore's convention (input side): in_H in_W in_C kH kW out_C.
    s = summarize(nn.ConvTranspose(8, (4, 4), strides=(2, 2)), (1, 8, 8, 4))
    assert s.macs == 8 * 8 * 4 * 16 * 8 and s.layers[0].output_shape == (1, 16, 16, 8)
    assert s.receptive_field == (2, 2) and s.jump == (Fraction(1, 2),) * 2
    # Dense on a map: per position in * out; per example whatever the batch.
    s = summarize(nn.Dense(5), (4, 3, 3, 7))
    assert s.macs == 9 * 7 * 5


def test_shared_module_counted_once():
    class Twice(nn.Module):
        @nn.compact
        def __call__(self, x):
            c = nn.Conv(3, (3, 3), padding=1, name='shared')
            return c(c(x))

    s = summarize(Twice(), (1, 6, 6, 3))
    assert [(r.path, r.params, r.shared, r.rf[0]) for r in s.layers] == [
        ('shared', 84, False, 3),
        ('shared', 0, True, 5),
    ]
    assert s.params == 84 and s.macs == 2 * 36 * 3 * 27


# --------------------------------------------------------------------------- launch.py --summary


def test_summary_input_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
    c = base_config()
    with_model(c, 'resnet_cifar', depth=20)
    c.data.name = 'cifar10'  # TFDS metadata only: no download, nothing written
    shape, classes, source = summary_cmd.summary_input(c)
    assert (shape, classes) == ((32, 32, 3), 10) and 'nothing built or downloaded' in source
    assert not any(tmp_path.iterdir())
    c.data.image_size = 24
    assert summary_cmd.summary_input(c)[0] == (24, 24, 3)
    assert summary_cmd.summary_input(c, '64,64,3')[0] == (64, 64, 3)
    c.data.name = 'no_such_dataset'
    shape, classes, source = summary_cmd.summary_input(c)
    assert (shape, classes) == ((32, 32, 3), 10) and '--summary_input' in source
    with pytest.raises(ValueError, match='H,W,C'):
        summary_cmd.summary_input(c, '32,x')


def test_launch_summary(tmp_path):
    env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / 'tfds'))
    workdir = tmp_path / 'run'
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / 'launch.py'),
            '--config=experiments/classification/lenet5_digits.py:variant=faithful',
            f'--workdir={workdir}',
            '--summary',
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "lenet5: input 32x32x1 from the metadata of dataset 'digits'" in r.stdout
    assert not (tmp_path / 'tfds').exists()  # nothing was built
    assert 'Total params: 60,000' in r.stdout and 'constants 840' in r.stdout
    assert 'MACs per example: 325,680' in r.stdout and 'Receptive field: 32 px at C5' in r.stdout
    assert not workdir.exists(), 'a summary must not start a run'
