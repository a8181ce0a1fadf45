"""Segmentation: datasets, losses, metrics, the training task and its pictures."""

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from research import tasks
from research.config import base_config
from research.data import roots
from research.segmentation import data as seg_data
from research.segmentation.losses import cross_entropy_loss, dice_loss, segmentation_loss
from research.segmentation.metrics import confusion_matrix, metrics_from_confusion
from research.segmentation.viz import colorize, palette, result_grid

IGN = 255


# ---------------------------------------------------------------------------
# Metrics and losses against hand computations.


def test_confusion_matrix_and_iou_by_hand():
    labels = np.array([[0, 0, 1, 1], [2, 2, IGN, 0]])
    preds = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    conf = np.asarray(confusion_matrix(jnp.asarray(preds), jnp.asarray(labels), 4))
    # rows = truth, cols = prediction; the ignore pixel is skipped, class 3 absent from both.
    expected = np.array([[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(conf, expected)
    m = metrics_from_confusion(conf, ('bg', 'a', 'b', 'c'))
    assert m['pixels'] == 7
    assert m['pixel_acc'] == pytest.approx(5 / 7)
    iou = {'bg': 2 / (3 + 3 - 2), 'a': 2 / (2 + 3 - 2), 'b': 1 / (2 + 1 - 1)}
    for k, v in iou.items():
        assert m[f'iou/{k}'] == pytest.approx(v)
    assert np.isnan(m['iou/c'])  # absent from truth and prediction: excluded
    assert m['miou'] == pytest.approx(np.mean(list(iou.values())))
    # A class predicted but absent from the truth counts (IoU 0).
    conf2 = np.asarray(confusion_matrix(jnp.asarray([[3, 0]]), jnp.asarray([[0, 0]]), 4))
    m2 = metrics_from_confusion(conf2)
    assert m2['iou/3'] == 0.0 and m2['miou'] == pytest.approx((0.5 + 0.0) / 2)


def test_confusion_weights_mask_examples():
    labels = jnp.asarray(np.random.default_rng(0).integers(0, 3, (3, 4, 5)))
    w = jnp.asarray([1.0, 0.0, 1.0])[:, None, None] * jnp.ones((3, 4, 5))
    conf = confusion_matrix(labels, labels, 3, weights=w)
    assert int(conf.sum()) == 40 and int(jnp.trace(conf)) == 40


def test_cross_entropy_with_ignore_equals_manual_mean():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    labels = rng.integers(0, 5, (2, 3, 4))
    labels[0, 0, :] = IGN
    labels[1, 2, 1] = IGN
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = labels != IGN
    manual = -np.mean([logp[n, h, w, labels[n, h, w]] for n, h, w in zip(*np.nonzero(valid))])
    got = float(cross_entropy_loss(jnp.asarray(logits), jnp.asarray(labels)))
    assert got == pytest.approx(manual, rel=1e-5)
    # Changing logits at ignored pixels does not change the loss.
    logits2 = logits.copy()
    logits2[0, 0] += 100.0
    assert float(cross_entropy_loss(jnp.asarray(logits2), jnp.asarray(labels))) == pytest.approx(
        got, rel=1e-6
    )


def test_weighted_cross_entropy_equals_torch_formula():
    """Class-weighted CE = sum_i w[y_i] ce_i / sum_i w[y_i] over valid pixels (torch's weight= semantics)."""
    logits = jax.random.normal(jax.random.key(0), (2, 3, 4, 5))
    labels = np.array(jax.random.randint(jax.random.key(1), (2, 3, 4), 0, 5))
    labels[0, 0, :2] = IGN
    w = np.array([0.1, 1.0, 2.0, 0.5, 3.0], np.float32)
    logp = np.asarray(jax.nn.log_softmax(logits, -1), np.float64)
    valid = labels != IGN
    safe = np.where(valid, labels, 0)
    ce = -np.take_along_axis(logp, safe[..., None], -1)[..., 0]
    want = np.sum(w[safe] * ce * valid) / np.sum(w[safe] * valid)
    got = float(cross_entropy_loss(logits, jnp.asarray(labels), class_weights=jnp.asarray(w)))
    assert got == pytest.approx(want, rel=1e-5)
    ones = float(cross_entropy_loss(logits, jnp.asarray(labels), class_weights=jnp.ones(5)))
    assert ones == pytest.approx(float(cross_entropy_loss(logits, jnp.asarray(labels))), rel=1e-6)


def test_median_frequency_weights_hand_case():
    from research.segmentation.losses import median_frequency_weights

    # Image 0 (4 px): 3 background, 1 class 1. Image 1 (4 px, one ignored): 1 background, 2 class 2.
    labels = np.array([[[0, 0], [0, 1]], [[0, 2], [2, IGN]]])
    # f_0 = 4 / 7 (both images, 7 valid px), f_1 = 1 / 4, f_2 = 2 / 3; class 3 never occurs.
    f = np.array([4 / 7, 1 / 4, 2 / 3])
    w = median_frequency_weights(labels, 4)
    np.testing.assert_allclose(w[:3], np.median(f) / f, rtol=1e-6)
    assert w[3] == 0.0 and w[0] == pytest.approx(1.0)


def test_dice_hand_case():
    # Two pixels, two classes; probabilities given via log-probs as logits.
    probs = np.array([[[[0.8, 0.2], [0.4, 0.6]]]], np.float32)  # (1, 1, 2, 2)
    labels = np.array([[[0, 1]]])
    logits = jnp.log(jnp.asarray(probs))
    # class 0: inter 0.8, sum p 1.2, sum g 1 -> (1.6 + 1) / (2.2 + 1); class 1: inter 0.6, sum p 0.8, g 1.
    d0, d1 = (2 * 0.8 + 1) / (1.2 + 1 + 1), (2 * 0.6 + 1) / (0.8 + 1 + 1)
    assert float(dice_loss(logits, jnp.asarray(labels))) == pytest.approx(1 - (d0 + d1) / 2, rel=1e-5)
    assert float(dice_loss(logits, jnp.asarray(labels), smooth=0.0)) == pytest.approx(
        1 - (1.6 / 2.2 + 1.2 / 1.8) / 2, rel=1e-5
    )
    # Ignored pixels drop out: ignoring the second pixel leaves class 1 with only predictions.
    ign = np.array([[[0, IGN]]])
    d0, d1 = (2 * 0.8 + 1) / (0.8 + 1 + 1), (0 + 1) / (0.2 + 0 + 1)
    assert float(dice_loss(logits, jnp.asarray(ign))) == pytest.approx(1 - (d0 + d1) / 2, rel=1e-5)
    mix = segmentation_loss(logits, jnp.asarray(labels), ce_weight=0.5, dice_weight=2.0)
    ce = cross_entropy_loss(logits, jnp.asarray(labels))
    assert float(mix) == pytest.approx(
        0.5 * float(ce) + 2.0 * float(dice_loss(logits, jnp.asarray(labels))), rel=1e-5
    )


# ---------------------------------------------------------------------------
# Datasets.


def _fake_digits(n=20, seed=0):
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        y, x = rng.integers(4, 12, 2)
        images[i, y : y + 12, x : x + 8] = 255  # a block "stroke"
        images[i, y + 2 : y + 10, x + 2 : x + 6] = 60  # faint hole
    return images, (np.arange(n) % 10).astype(np.int32)


def _check_consistent(ex, num_classes, instance_classes=None):
    seg, inst = ex['segmentation'], ex['instances']
    assert seg.dtype == np.uint8 and inst.dtype == np.uint8
    assert seg.max() < num_classes
    np.testing.assert_array_equal(seg > 0, inst > 0)  # labelled pixels are exactly the instance pixels
    for k in np.unique(inst[inst > 0]):
        assert len(np.unique(seg[inst == k])) == 1  # one class per instance


def test_mnist_canvas_labels_and_determinism():
    digits, labels = _fake_digits()
    p = seg_data.SegParams(canvas_size=48, min_objects=2, max_objects=3)
    a = seg_data.make_mnist_canvas(digits, labels, seg_data._rng(0, 'train', 5), p)
    b = seg_data.make_mnist_canvas(digits, labels, seg_data._rng(0, 'train', 5), p)
    c = seg_data.make_mnist_canvas(digits, labels, seg_data._rng(0, 'train', 6), p)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a['image'], c['image'])
    assert a['image'].shape == (48, 48, 1)
    _check_consistent(a, 11)
    # Labelled pixels are bright strokes; the top-most digit's strokes show through.
    assert np.all(a['image'][..., 0][a['segmentation'] > 0] >= seg_data.STROKE_THRESHOLD)
    assert 2 <= len(np.unique(a['instances'])) - 1 <= 3 or a['instances'].max() >= 2


def test_shapes_canvas_labels_and_determinism():
    p = seg_data.SegParams(canvas_size=32, min_objects=1, max_objects=3)
    for i in range(5):
        a = seg_data.make_shapes_canvas(seg_data._rng(3, 'test', i), p)
        b = seg_data.make_shapes_canvas(seg_data._rng(3, 'test', i), p)
        np.testing.assert_array_equal(a['image'], b['image'])
        np.testing.assert_array_equal(a['segmentation'], b['segmentation'])
        assert a['image'].shape == (32, 32, 3)
        _check_consistent(a, 4)
        assert (a['segmentation'] > 0).any()


def _write_digit_folder(root, n_per_split=(20, 10)):
    digits, labels = _fake_digits(sum(n_per_split))
    i = 0
    for split, n in zip(('train', 'test'), n_per_split):
        for _ in range(n):
            d = root / split / str(labels[i])
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(digits[i]).save(d / f'{i:04d}.png')
            i += 1
    return root


def _seg_config(tmp_path, name='shapes_seg', **seg):
    c = base_config()
    c.task = 'segmentation'
    c.data.name = name
    c.data.data_dir = str(tmp_path / 'tfds')
    if name == 'mnist_seg':
        c.data.path = str(_write_digit_folder(tmp_path / 'digits'))
    c.seg.update(dict(canvas_size=16, num_train=10, num_test=7, max_objects=2, min_scale=0.5, max_scale=0.7))
    c.seg.update(seg)
    return c


@pytest.mark.parametrize('name', ['shapes_seg', 'mnist_seg'])
def test_builder_matches_generator(tmp_path, name):
    c = _seg_config(tmp_path, name)
    builder = seg_data.get_seg_builder(c.data, c.seg)
    assert {s: int(v.num_examples) for s, v in builder.info.splits.items()} == {'train': 10, 'test': 7}
    src = builder.as_data_source('test')
    for i in (0, 6):
        want = builder.example('test', i)
        rec = src[i]
        for k in ('image', 'segmentation', 'instances'):
            np.testing.assert_array_equal(np.asarray(rec[k]), want[k])
        _check_consistent(want, len(builder.info.metadata['class_names']))
    # A different generation seed is a different dataset (own config name, other content).
    other = seg_data.get_seg_builder(c.data, {**c.seg.to_dict(), 'data_seed': 1})
    assert other.builder_config.name != builder.builder_config.name
    info = seg_data.get_seg_info(c.data, c.seg)
    assert info.num_classes == (11 if name == 'mnist_seg' else 4)
    # Registered by name in research.data like the other offline builders.
    from research.data import datasets

    assert name in datasets.OFFLINE_BUILDERS
    assert datasets.make_builder(name, c.data.path, c.data.data_dir).name == name


def test_joint_crop_flip_moves_image_and_label_together():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (6, 10, 10)).astype(np.uint8)
    images = labels[..., None].astype(np.uint8) * 10 + 1  # image encodes the label; padding -> 0
    u = rng.uniform(size=(6, 3))
    x, y = seg_data.joint_crop_flip(images, labels, u, crop_padding=3, flip=True)
    pad = y == IGN
    np.testing.assert_array_equal(x[..., 0] == 0, pad)
    np.testing.assert_array_equal(x[..., 0][~pad], y[~pad].astype(np.uint8) * 10 + 1)
    assert pad.any() and (u[:, 2] < 0.5).any()


def test_train_iterator_deterministic_and_resumable(tmp_path):
    c = _seg_config(tmp_path)
    c.data.augment.crop_padding = 2
    c.data.augment.flip = True
    it = seg_data.make_train_iterator(c.data, c.seg, seed=0, global_batch_size=4)
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    nxt = next(it)
    it2 = seg_data.make_train_iterator(c.data, c.seg, seed=0, global_batch_size=4)
    it2.set_state(state)
    again = next(it2)
    np.testing.assert_array_equal(nxt['label'], again['label'])
    np.testing.assert_array_equal(nxt['image'], again['image'])
    assert first[0]['label'].shape == (4, 16, 16) and first[0]['image'].shape == (4, 16, 16, 3)
    assert (first[0]['label'] == IGN).any()  # crop padding is ignored


def test_viz_grid():
    pal = palette(21)
    assert pal.shape == (21, 3) and np.all(pal[0] == 0) and len({tuple(c) for c in pal}) == 21
    np.testing.assert_allclose(pal[1], [128 / 255, 0, 0])  # VOC aeroplane
    col = colorize(np.array([[0, IGN]]), 3)
    np.testing.assert_allclose(col[0, 1], [1, 1, 1])
    g = result_grid(np.zeros((2, 8, 8, 1)), np.zeros((2, 8, 8), int), np.ones((2, 8, 8), int), 3)
    assert g.shape == (2 + 2 * 10, 2 + 3 * 10, 3)


# ---------------------------------------------------------------------------
# The task (a tiny fully-convolutional stand-in keeps compiles short).


import flax.linen as nn  # noqa: E402

from research import models  # noqa: E402


class TinyFCN(nn.Module):
    """Two 3x3 convs and a 1x1 classifier at full resolution; an aux head on request."""

    num_classes: int = 21
    width: int = 8

    @nn.compact
    def __call__(self, x, train: bool = False, return_aux: bool = False):
        h = nn.relu(nn.Conv(self.width, (3, 3))(x))
        h = nn.relu(nn.Conv(self.width, (3, 3))(h))
        logits = nn.Conv(self.num_classes, (1, 1))(h)
        if return_aux:
            return logits, {'aux': nn.Conv(self.num_classes, (1, 1), name='aux')(h)}
        return logits


models.register('seg_test_tiny_fcn', TinyFCN, overwrite=True)


def _task_config(tmp_path, **seg):
    c = _seg_config(tmp_path, **seg)
    c.model.name = 'seg_test_tiny_fcn'
    c.optimizer.name = 'adam'
    c.optimizer.lr = 1e-2
    c.train.batch_size = 4
    c.train.eval_batch_size = 4  # 7 test examples: the second batch is padded
    c.train.duration = '4 steps'
    c.train.log_every_steps = 2
    c.train.eval_every = '2 steps'
    c.train.checkpoint_every = '2 steps'
    c.train.async_checkpoints = False
    c.seg.viz_examples = 3
    return c


def test_train_step_changes_params_and_eval_counts_every_pixel_once(tmp_path):
    c = _task_config(tmp_path, dice_weight=0.5)
    tr = tasks.trainer(c)
    state = tr.init_state()
    before = jax.tree.map(np.asarray, state.params)
    it = seg_data.make_train_iterator(c.data, c.seg, seed=0, global_batch_size=4)
    state, m = tr.train_step(state, next(it))
    after = jax.tree.map(np.asarray, state.params)
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))]
    assert all(changed) and np.isfinite(float(m['loss'])) and int(state.step) == 1
    res, picture = tr.evaluate(state)
    split = seg_data.get_split(seg_data.get_seg_builder(c.data, c.seg), 'test')
    assert res['pixels'] == split.labels.size == 7 * 16 * 16  # padding not counted, nothing twice
    assert res['count'] == 7 and picture is not None
    # The eval metrics equal a direct computation over the whole split.
    info = tr.task.seg_info
    x = (split.images.astype(np.float32) / 255 - np.asarray(info.mean)) / np.asarray(info.std)
    preds = np.asarray(jax.jit(tr.task.predict_step)(state, {'image': jnp.asarray(x, jnp.float32)}))
    direct = metrics_from_confusion(confusion_matrix(jnp.asarray(preds), jnp.asarray(split.labels), 4))
    assert res['miou'] == pytest.approx(direct['miou'], abs=1e-6)
    assert res['pixel_acc'] == pytest.approx(direct['pixel_acc'], abs=1e-6)


