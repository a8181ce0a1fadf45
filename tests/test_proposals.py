"""research.detection.proposals: sliding windows, selective search (OpenCV-contrib), caching, recall."""

import sys

import numpy as np
import pytest

from research.config import base_config
from research.detection import data as det_data
from research.detection import proposals as P


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
    from experiments.paths import MNIST10K_FOLDER

    c = base_config()
    c.data.data_dir = str(tmp_path_factory.mktemp('tfds'))
    c.data.path = MNIST10K_FOLDER
    return det_data.get_det_builder(c.data, dict(num_train=8, num_test=8))


def test_sliding_window_exact_boxes():
    b = P.sliding_window_boxes((64, 96), sizes=(32,), aspect_ratios=(1.0,), stride_fraction=0.5)
    ys, xs = [0, 16, 32], [0, 16, 32, 48, 64]
    want = [[x, y, x + 32, y + 32] for y in ys for x in xs]
    np.testing.assert_array_equal(b, np.asarray(want, np.float32))
    # A stride that misses the far edge gets one more window flush with it: 40 px at stride 20 on 64.
    b = P.sliding_window_boxes((64, 64), sizes=(40,), aspect_ratios=(1.0,), stride_fraction=0.5)
    np.testing.assert_array_equal(np.unique(b[:, 0]), [0, 20, 24])
    assert len(b) == 9 and b.max() == 64
    # Aspect ratio = height / width at constant sqrt(area); order size, ratio, row, column.
    b = P.sliding_window_boxes((128, 128), sizes=(32, 64), aspect_ratios=(1.0, 2.0), stride_fraction=0.5)
    w2, h2 = 32 / np.sqrt(2), 32 * np.sqrt(2)
    # 32 x 32: 7 x 7; 22.6 x 45.3 (ratio 2): rows 0, 22.6, .., 67.9 + 82.7, columns 0, 11.3, .., 101.8 +
    # 105.4 -> 5 x 11; 64 x 64: 3 x 3; 45.3 x 90.5: rows 0 + 37.5, columns 4 + 1 -> 2 x 5.
    assert len(b) == 7 * 7 + 5 * 11 + 3 * 3 + 2 * 5
    np.testing.assert_allclose(b[49], [0, 0, w2, h2], rtol=1e-6)
    assert (b >= 0).all() and (b[:, 2] <= 128).all() and (b[:, 3] <= 128 + 1e-4).all()
    assert len(P.sliding_window_boxes((128, 128))) == 246  # the defaults fit max_proposals=300


def test_proposal_recall_hand_case():
    gt = np.array([[[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]]], np.float32)
    gv = np.array([[True, True, False]])
    props = np.array([[[0, 0, 10, 12], [20, 20, 26, 30], [50, 50, 60, 60]]], np.float32)
    # IoUs with the best proposal: 100 / 120 = 0.833, 60 / 100 = 0.6; the invalid third never counts.
    assert P.proposal_recall(props, np.array([[True, True, True]]), gt, gv, 0.5) == 1.0
    assert P.proposal_recall(props, np.array([[True, True, True]]), gt, gv, 0.7) == 0.5
    assert P.proposal_recall(props, np.array([[False, True, True]]), gt, gv, 0.5) == 0.5


def test_get_proposals_sliding_window_and_cache(builder, monkeypatch):
    boxes, valid = P.get_proposals(builder, 'test', method='sliding_window', max_proposals=300)
    grid = P.sliding_window_boxes((128, 128))
    assert boxes.shape == (8, 300, 4) and boxes.dtype == np.float32 and valid.shape == (8, 300)
    np.testing.assert_array_equal(valid.sum(1), len(grid))
    np.testing.assert_array_equal(boxes[3, : len(grid)], grid)
    assert (boxes[:, len(grid) :] == 0).all()
    files = list((builder.data_path / 'proposals').glob('test_sliding_window_*.npz'))
    assert len(files) == 1
    # Relaunch: read from the cache, not recomputed.
    monkeypatch.setattr(P, 'sliding_window_boxes', lambda *a, **k: pytest.fail('recomputed'))
    again, v2 = P.get_proposals(builder, 'test', method='sliding_window', max_proposals=300)
    np.testing.assert_array_equal(again, boxes)
    np.testing.assert_array_equal(v2, valid)
    monkeypatch.undo()
    # Other settings -> another file.
    b3, _ = P.get_proposals(builder, 'test', method='sliding_window', max_proposals=40, sizes=(64,))
    assert b3.shape == (8, 40, 4) and len(list((builder.data_path / 'proposals').glob('test_*.npz'))) == 2
    with pytest.raises(ValueError, match='max_proposals'):
        P.get_proposals(builder, 'test', method='sliding_window', max_proposals=10)
    with pytest.raises(ValueError, match='unknown sliding_window settings'):
        P.get_proposals(builder, 'test', method='sliding_window', scale=2)
    with pytest.raises(ValueError, match='unknown proposal method'):
        P.get_proposals(builder, 'test', method='edge_boxes')


def test_selective_search_without_opencv_names_the_package(builder, monkeypatch):
    monkeypatch.setitem(sys.modules, 'cv2', None)  # import cv2 -> ImportError
    assert not P.has_selective_search()
    with pytest.raises(ImportError, match='opencv-contrib-python-headless'):
        P.get_proposals(builder, 'test', method='selective_search')
    assert P.default_method() == 'sliding_window'


def test_selective_search_on_canvases(builder):
    if not P.has_selective_search():
        pytest.skip(f'opencv-contrib is not importable (pip install {P.OPENCV_PIP})')
    boxes, valid = P.get_proposals(
        builder, 'test', method='selective_search', max_proposals=100, num_workers=1
    )
    split = det_data.get_split(builder, 'test')
    gv = np.arange(split.boxes.shape[1])[None] < split.num_objects[:, None]
    assert boxes.shape == (8, 100, 4) and valid.any(1).all()
    b = boxes[valid]
    assert (b >= 0).all() and (b[:, 2] <= 128).all() and (b[:, 3] <= 128).all()
    assert ((b[:, 2] - b[:, 0]) >= 4).all() and ((b[:, 3] - b[:, 1]) >= 4).all()  # min_size
    assert len(np.unique(boxes[0][valid[0]], axis=0)) == valid[0].sum()  # no duplicates
    # Measured: 0.973 / 0.939 on 200 test canvases (~105 proposals per canvas); 8 canvases here.
    assert P.proposal_recall(boxes, valid, split.boxes, gv, 0.5) >= 0.85
    assert P.proposal_recall(boxes, valid, split.boxes, gv, 0.7) >= 0.7
    # Deterministic, and the same as one image at a time.
    one = P.selective_search(split.images[2], max_proposals=100)
    np.testing.assert_array_equal(one, boxes[2][valid[2]])
