"""Checkpoint integrity: checksums per step, verification before any restore, fallback, NaN stops."""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.config import ConfigError
from research.train import checkpoint_tool
from research.train.checkpoint import (
    CHECKSUMS,
    UNHASHED,
    Checkpointer,
    CheckpointError,
    CorruptCheckpointError,
    abstract_like,
    file_digests,
    verify_dir,
)


def _state(seed: int, scale: float = 1.0, n: int = 65536):
    """A train-state-like tree; `w` is 256 KiB so that a 4 KiB overwrite lands inside array bytes."""
    k = jax.random.key(seed)
    return {
        'step': jnp.int32(seed),
        'params': {'w': scale * jax.random.normal(k, (n,), jnp.float32), 'b': jnp.full((10,), 0.1 * seed)},
        'batch_stats': {'mean': jnp.zeros((10,))},
        'opt_state': {'mu': jnp.full((n,), 0.01), 'nu': jnp.full((n,), 1e-4)},
        'rng': jax.random.key_data(k),
    }


def _save(ckpt: Checkpointer, steps, make=_state):
    for s in steps:
        ckpt.save(s, make(s), {'position': s}, {'step': s})
    ckpt.wait()


def _largest_file(step_dir):
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
    return max(files, key=os.path.getsize)


def _tree_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb)
    )


@pytest.mark.parametrize('async_save', [False, True])
def test_every_file_of_a_step_is_checksummed_sync_and_async(tmp_path, async_save):
    ckpt = Checkpointer(tmp_path, keep=3, async_save=async_save)
    _save(ckpt, [1, 2])
    for step in (1, 2):
        d = tmp_path / 'checkpoints' / str(step)
        record = json.loads((d / CHECKSUMS).read_text())['files']
        on_disk = {os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs} - set(
            UNHASHED
        )
        assert set(record) == on_disk and len(on_disk) >= 8
        assert record == file_digests(d)
        assert verify_dir(d) is None
        # the record is written once per step (orbax's item directories get none of their own)
        assert [f for r, _, fs in os.walk(d) for f in fs].count(CHECKSUMS) == 1
    ckpt.close()