def test_class_balance_knob(tmp_path):
    from research.segmentation.losses import median_frequency_weights

    c = _task_config(tmp_path, class_balance='median_frequency')
    tr = tasks.trainer(c)
    labels = seg_data.get_split(seg_data.get_seg_builder(c.data, c.seg), 'train').labels
    np.testing.assert_allclose(tr.task.class_weights, median_frequency_weights(labels, 4), rtol=1e-6)
    state, m = tr.train_step(
        tr.init_state(), next(seg_data.make_train_iterator(c.data, c.seg, seed=0, global_batch_size=4))
    )
    assert np.isfinite(float(m['loss']))
    with pytest.raises(ValueError, match="'median_freq'"):
        tasks.create(_task_config(tmp_path, class_balance='median_freq'))


def test_crf_eval_option_equals_dense_crf_on_the_split(tmp_path):
    """``seg.crf_eval``: the final evaluation adds crf_miou = mIoU of argmax dense_crf(logits, image)."""
    from research.segmentation.crf import dense_crf

    c = _task_config(tmp_path, crf_eval=True, crf_method='exact', crf_iterations=3)
    tr = tasks.trainer(c)
    state = tr.init_state()
    state, _ = tr.train_step(
        state, next(seg_data.make_train_iterator(c.data, c.seg, seed=0, global_batch_size=4))
    )
    res, _ = tr.evaluate(state, final=True)  # the final evaluation adds the CRF metrics
    plain, _ = tr.evaluate(state)
    assert res['miou'] == plain['miou'] and 'crf_miou' not in plain
    split = seg_data.get_split(seg_data.get_seg_builder(c.data, c.seg), 'test')
    info = tr.task.seg_info
    mean, std = np.asarray(info.mean, np.float32), np.asarray(info.std, np.float32)
    x = (split.images.astype(np.float32) / 255 - mean) / std
    logits = state.apply_fn(state.variables(), jnp.asarray(x), train=False)
    q = dense_crf(logits, jnp.asarray((x * std + mean) * 255), num_iterations=3, method='exact')
    direct = metrics_from_confusion(confusion_matrix(jnp.argmax(q, -1), jnp.asarray(split.labels), 4))
    assert res['crf_miou'] == pytest.approx(direct['miou'], abs=1e-6)
    assert res['crf_pixel_acc'] == pytest.approx(direct['pixel_acc'], abs=1e-6)
    plain_trainer = tasks.trainer(_task_config(tmp_path))
    final, _ = plain_trainer.evaluate(plain_trainer.init_state(), final=True)
    assert 'crf_miou' not in final  # seg.crf_eval=False: no CRF at the end either


