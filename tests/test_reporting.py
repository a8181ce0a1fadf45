"""Metric writers: JSONL always, TensorBoard event files, a Weights & Biases run (offline mode), pictures
through ``MetricWriter.image``, and the profiler hook's trace."""

import glob
import json
import struct

import numpy as np
import pytest

from research.config import base_config
from research.experiments.sweep import config_hash
from research.train.reporting import MetricWriter, ProfilerHook, parse_profile_steps, read_metrics


def _tb_events(workdir):
    """(scalars {tag: [(step, value)]}, image tags, text tags) of the event files in ``workdir/tb``."""
    from tensorboardX.proto import event_pb2

    scalars, images, texts = {}, set(), set()
    for f in sorted(glob.glob(str(workdir / 'tb' / 'events.out.tfevents.*'))):
        data = open(f, 'rb').read()
        pos = 0
        while pos < len(data):  # TFRecord: length, crc, payload, crc
            (n,) = struct.unpack('<Q', data[pos : pos + 8])
            ev = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
            pos += 12 + n + 4
            for v in ev.summary.value:
                if v.HasField('image'):
                    images.add(v.tag)
                elif v.metadata.plugin_data.plugin_name == 'text':
                    texts.add(v.tag)
                else:
                    scalars.setdefault(v.tag, []).append((ev.step, round(v.simple_value, 6)))
    return scalars, images, texts


def _log_a_run(writer):
    writer.write('train', 10, {'loss': 1.5, 'top1': 0.25, 'note': 'text is not a scalar'})
    writer.write('test', 10, {'loss': 1.75, 'top1': 0.5})
    writer.write('train', 20, {'loss': 0.5, 'top1': np.float32(0.75)})
    writer.image('viz/predictions', 20, np.linspace(0, 1, 8 * 8 * 3).reshape(8, 8, 3))


def test_jsonl_and_tensorboard_hold_the_scalars_images_and_config(tmp_path):
    c = base_config()
    w = MetricWriter(tmp_path, config=c)
    _log_a_run(w)
    w.close()
    rows = read_metrics(tmp_path)
    assert [(r['split'], r['step'], r['loss']) for r in rows] == [
        ('train', 10, 1.5),
        ('test', 10, 1.75),
        ('train', 20, 0.5),
    ]
    scalars, images, texts = _tb_events(tmp_path)
    assert scalars['train/loss'] == [(10, 1.5), (20, 0.5)] and scalars['test/top1'] == [(10, 0.5)]
    assert 'train/note' not in scalars
    assert images == {'viz/predictions'} and texts == {'config/text_summary'}


def test_tensorboard_off_and_resume_truncates(tmp_path):
    c = base_config()
    c.logging.tensorboard = False
    w = MetricWriter(tmp_path, config=c)
    _log_a_run(w)
    w.close()
    assert not (tmp_path / 'tb').exists()
    w = MetricWriter(tmp_path, config=c, resume_step=10)  # a relaunch from the step-10 checkpoint
    w.write('train', 20, {'loss': 0.4})
    w.close()
    assert [(r['step'], r['loss']) for r in read_metrics(tmp_path, 'train')] == [(10, 1.5), (20, 0.4)]


def test_image_from_a_png_path(tmp_path):
    from PIL import Image

    png = tmp_path / 'p.png'
    Image.fromarray(np.full((4, 6), 200, np.uint8)).save(png)
    seen = []

    class Recorder:
        def write(self, split, step, metrics):
            pass

        def image(self, tag, step, image, path):
            seen.append((tag, step, image.shape, image.dtype, path))

        def close(self):
            pass

    w = MetricWriter(tmp_path, writers=[Recorder()])
    w.image('pic', 3, png)
    w.image('arr', 4, np.zeros((5, 5)))
    w.close()
    assert seen == [('pic', 3, (4, 6, 3), np.uint8, png), ('arr', 4, (5, 5, 3), np.uint8, None)]
    off = MetricWriter(tmp_path / 'not_main', enabled=False, config=base_config())
    off.write('train', 1, {'loss': 1.0})
    off.image('pic', 1, png)
    off.close()
    assert not (tmp_path / 'not_main').exists()