@pytest.mark.parametrize('damage', ['ff_4k', 'zero_bytes', 'truncated', 'missing'])
def test_corrupt_newest_falls_back_to_previous_bitwise(tmp_path, damage, capsys):
    ckpt = Checkpointer(tmp_path, keep=3, async_save=False)
    _save(ckpt, [10, 20])
    target = _largest_file(tmp_path / 'checkpoints' / '20')
    size = os.path.getsize(target)
    assert size > 16384
    if damage == 'ff_4k':
        with open(target, 'r+b') as f:
            f.seek(size // 2)
            f.write(b'\xff' * 4096)
        assert os.path.getsize(target) == size
    elif damage == 'zero_bytes':
        open(target, 'wb').close()
    elif damage == 'truncated':
        os.truncate(target, size // 3)
    else:
        os.remove(target)
    expected = {'ff_4k': 'sha256', 'zero_bytes': '0 bytes', 'truncated': 'truncated', 'missing': 'missing'}
    reason = ckpt.verify(20)
    assert expected[damage] in reason and os.path.basename(target) in reason

    abstract = abstract_like(_state(0))
    with pytest.raises(CorruptCheckpointError, match='step 20') as e:  # restore refuses before orbax reads
        ckpt.restore(20, abstract)
    assert '\n' not in str(e.value) and 'tensorstore' not in str(e.value).lower()

    warnings = []
    restored = Checkpointer(tmp_path, keep=3).restore_latest(abstract, warn=warnings.append)
    assert restored.step == 10 and [s for s, _ in restored.skipped] == [20]
    assert _tree_equal(restored.state, _state(10)) and restored.data == {'position': 10}
    assert len(warnings) == 1 and '\n' not in warnings[0]
    assert 'step 20 failed verification' in warnings[0] and 'trying step 10' in warnings[0]
    moved = list((tmp_path / 'checkpoints' / 'corrupt').iterdir())
    assert len(moved) == 1 and moved[0].name.startswith('20-') and moved[0].name in warnings[0]
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['10', 'corrupt']  # moved aside, not deleted
    assert os.path.exists(moved[0] / os.path.relpath(target, tmp_path / 'checkpoints' / '20')) == (
        damage != 'missing'
    )


def test_orbax_error_on_verified_bytes_is_one_line(tmp_path):
    """A file damaged *before* its record was written (the record vouches for it): orbax/TensorStore
    fail, and the error is one line without the TensorStore spec."""
    ckpt = Checkpointer(tmp_path, keep=3, async_save=False)
    _save(ckpt, [5])
    d = tmp_path / 'checkpoints' / '5'
    os.truncate(_largest_file(d), 100)
    (d / CHECKSUMS).unlink()
    Checkpointer(tmp_path).trust()
    with pytest.raises(CheckpointError) as e:
        ckpt.restore(5, abstract_like(_state(0)))
    msg = str(e.value)
    assert '\n' not in msg and len(msg) < 600 and '"driver"' not in msg, msg


def test_no_checkpoint_verifies(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=3, async_save=False)
    _save(ckpt, [1, 2])
    for s in (1, 2):
        open(_largest_file(tmp_path / 'checkpoints' / str(s)), 'wb').close()
    warnings = []
    with pytest.raises(CheckpointError, match='no checkpoint in .* verifies') as e:
        Checkpointer(tmp_path).restore_latest(abstract_like(_state(0)), warn=warnings.append)
    assert '\n' not in str(e.value) and len(warnings) == 2
    assert sorted(p.name.split('-')[0] for p in (tmp_path / 'checkpoints' / 'corrupt').iterdir()) == [
        '1',
        '2',
    ]
    assert Checkpointer(tmp_path).restore_latest(abstract_like(_state(0))) is None  # relaunch: from step 0


def test_checkpoints_without_records_are_refused_until_trusted(tmp_path, capsys):
    ckpt = Checkpointer(tmp_path, keep=3, async_save=False)
    _save(ckpt, [3])
    (tmp_path / 'checkpoints' / '3' / CHECKSUMS).unlink()
    with pytest.raises(CheckpointError, match=f'no {CHECKSUMS} record.*checkpoint_tool trust'):
        Checkpointer(tmp_path).restore_latest(abstract_like(_state(0)))
    with pytest.raises(CorruptCheckpointError):
        Checkpointer(tmp_path).restore_raw(3)
    assert checkpoint_tool.main(['verify', str(tmp_path)]) == 1
    assert checkpoint_tool.main(['trust', str(tmp_path)]) == 0
    assert checkpoint_tool.main(['verify', str(tmp_path)]) == 0
    r = Checkpointer(tmp_path).restore_latest(abstract_like(_state(0)))
    assert r.step == 3 and _tree_equal(r.state, _state(3))


@pytest.mark.parametrize('keep', [0, -1, 1.5, True])
def test_keep_checkpoints_must_be_at_least_one(tmp_path, keep):
    with pytest.raises(ConfigError, match=r'^train\.keep_checkpoints=.*must be an integer >= 1'):
        Checkpointer(tmp_path, keep=keep)


def test_keep_one_keeps_the_final_checkpoint(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=1, async_save=True)
    _save(ckpt, [4, 8, 9])
    ckpt.close()
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['9']
    assert Checkpointer(tmp_path).verify(9) is None


# -- NaN stops -----------------------------------------------------------------------------------
def _run_states(blown=(), nonfinite=()):
    def make(step):
        s = _state(step, scale=1e6 if step in blown else 1.0)
        if step in nonfinite:
            s['opt_state']['nu'] = s['opt_state']['nu'].at[3].set(jnp.inf)
        return s

    return make


def test_last_good_skips_blown_up_and_non_finite_checkpoints(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=5, async_save=False)
    _save(ckpt, [10, 20, 30, 40], make=_run_states(blown=(40,), nonfinite=(30,)))
    good = ckpt.last_good(45)
    assert good.step == 20 and good.earlier == 10 and not good.right_before
    assert [s for s, _ in good.rejected] == [40, 30]
    assert 'blown up' in dict(good.rejected)[40] and 'opt_state not finite' in dict(good.rejected)[30]
    msg = good.message(tmp_path / 'checkpoints', lr=0.003)
    assert '\n' not in msg and 'last good checkpoint is step 20' in msg
    assert 'step 40: parameters blown up' in msg and 'restart from step 20' in msg and 'now 0.003' in msg


def test_last_good_right_before_the_blow_up_names_an_earlier_step(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=5, async_save=False)
    _save(ckpt, [10, 20, 30], make=_run_states())
    good = ckpt.last_good(33)
    assert (good.step, good.earlier, good.right_before) == (30, 20, True)
    msg = good.message('ckdir', lr=0.1)
    assert 'right before the blow-up' in msg and 'restarted from an earlier step: step 20' in msg
    assert 'rewind <workdir> 20' in msg
    # a checkpoint at or after the NaN step is not a candidate (the run stops before saving it)
    assert ckpt.last_good(21).step == 20 and ckpt.last_good(21).earlier == 10


def test_last_good_with_a_reference_and_with_none_good(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=5, async_save=False)
    _save(ckpt, [10, 20], make=_run_states(blown=(10, 20)))
    # the oldest kept checkpoint as reference: both blown up alike, nothing is flagged
    assert ckpt.last_good(25).step == 20
    # the run's initial parameters as reference: both are blown up
    good = ckpt.last_good(25, reference_params=_state(0)['params'])
    assert good.step is None and [s for s, _ in good.rejected] == [20, 10]
    assert 'No good checkpoint is kept' in good.message() and 'step 0' in good.message()
    # a corrupt step is rejected by its checksum before its arrays are read
    open(_largest_file(tmp_path / 'checkpoints' / '20'), 'wb').close()
    good = ckpt.last_good(25)
    assert good.step == 10 and '0 bytes' in dict(good.rejected)[20]


def test_rewind_sets_newer_steps_aside(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=5, async_save=False)
    _save(ckpt, [10, 20, 30])
    ckpt.close()
    assert checkpoint_tool.main(['rewind', str(tmp_path), '10']) == 0
    assert Checkpointer(tmp_path).all_steps() == [10]
    assert sorted(p.name.split('-')[0] for p in (tmp_path / 'checkpoints' / 'rewound').iterdir()) == [
        '20',
        '30',
    ]
    assert checkpoint_tool.main(['rewind', str(tmp_path), '15']) == 1
    assert not (tmp_path / 'run.lock').exists()


def test_checksum_cost_is_small_for_a_resnet20_sized_state(tmp_path):
    """ResNet-20 (272,474 params) with SGD momentum: ~2.2 MB of float32. Recording and verifying the
    checksums must cost well under the save itself; figures in benchmarks/RESULTS.md."""
    n = 272_474
    state = {
        'params': {'w': jnp.ones((n,))},
        'opt_state': {'mu': jnp.ones((n,))},
        'batch_stats': {'m': jnp.ones((1000,))},
    }
    ckpt = Checkpointer(tmp_path, keep=2, async_save=False)
    ckpt.save(1, state, {}, {})
    t0 = time.perf_counter()
    assert ckpt.verify(1) is None
    dt = time.perf_counter() - t0
    assert dt < 0.5, dt


def test_a_save_that_cannot_fit_is_refused_before_writing(tmp_path, monkeypatch):
    import errno
    import shutil

    ckpt = Checkpointer(tmp_path, keep=3, async_save=False)
    _save(ckpt, [1])
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, 'disk_usage', lambda p: usage._replace(free=100_000))
    with pytest.raises(OSError) as e:
        ckpt.save(2, _state(2), {}, {})
    assert e.value.errno == errno.ENOSPC and 'checkpoint step 2 needs about 0.9 MB, 0.1 MB free' in str(
        e.value
    )
    assert e.value.filename.endswith(os.path.join('checkpoints', '2'))
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1']  # nothing half-written
    assert ckpt.verify(1) is None