def test_aux_head_is_used_when_the_model_has_one(tmp_path):
    from research.tasks.segmentation import has_aux

    c = _task_config(tmp_path)
    tr = tasks.trainer(c)
    sample = jnp.zeros((1, 16, 16, 3))
    assert has_aux(tr.model, sample)
    state = tr.init_state()
    assert 'aux' in state.params
    it = seg_data.make_train_iterator(c.data, c.seg, seed=0, global_batch_size=4)
    before = np.asarray(state.params['aux']['kernel'])
    state, _ = tr.train_step(state, next(it))
    assert not np.array_equal(before, np.asarray(state.params['aux']['kernel']))


def test_segmentation_task_end_to_end_and_resume(tmp_path):
    c = _task_config(tmp_path)
    full = tasks.train_and_evaluate(c, tmp_path / 'full', show_progress=False)
    assert full['complete'] and full['step'] == 4
    rows = [json.loads(line) for line in (tmp_path / 'full' / 'metrics.jsonl').read_text().splitlines()]
    evals = [r for r in rows if r['split'] == 'test']
    assert [r['step'] for r in evals] == [2, 4]
    assert all(0.0 <= r['miou'] <= 1.0 and r['pixels'] == 7 * 16 * 16 for r in evals)
    png = tmp_path / 'full' / 'viz' / 'step_000004.png'
    assert png.exists() and (tmp_path / 'full' / 'viz' / 'step_000002.png').exists()
    w, h = Image.open(png).size
    # 3 rows of input | truth | prediction, scale 2, under a 15 px band of column titles
    assert (w, h) == (2 * (2 + 3 * 18), 15 + 2 * (2 + 3 * 18))
    # Preempted after 2 steps, then relaunched: same final metrics as the uninterrupted run.
    part = tasks.train_and_evaluate(c, tmp_path / 'resumed', stop_after_steps=2, show_progress=False)
    assert not part['complete']
    resumed = tasks.train_and_evaluate(c, tmp_path / 'resumed', show_progress=False)
    assert resumed['final']['test']['miou'] == pytest.approx(full['final']['test']['miou'], abs=1e-6)
    assert resumed['final']['test']['loss'] == pytest.approx(full['final']['test']['loss'], rel=1e-5)
    other = _task_config(tmp_path)
    other.model.width = 4
    with pytest.raises(ValueError, match=r'holds a run with another config: .*model\.width'):
        tasks.train_and_evaluate(other, tmp_path / 'resumed', show_progress=False)


