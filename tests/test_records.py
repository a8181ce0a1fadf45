"""A run's record across relaunches: refused/allowed config changes, segments, epochs, finished runs,
totals; and the config value checks (one-line errors naming the key)."""

from __future__ import annotations

import json

import pytest

from research.config import (
    ConfigError,
    base_config,
    check_values,
    explain_override_error,
    to_dict,
    with_model,
)
from research.train import records
from research.train.records import ConfigChangeError, RunTotals, Segment

CFG = 'experiments/classification/lenet5_digits.py'


def _resolved(batch=32, seed=0, lr=3e-3, duration='30 epochs', spe=44):
    c = base_config()
    with_model(c, 'lenet5_modern')
    c.seed, c.train.batch_size, c.optimizer.lr, c.train.duration = seed, batch, lr, duration
    d = to_dict(c)
    d['_resolved'] = {'steps_per_epoch': spe, 'total_steps': 30 * spe}
    return d


# -- config changes on resume ----------------------------------------------------------------------
def test_resumable_keys_pass_and_others_are_refused_with_a_diff(tmp_path):
    saved = _resolved()
    now = _resolved(duration='40 epochs')
    now['train'].update(eval_every='2 epochs', keep_checkpoints=5, log_every_steps=10)
    now['data']['num_threads'] = 4
    now['_resolved']['devices'] = 8  # resolved values are not config keys
    changes = records.config_changes(saved, now)
    assert set(changes) == {
        'train.duration',
        'train.eval_every',
        'train.keep_checkpoints',
        'train.log_every_steps',
        'data.num_threads',
    }
    assert records.check_config_change(changes, workdir=tmp_path) == {}

    changed = _resolved(batch=64, seed=7, lr=0.01)
    changes = records.config_changes(saved, changed)
    assert changes == {'train.batch_size': (32, 64), 'seed': (0, 7), 'optimizer.lr': (0.003, 0.01)}
    with pytest.raises(ConfigChangeError) as e:
        records.check_config_change(changes, workdir=tmp_path)
    msg = str(e.value)
    assert isinstance(e.value, ConfigError) and '\n' not in msg
    assert 'optimizer.lr: 0.003 -> 0.01, seed: 0 -> 7, train.batch_size: 32 -> 64' in msg
    assert '--allow_config_change' in msg and str(tmp_path) in msg
    assert records.check_config_change(changes, workdir=tmp_path, allow=True) == changes


def test_tuples_lists_and_missing_keys_compare_as_in_config_json():
    saved = json.loads(json.dumps(_resolved()))  # what config.json holds: tuples became lists
    del saved['train']['cpu_conv']  # written by an older version without the key
    now = _resolved()
    assert records.config_changes(saved, now, defaults=to_dict(base_config())) == {}
    assert records.config_changes(saved, now) == {'train.cpu_conv': (None, 'auto')}
    now['schedule']['boundaries'] = ('10 epochs',)
    assert records.config_changes(saved, now) == {
        'train.cpu_conv': (None, 'auto'),
        'schedule.boundaries': ([], ['10 epochs']),
    }


