"""research.detection.boxes: formats, IoU, Faster R-CNN deltas (vs torchvision), clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.detection import boxes as B


def _random_boxes(rng, n, lo=0.0, hi=100.0, min_size=1.0, max_size=50.0):
    xy = rng.uniform(lo, hi, (n, 2))
    wh = rng.uniform(min_size, max_size, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def test_format_round_trip_and_hand_values():
    b = np.array([[10.0, 20.0, 30.0, 60.0]], np.float32)
    np.testing.assert_allclose(B.xyxy_to_cxcywh(b), [[20.0, 40.0, 20.0, 40.0]])
    np.testing.assert_allclose(B.cxcywh_to_xyxy(B.xyxy_to_cxcywh(b)), b)
    r = _random_boxes(np.random.default_rng(0), 50).reshape(5, 10, 4)
    np.testing.assert_allclose(B.cxcywh_to_xyxy(B.xyxy_to_cxcywh(r)), r, rtol=1e-6, atol=1e-4)
    assert float(B.box_area(b)[0]) == 800.0


def test_iou_hand_cases():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 5]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [5, 5, 5, 5]], np.float32)
    iou = np.asarray(B.box_iou(a, b))
    np.testing.assert_allclose(np.diag(iou), [1.0, 50 / 150, 0.0, 0.0])  # empty pair: 0, not NaN
    assert iou.shape == (4, 4) and np.isfinite(iou).all()
    # Contained box: IoU = inner / outer area.
    assert float(B.box_iou(np.array([[0, 0, 10, 10.0]]), np.array([[2, 2, 4, 7.0]]))[0, 0]) == pytest.approx(
        0.1
    )


def test_iou_matches_torchvision_and_batches():
    torch = pytest.importorskip('torch')
    ops = pytest.importorskip('torchvision.ops')
    rng = np.random.default_rng(1)
    a, b = _random_boxes(rng, 3 * 40).reshape(3, 40, 4), _random_boxes(rng, 3 * 30).reshape(3, 30, 4)
    got = np.asarray(jax.jit(B.box_iou)(a, b))
    assert got.shape == (3, 40, 30)
    for i in range(3):
        want = ops.box_iou(torch.tensor(a[i]), torch.tensor(b[i])).numpy()
        np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-7)
    assert (got > 0).mean() > 0.05  # the random boxes do overlap


@pytest.mark.parametrize('weights', [B.RPN_WEIGHTS, B.ROI_HEAD_WEIGHTS])
def test_encode_decode_round_trip(weights):
    rng = np.random.default_rng(2)
    anchors, gt = _random_boxes(rng, 200), _random_boxes(rng, 200, max_size=80)
    deltas = B.encode_boxes(gt, anchors, weights)
    np.testing.assert_allclose(B.decode_boxes(deltas, anchors, weights), gt, rtol=1e-5, atol=1e-3)
    # A box onto itself is the zero delta.
    np.testing.assert_allclose(B.encode_boxes(anchors, anchors, weights), 0.0, atol=1e-6)


@pytest.mark.parametrize('weights', [B.RPN_WEIGHTS, B.ROI_HEAD_WEIGHTS])
def test_encode_decode_match_torchvision_box_coder(weights):
    torch = pytest.importorskip('torch')
    box_coder = pytest.importorskip('torchvision.models.detection._utils').BoxCoder(weights)
    rng = np.random.default_rng(3)
    anchors, gt = _random_boxes(rng, 300), _random_boxes(rng, 300, max_size=80)
    want = box_coder.encode_single(torch.tensor(gt), torch.tensor(anchors)).numpy()
    np.testing.assert_allclose(B.encode_boxes(gt, anchors, weights), want, rtol=1e-5, atol=1e-5)
    # Random deltas, some large enough to hit the log(1000/16) clamp.
    deltas = rng.normal(0, 2, (300, 4)).astype(np.float32) * np.asarray(weights, np.float32)
    deltas[:10, 2:] = 30.0 * np.asarray(weights[2:], np.float32)
    want = box_coder.decode_single(torch.tensor(deltas), torch.tensor(anchors)).numpy()
    got = np.asarray(jax.jit(lambda d, a: B.decode_boxes(d, a, weights))(deltas, anchors))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
    w = got[:10, 2] - got[:10, 0]
    np.testing.assert_allclose(w, (anchors[:10, 2] - anchors[:10, 0]) * 1000 / 16, rtol=1e-5)


def test_clip_and_min_size():
    b = jnp.array([[-5.0, -1.0, 50.0, 20.0], [10.0, 10.0, 12.0, 40.0]])
    np.testing.assert_array_equal(B.clip_boxes(b, (30, 40)), [[0, 0, 40, 20], [10, 10, 12, 30]])
    # Per-image sizes broadcast over the leading dims.
    bb = jnp.stack([b, b])
    sizes = jnp.array([[30.0, 40.0], [100.0, 11.0]])
    got = B.clip_boxes(bb, (sizes[:, 0, None], sizes[:, 1, None]))
    np.testing.assert_array_equal(got[1], [[0, 0, 11, 20], [10, 10, 11, 40]])
    np.testing.assert_array_equal(B.min_size_mask(b, 3.0), [True, False])