SEG_SWEEP_CONFIG = """
import os
from pathlib import Path
from pathlib import Path
from tests.test_segmentation import _task_config
from research.experiments.sweep import product

def get_config(arg=None):
    c = _task_config(Path(os.environ["SEG_SWEEP_TMP"]))
    c.model.width = 4
    return c

def get_sweep(arg=None):
    return product({"model.width": [4, 6]})

def get_table(arg=None):
    return dict(name="tiny_width", rows="model.width", metric="test_miou", paper={6: 50.0})
"""


def test_segmentation_sweep_ledger_table_and_skip(tmp_path, monkeypatch, capsys):
    """``--sweep --table`` on a segmentation config: runs train through the task, the ledger holds
    mIoU (%), the table and curves render, a relaunch skips the finished runs."""
    from research.experiments import commands, ledger

    monkeypatch.setenv('SEG_SWEEP_TMP', str(tmp_path))
    cfg = tmp_path / 'seg_sweep.py'
    cfg.write_text(SEG_SWEEP_CONFIG)
    from research.experiments.sweep import load_config_module

    config = load_config_module(cfg).get_config()
    root = tmp_path / 'sweep'
    kw = dict(sweep=True, dry_run=False, table='tiny_width', show_progress=False, argv=['launch.py'])
    assert commands.main(config, str(cfg), root, **kw) == 0
    rows = {r['overrides']['model.width']: r for r in ledger.read(root / 'ledger.jsonl')}
    assert set(rows) == {4, 6} and all(r['status'] == 'done' for r in rows.values())
    for width, row in rows.items():
        summary = json.loads((Path(row['workdir']) / 'summary.json').read_text())
        m = row['metrics']
        assert m['test_miou'] == pytest.approx(100 * summary['final']['test']['miou'])
        assert m['test_pixel_acc'] == pytest.approx(100 * summary['final']['test']['pixel_acc'])
        assert m['best_test_miou'] >= m['test_miou'] - 1e-9 and m['best_step'] in (2, 4)
        assert row['num_params'] == summary['num_params'] and row['step'] == 4
    md = (root / 'tables' / 'tiny_width.md').read_text()
    assert f'{rows[4]["metrics"]["test_miou"]:.2f}' in md and '50.00' in md
    assert (root / 'tables' / 'tiny_width.png').exists() and (
        root / 'tables' / 'tiny_width_curves.png'
    ).exists()
    capsys.readouterr()
    assert commands.main(config, str(cfg), root, **kw) == 0
    assert 'skip' in capsys.readouterr().out