def test_segments_history_and_epochs_true_to_the_data(tmp_path):
    # 1437 examples: batch 32 -> 44 steps/epoch, batch 64 -> 22 steps/epoch
    segs = records.write_config(tmp_path, _resolved(), step=0, batch_size=32, steps_per_epoch=44)
    assert segs == [Segment(0, 32, 44)]
    assert not (tmp_path / records.HISTORY).exists()
    # a plain resume changes nothing on disk
    before = (tmp_path / 'config.json').read_bytes()
    mtime = (tmp_path / 'config.json').stat().st_mtime_ns
    records.write_config(tmp_path, _resolved(), step=440, batch_size=32, steps_per_epoch=44)
    assert (tmp_path / 'config.json').read_bytes() == before and (
        tmp_path / 'config.json'
    ).stat().st_mtime_ns == mtime
    # an allowed batch change at step 440 (10 epochs): a new segment and a history row
    now = _resolved(batch=64, spe=22)
    changes = records.config_changes(records.load_config(tmp_path), now)
    allowed = records.check_config_change(changes, workdir=tmp_path, allow=True)
    segs = records.write_config(
        tmp_path, now, step=440, batch_size=64, steps_per_epoch=22, changes=changes, allowed=allowed
    )
    assert segs == [Segment(0, 32, 44), Segment(440, 64, 22, {'train.batch_size': [32, 64]})]
    history = [json.loads(l) for l in (tmp_path / records.HISTORY).read_text().splitlines()]
    assert len(history) == 1 and history[0]['step'] == 440
    assert history[0]['changes'] == {'train.batch_size': [32, 64]} and history[0]['allowed'] == [
        'train.batch_size'
    ]
    saved = records.load_config(tmp_path)
    assert saved['train']['batch_size'] == 64  # config.json is the current segment's config ...
    per_segment = records.segment_configs(saved)  # ... and keeps what each segment used
    assert [c['train']['batch_size'] for _, c in per_segment] == [32, 64]
    assert per_segment[0][1]['optimizer'] == per_segment[1][1]['optimizer']
    # 440 steps x 32 + 220 steps x 64 = 28,160 examples = 20 epochs (not 440+220 steps / 22 = 30)
    segs = records.segments(saved)
    assert records.examples_at(segs, 660) == 440 * 32 + 220 * 64
    assert records.epoch_at(segs, 660) == pytest.approx(20.0)
    assert records.epoch_at(segs, 220) == pytest.approx(5.0)
    # a rewound run that resumes before a segment's start drops that segment
    segs = records.write_config(
        tmp_path,
        _resolved(),
        step=400,
        batch_size=32,
        steps_per_epoch=44,
        changes={'train.batch_size': (64, 32)},
    )
    assert [s.start_step for s in segs] == [0, 400]


def test_config_json_without_segments_reads_as_one():
    assert records.segments(_resolved()) == [Segment(0, 32, 44)]
    assert records.segments(None) == []


def test_finished_summary(tmp_path):
    assert records.finished_summary(tmp_path, 1320) is None
    summary = {'complete': True, 'step': 1320, 'total_steps': 1320, 'final': {'test': {'top1': 0.98}}}
    (tmp_path / 'summary.json').write_text(json.dumps(summary))
    assert records.finished_summary(tmp_path, 1320) == summary
    assert records.finished_summary(tmp_path, 1320, latest_checkpoint=1320) == summary
    assert records.finished_summary(tmp_path, 1760) is None  # the duration was extended: resume
    assert records.finished_summary(tmp_path, 1320, latest_checkpoint=880) is None
    (tmp_path / 'summary.json').write_text(json.dumps({**summary, 'complete': False, 'step': 880}))
    assert records.finished_summary(tmp_path, 1320) is None
    (tmp_path / 'summary.json').write_text('{trunc')
    assert records.finished_summary(tmp_path, 1320) is None


def test_run_totals_add_up_segments():
    t = RunTotals.from_record(None)
    t = t.plus(wall_time_s=10.0, train_time_s=8.0, train_images=8000)
    meta = t.as_record()  # into the checkpoint's meta
    t2 = RunTotals.from_record(json.loads(json.dumps(meta))).plus(5.0, 2.0, 4000)
    assert t2.wall_time_s == 15.0 and t2.train_time_s == 10.0 and t2.segments == 2
    assert t2.images_per_sec == pytest.approx(1200.0)
    assert RunTotals().images_per_sec is None


def test_summary_line():
    s = {
        'model': 'lenet5_modern',
        'dataset': 'digits',
        'step': 1320,
        'epoch': 30.0,
        'images_per_sec': 4438.2,
        'wall_time_s': 22.7,
        'workdir': 'runs/x',
        'final': {'test': {'top1': 0.9889, 'loss': 0.0485}},
    }
    line = records.summary_line(s)
    assert line.startswith(
        'done: lenet5_modern on digits | 1320 steps (30.0 epochs) | test top1 98.89% loss 0.0485'
    )
    assert '4438 train img/s' in line and 'finished; nothing was changed' in line


# -- value checks -------------------------------------------------------------------------------
def _config(**sets):
    c = base_config()
    with_model(c, 'lenet5_modern')
    for key, value in sets.items():
        node = c
        *parents, leaf = key.split('__')
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


