"""research.detection.data: the mnist_det generator, builder and grain pipelines."""

import numpy as np
import pytest
from PIL import Image

from research.config import base_config
from research.detection import data as det_data
from research.segmentation import data as seg_data


def _fake_digits(n=30, seed=0):
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        y, x = rng.integers(2, 14, 2)
        images[i, y : y + 12, x : x + 8] = 255
        images[i, y + 3 : y + 9, x + 2 : x + 6] = 40
    return images, (np.arange(n) % 10).astype(np.int32)


P = det_data.DetParams(canvas_size=64, min_objects=2, max_objects=4, min_scale=0.6, max_scale=1.2)


def _check_example(ex, p):
    m, s = p.max_objects, p.canvas_size
    assert ex['image'].shape == (s, s, 1) and ex['image'].dtype == np.uint8
    assert ex['boxes'].shape == (m, 4) and ex['boxes'].dtype == np.float32
    assert ex['masks'].shape == (m, s, s) and ex['labels'].dtype == np.int32
    n = int(ex['num_objects'])
    assert 1 <= n <= m
    assert (ex['labels'][:n] >= 1).all() and (ex['labels'][:n] <= 10).all() and (ex['labels'][n:] == 0).all()
    assert (ex['boxes'][n:] == 0).all() and (ex['masks'][n:] == 0).all()
    for k in range(n):
        ys, xs = np.nonzero(ex['masks'][k])
        # Tight: the box is exactly the mask's extent (pixel edges).
        np.testing.assert_array_equal(ex['boxes'][k], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        assert (ex['image'][..., 0][ex['masks'][k] > 0] >= seg_data.STROKE_THRESHOLD).all()
    assert (ex['masks'][:n].sum(0) <= 1).all()  # visible strokes do not overlap


def test_canvas_boxes_tight_and_deterministic():
    digits, labels = _fake_digits()
    for i in range(8):
        a = det_data.make_det_canvas(digits, labels, seg_data._rng(0, 'train', i), P)
        b = det_data.make_det_canvas(digits, labels, seg_data._rng(0, 'train', i), P)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
        _check_example(a, P)
    c = det_data.make_det_canvas(digits, labels, seg_data._rng(0, 'test', 0), P)
    assert not np.array_equal(
        c['image'], det_data.make_det_canvas(digits, labels, seg_data._rng(0, 'train', 0), P)['image']
    )
    # Labels are the pasted digits' classes + 1 (fake digit i has class i % 10).
    ex = det_data.make_det_canvas(digits, labels, seg_data._rng(0, 'train', 3), P)
    assert set(ex['labels'][: ex['num_objects']]) <= set(range(1, 11))


def test_masks_to_boxes_hand_case():
    m = np.zeros((3, 6, 8), bool)
    m[0, 1:3, 2:5] = True
    m[1, 5, 7] = True
    np.testing.assert_array_equal(det_data.masks_to_boxes(m), [[2, 1, 5, 3], [7, 5, 8, 6], [0, 0, 0, 0]])


def test_max_iou_limits_window_overlap():
    digits, labels = _fake_digits()
    p = det_data.DetParams(
        canvas_size=96, min_objects=4, max_objects=4, min_scale=1.0, max_scale=1.0, max_iou=0.0
    )
    from research.detection.boxes import box_iou

    for i in range(5):
        ex = det_data.make_det_canvas(digits, labels, seg_data._rng(1, 'train', i), p)
        n = int(ex['num_objects'])
        iou = np.asarray(box_iou(ex['boxes'][:n], ex['boxes'][:n]))
        assert n == 4 and np.allclose(iou - np.eye(n), 0)  # disjoint paste windows -> disjoint boxes


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


def _config(tmp_path):
    c = base_config()
    c.data.data_dir = str(tmp_path / 'tfds')
    c.data.path = str(_write_digit_folder(tmp_path / 'digits'))
    det = dict(
        canvas_size=32, num_train=10, num_test=7, min_objects=1, max_objects=3, min_scale=0.5, max_scale=0.8
    )
    return c, det


def test_builder_matches_generator_and_pipelines(tmp_path):
    c, det = _config(tmp_path)
    builder = det_data.get_det_builder(c.data, det)
    assert {s: int(v.num_examples) for s, v in builder.info.splits.items()} == {'train': 10, 'test': 7}
    p = det_data.params_from_config(det)
    src = builder.as_data_source('test')
    for i in (0, 6):
        want = builder.example('test', i)
        rec = src[i]
        for k in want:
            np.testing.assert_array_equal(np.asarray(rec[k]), want[k])
        _check_example(want, p)
    other = det_data.get_det_builder(c.data, {**det, 'data_seed': 1})
    assert other.builder_config.name != builder.builder_config.name

    # Eval: one ordered pass, final batch padded and masked.
    batches = list(det_data.make_eval_iterator(c.data, det, 'test', global_batch_size=4, with_masks=True))
    assert len(batches) == 2
    np.testing.assert_array_equal(batches[1]['mask'], [True, True, True, False])
    split = det_data.get_split(builder, 'test', with_masks=True)
    np.testing.assert_array_equal(batches[0]['boxes'], split.boxes[:4])
    np.testing.assert_array_equal(batches[0]['box_mask'].sum(1), split.num_objects[:4])
    assert not batches[1]['box_mask'][3].any() and (batches[1]['image'][3] == 0).all()
    assert batches[0]['masks'].shape == (4, 3, 32, 32)

    # Train: deterministic, resumable, flips move boxes with the pixels.
    c.data.augment.flip = True
    it = det_data.make_train_iterator(c.data, det, seed=0, global_batch_size=4)
    [next(it) for _ in range(2)]
    state = it.get_state()
    nxt = next(it)
    it2 = det_data.make_train_iterator(c.data, det, seed=0, global_batch_size=4)
    it2.set_state(state)
    again = next(it2)
    for k in nxt:
        np.testing.assert_array_equal(nxt[k], again[k])
    it3 = det_data.make_train_iterator(c.data, det, seed=0, global_batch_size=4, with_masks=True)
    for _ in range(4):
        b = next(it3)
        for i in range(4):
            for k in np.nonzero(b['box_mask'][i])[0]:
                ys, xs = np.nonzero(b['masks'][i, k])
                np.testing.assert_array_equal(
                    b['boxes'][i, k], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                )


@pytest.mark.slow
def test_real_mnist_det_statistics():
    from experiments.paths import MNIST10K_FOLDER

    digits = seg_data.load_mnist_digits(MNIST10K_FOLDER)
    p = det_data.DetParams()
    exs = [det_data.make_det_canvas(*digits['train'], seg_data._rng(0, 'train', i), p) for i in range(200)]
    for ex in exs[:20]:
        _check_example(ex, p)
    n = np.array([e['num_objects'] for e in exs])
    assert 3.0 < n.mean() < 5.0