def test_ledger_segmentation_metrics(tmp_path):
    from research.experiments import ledger

    (tmp_path / 'summary.json').write_text(
        json.dumps({'task': 'segmentation', 'final': {'test': {'miou': 0.5, 'pixel_acc': 0.9, 'loss': 0.3}}})
    )
    rows = [
        {'split': 'train', 'step': 1, 'loss': 1.0, 'pixel_acc': 0.5},
        {'split': 'test', 'step': 1, 'miou': 0.6, 'pixel_acc': 0.8},
        {'split': 'test', 'step': 2, 'miou': 0.5, 'pixel_acc': 0.9},
    ]
    (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    m = ledger.run_metrics(tmp_path)
    assert m['test_miou'] == pytest.approx(50.0) and m['test_pixel_acc'] == pytest.approx(90.0)
    assert m['best_test_miou'] == pytest.approx(60.0) and m['best_step'] == 1
    assert m['train_loss'] == 1.0 and m['train_pixel_acc'] == pytest.approx(50.0) and 'test_error' not in m


@pytest.mark.parametrize(
    'name,arg',
    [
        ('unet_mnist', 'quick'),
        ('unet_mnist', ''),
        ('fcn_mnist', 'quick,stride=16'),
        ('fcn_mnist', ''),
        ('deeplabv3_mnist', 'quick'),
        ('deeplabv3_mnist', 'quick,sweep=rates'),
        ('deeplabv3_mnist', 'quick,plus'),
        ('deeplabv3_mnist', ''),
        ('pspnet_mnist', 'quick'),
        ('pspnet_mnist', 'bins=none'),
        ('segnet_mnist', 'quick'),
        ('segnet_mnist', 'quick,deconvnet'),
        ('context_mnist', 'quick'),
        ('lraspp_mnist', 'quick'),
        ('unet_mnist', 'quick,data=shapes'),
        ('deeplabv3_mnist', 'quick,data=shapes'),
    ],
)
def test_experiment_configs_validate(name, arg):
    import importlib

    from research.config import validate_config

    c = importlib.import_module(f'experiments.segmentation.{name}').get_config(arg)
    validate_config(c)
    assert c.task == 'segmentation'
    assert (
        c.data.name == 'shapes_seg'
        if 'data=shapes' in arg
        else (c.data.name == 'mnist_seg' and os.path.exists(roots.expand(c.data.path)))
    )
    module = importlib.import_module(f'experiments.segmentation.{name}')
    kwargs = {k: v for k, v in c.model.to_dict().items() if k != 'name'}
    model = models.create(c.model.name, num_classes=11, **kwargs)
    channels = 3 if 'data=shapes' in arg else 1
    x = jax.ShapeDtypeStruct((2, c.seg.canvas_size, c.seg.canvas_size, channels), jnp.float32)
    out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0], x)
    assert out.shape == (2, c.seg.canvas_size, c.seg.canvas_size, 11)
    if hasattr(module, 'get_sweep'):  # every run of the sweep builds (model kwargs accepted) and has a table
        from research.experiments import commands, sweep

        c.lock()
        runs = sweep.expand(c, module.get_sweep(arg), '/tmp/unused')
        assert len({r.id for r in runs}) == len(runs) >= 2
        commands.preflight(runs)
        assert commands.get_table_specs(module, arg)[0]['metric'] == 'test_miou'
    with pytest.raises(ValueError, match='unknown config argument'):
        module.get_config('quik')