@pytest.mark.parametrize(
    'sets, message',
    [
        ({'train__batch_size': 0}, 'train.batch_size=0: must be an integer >= 1'),
        ({'train__batch_size': -8}, 'train.batch_size=-8: must be an integer >= 1'),
        ({'data__image_size': -5}, 'data.image_size=-5: must be an integer >= 0 (0 = the native size)'),
        ({'optimizer__lr': -0.1}, 'optimizer.lr=-0.1: must be a number >= 0'),
        ({'optimizer__lr': float('nan')}, 'optimizer.lr=nan: must be a number >= 0'),
        ({'train__keep_checkpoints': 0}, 'train.keep_checkpoints=0: must be an integer >= 1'),
        ({'train__keep_checkpoints': -1}, 'train.keep_checkpoints=-1: must be an integer >= 1'),
        ({'train__log_every_steps': 0}, 'train.log_every_steps=0: must be an integer >= 1'),
        ({'train__duration': 'ten epochs'}, "train.duration='ten epochs': not a duration"),
        ({'train__eval_every': '-1 steps'}, "train.eval_every='-1 steps': not a duration"),
        (
            {'data__train_split': 'train[:200%]'},
            "data.train_split='train[:200%]': When unit=%, percent slice boundaries should be in [-100, 100]",
        ),
        ({'data__eval_split': 'test[:abc]'}, "data.eval_split='test[:abc]': Unrecognized split format"),
        ({'model__depth': 20}, "model.depth=20: model 'lenet5_modern' takes no argument 'depth'; accepted: "),
    ],
)
def test_check_values_one_line_naming_key_and_value(sets, message):
    with pytest.raises(ConfigError) as e:
        check_values(_config(**sets))
    assert str(e.value).startswith(message), str(e.value)
    assert '\n' not in str(e.value)


def test_check_values_accepts_the_defaults_and_a_zero_duration():
    check_values(_config())
    check_values(_config(train__duration='0 steps', data__train_split='train[:90%]', optimizer__lr=0.0))


def test_model_kwarg_error_lists_the_accepted_arguments():
    with pytest.raises(ConfigError) as e:
        check_values(_config(model__depth=20))
    accepted = str(e.value).split('accepted: ')[1].split(', ')
    assert 'num_classes' in accepted and 'depth' not in accepted


def test_an_override_of_a_key_the_locked_config_lacks_is_named():
    argv = ['launch.py', f'--config={CFG}', '--config.model.depth=20', '--config.train.batch_size=8']
    err = explain_override_error(argv)
    assert str(err).startswith(
        "model.depth='20': model 'lenet5_modern' takes no argument 'depth'; accepted: "
    )
    err = explain_override_error(['launch.py', f'--config={CFG}', '--config.optimizer.lrr=1'])
    assert (
        str(err)
        == "--config.optimizer.lrr=1: unknown config key 'optimizer.lrr'; did you mean 'optimizer.lr'?"
    )
    assert explain_override_error(['launch.py', f'--config={CFG}', '--config.train.batch_size=8']) is None


def test_any_constructor_argument_of_the_model_is_an_override(tmp_path):
    """``--config.model.<arg>`` works for every argument the model takes, also one the experiment file
    does not set (it was refused: "the experiment's config sets no model.norm"); one it does not take
    is still refused by name, with exit code 2. Parsed as absl does under launch.py, in a fresh
    interpreter (the config flag is process-wide)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = (
        'import sys, json\n'
        'from research import cli\n'
        'from absl import flags\n'
        'sys.argv = sys.argv[1:]\n'
        'cli.parse_flags(sys.argv)\n'
        'print(json.dumps(flags.FLAGS.config.model.to_dict()))\n'
    )

    def parse(*overrides):
        argv = ['launch.py', f'--config={root / CFG}', *overrides]
        env = {**os.environ, 'PYTHONPATH': str(root), 'JAX_PLATFORMS': 'cpu'}
        return subprocess.run(
            [sys.executable, '-c', code, *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )

    out = parse(
        '--config.model.name=resnet20',
        '--config.model.norm=batch_biased',
        '--config.model.zero_init_residual=True',
    )
    assert out.returncode == 0, out.stderr[-2000:]
    model = json.loads(out.stdout.splitlines()[-1])
    assert model == {'name': 'resnet20', 'norm': 'batch_biased', 'zero_init_residual': True}
    out = parse('--config.model.dropout_rate=0.25')  # lenet5_modern takes it; the file does not set it
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1])['dropout_rate'] == 0.25
    out = parse('--config.model.nrom=batch_biased')
    assert out.returncode == 2
    assert out.stderr.strip().startswith(
        "launch.py: model.nrom='batch_biased': model 'lenet5_modern' takes no argument"
    )