def _wandb_records(run_file):
    """The records of a W&B ``.wandb`` file (LevelDB log format: 32 KiB blocks of CRC | length | type | data)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(run_file, 'rb').read()
    assert data[:4] == b':W&B'
    pos, out, buf = 7, [], b''
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack('<IHB', data[pos : pos + 7])
        if n == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(buf + chunk)
    return [pb.Record.FromString(d) for d in out]


def _key(item) -> str:
    return item.key or '/'.join(item.nested_key)


def test_wandb_offline_run_holds_the_scalars_config_and_picture(tmp_path, monkeypatch):
    pytest.importorskip('wandb')
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_SILENT', 'true')
    c = base_config()
    c.logging.wandb = True
    c.logging.wandb_project = 'unit-test'
    c.model.name = 'resnet20'
    w = MetricWriter(tmp_path, config=c)
    _log_a_run(w)
    w.close()
    import wandb

    wandb.teardown()  # waits for W&B's service to flush the run file
    (run_file,) = glob.glob(str(tmp_path / 'wandb' / 'offline-run-*' / 'run-*.wandb'))
    records = _wandb_records(run_file)
    history = [
        {k: json.loads(i.value_json) for i in r.history.item if not (k := _key(i)).startswith('_')}
        for r in records
        if r.WhichOneof('record_type') == 'history'
    ]
    scalars = [{k: v for k, v in h.items() if not k.startswith('viz/')} for h in history]
    assert scalars[:3] == [
        {'step': 10, 'train/loss': 1.5, 'train/top1': 0.25},
        {'step': 10, 'test/loss': 1.75, 'test/top1': 0.5},
        {'step': 20, 'train/loss': 0.5, 'train/top1': 0.75},
    ]
    assert history[3]['step'] == 20 and history[3]['viz/predictions/_type'] == 'image-file'
    (run,) = [r.run for r in records if r.WhichOneof('record_type') == 'run']
    config = {_key(i): json.loads(i.value_json) for i in run.config.update}
    assert config['model']['name'] == 'resnet20' and config['logging']['wandb'] is True
    assert run.run_id == (tmp_path / 'wandb_run_id').read_text().strip()  # a relaunch resumes this run


def test_wandb_missing_or_bad_mode_is_one_clear_error(tmp_path, monkeypatch):
    c = base_config()
    c.logging.wandb = True
    c.logging.wandb_mode = 'offlne'
    with pytest.raises(ValueError, match=r"logging.wandb_mode='offlne'"):
        MetricWriter(tmp_path, config=c)
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *a, **k):
        if name == 'wandb':
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, '__import__', no_wandb)
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[wandb\]'"):
        MetricWriter(tmp_path, config=c)


def test_logging_keys_do_not_change_a_sweep_run_id():
    a, b = base_config(), base_config()
    b.logging.wandb = True
    b.logging.tensorboard = False
    b.logging.profile_steps = '3:5'
    assert config_hash(a) == config_hash(b)


def test_profile_steps_parsing():
    assert parse_profile_steps('') is None and parse_profile_steps('10:15') == (10, 15)
    assert parse_profile_steps((2, 4)) == (2, 4)
    for bad in ('10', '5:5', 'a:b', '-1:3'):
        with pytest.raises(ValueError, match='logging.profile_steps'):
            parse_profile_steps(bad)


def test_profiler_hook_writes_a_trace_of_its_steps(tmp_path):
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda x: jnp.tanh(x @ x))
    x = jnp.ones((32, 32))
    hook = ProfilerHook(tmp_path, '2:4')
    states = []
    for step in range(6):
        hook.step(step, block=x)
        states.append(hook.active)
        x = f(x)
    hook.close(block=x)
    assert states == [False, False, True, True, False, False]
    traces = glob.glob(str(tmp_path / 'profile' / 'plugins' / 'profile' / '*' / '*.xplane.pb'))
    assert len(traces) == 1
    off = ProfilerHook(tmp_path / 'off', '')
    off.step(0)
    off.close()
    assert not (tmp_path / 'off').exists()