def _fake_city_builder():
    """Defines (and so registers with TFDS) the fake builder once per process: this module may be
    imported twice (as a test file and as ``tests.<name>`` by a sweep config), and TFDS refuses a
    second registration of the name."""
    if _fake_city_builder.cls is not None:
        return _fake_city_builder.cls

    class FakeCitySeg(tfds.core.GeneratorBasedBuilder):
        """Cityscapes' layout (image_left, segmentation_label with label ids 0..33) from Tensors, for tests."""

        VERSION = tfds.core.Version('1.0.0')

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        'image_left': tfds.features.Tensor(shape=(24, 40, 3), dtype=np.uint8),
                        'segmentation_label': tfds.features.Tensor(shape=(24, 40, 1), dtype=np.uint8),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {'train': self._generate_examples(8, 0), 'validation': self._generate_examples(5, 1)}

        def _generate_examples(self, n, seed):
            rng = np.random.default_rng(seed)
            for i in range(n):
                label = np.full((24, 40, 1), 7, np.uint8)  # road
                label[:8] = 23  # sky
                label[8:12, 10:20] = 26  # car
                label[20:, :4] = 1  # ego vehicle: not evaluated
                yield (
                    i,
                    {
                        'image_left': rng.integers(0, 255, (24, 40, 3), dtype=np.uint8),
                        'segmentation_label': label,
                    },
                )

    _fake_city_builder.cls = FakeCitySeg
    return FakeCitySeg


_fake_city_builder.cls = None


def test_segmentation_on_a_tfds_dataset_by_name(tmp_path, monkeypatch):
    """A TFDS segmentation dataset by name (Cityscapes' layout): label ids mapped to the 19 train ids
    (others -> ignore), resized to seg.canvas_size by nearest neighbour; the task trains on it."""
    _fake_city_builder()
    monkeypatch.setitem(seg_data.TFDS_LAYOUTS, 'fake_city_seg', dict(seg_data.TFDS_LAYOUTS['cityscapes']))
    c = _task_config(tmp_path)
    c.data.name = 'fake_city_seg'
    c.data.eval_split = 'validation'
    c.seg.canvas_size = 16
    c.model.num_classes = 19
    builder = seg_data.get_seg_builder(c.data, c.seg)
    info = seg_data.get_seg_info(c.data, c.seg)
    assert info.num_classes == 19 and info.class_names[13] == 'car' and info.image_shape == (16, 16, 3)
    split = seg_data.get_split(builder, 'train', c.seg)
    image, label = split.example(0)
    assert image.shape == (16, 16, 3) and label.shape == (16, 16)
    assert set(np.unique(label).tolist()) == {0, 10, 13, 255}  # road, sky, car, ignore (ego vehicle)
    assert label[0, 0] == 10 and label[8, 8] == 0 and label[15, 0] == 255
    summary = tasks.train_and_evaluate(c, tmp_path / 'run', show_progress=False)
    assert summary['complete'] and summary['final']['validation']['count'] == 5
    c.data.name = 'voc/2012'
    with pytest.raises(ValueError, match='boxes only'):
        seg_data.get_seg_builder(c.data, c.seg)
