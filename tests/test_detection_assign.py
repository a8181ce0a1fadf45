"""research.detection.assign: Matcher parity with torchvision, RPN / RoI targets, balanced sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.detection import assign as S
from research.detection.boxes import ROI_HEAD_WEIGHTS, box_iou, encode_boxes


def test_match_hand_case():
    # 2 ground truths x 5 anchors.
    q = np.array([[0.8, 0.5, 0.1, 0.2, 0.0], [0.1, 0.6, 0.25, 0.1, 0.0]], np.float32)
    m = S.match(q, 0.7, 0.3)
    np.testing.assert_array_equal(m, [0, -2, -1, -1, -1])
    # Low-quality matches: gt 1's best anchor is 1 (0.6) -> matched to its own best gt (1).
    m = S.match(q, 0.7, 0.3, allow_low_quality_matches=True)
    np.testing.assert_array_equal(m, [0, 1, -1, -1, -1])
    # Padding gt 0 out: anchor 0's best valid IoU is 0.1 (bg); gt 1 still takes anchor 1.
    m = S.match(q, 0.7, 0.3, True, gt_valid=np.array([False, True]))
    np.testing.assert_array_equal(m, [-1, 1, -1, -1, -1])
    # No valid ground truth: everything is background.
    m = S.match(q, 0.7, 0.3, True, gt_valid=np.array([False, False]))
    np.testing.assert_array_equal(m, [-1] * 5)


@pytest.mark.parametrize('thresholds', [(0.7, 0.3, True), (0.5, 0.5, False), (0.6, 0.4, False)])
def test_match_equals_torchvision_matcher(thresholds):
    torch = pytest.importorskip('torch')
    Matcher = pytest.importorskip('torchvision.models.detection._utils').Matcher
    rng = np.random.default_rng(0)
    for trial in range(5):
        m_gt, n = int(rng.integers(1, 8)), 400
        xy = rng.uniform(0, 100, (n + m_gt, 2))
        wh = rng.uniform(10, 60, (n + m_gt, 2))
        b = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        gt, anchors = b[:m_gt], b[m_gt:]
        q = np.asarray(box_iou(gt, anchors))
        want = Matcher(*thresholds)(torch.tensor(q)).numpy()
        # Padded to 8 ground truths with junk rows that the mask removes.
        qp = np.concatenate([q, rng.uniform(size=(8 - m_gt, n)).astype(np.float32)])
        valid = np.arange(8) < m_gt
        got = jax.jit(lambda q, v: S.match(q, *thresholds, gt_valid=v))(qp, valid)
        np.testing.assert_array_equal(got, want)


def test_assign_anchors_labels_and_targets():
    anchors = np.array(
        [[0, 0, 10, 10], [0, 0, 10, 12], [50, 50, 60, 60], [0, 0, 20, 20], [30, 0, 40, 10]], np.float32
    )
    gt = np.array([[0, 0, 10, 10], [28, 0, 38, 10], [0, 0, 0, 0]], np.float32)  # last: padding
    out = S.assign_anchors(anchors, gt, np.array([True, True, False]))
    # IoUs with gt 0: 1, 0.833, 0, 0.25, 0; with gt 1: 0, 0, 0, 0, 8/12 = 0.667 (its best -> positive).
    np.testing.assert_array_equal(out['labels'], [1, 1, 0, 0, 1])
    np.testing.assert_array_equal(out['matches'], [0, 0, -1, -1, 1])
    want = np.asarray(encode_boxes(gt[[0, 0, 1]], anchors[[0, 1, 4]]))
    np.testing.assert_allclose(np.asarray(out['box_targets'])[[0, 1, 4]], want, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out['box_targets'])[[2, 3]], 0.0)
    # RoI-head version: class labels, 0.5 threshold, (10, 10, 5, 5) weights, no low-quality matches.
    roi = S.assign_proposals(anchors, gt, np.array([3, 7, 0]), np.array([True, True, False]))
    np.testing.assert_array_equal(roi['labels'], [3, 3, 0, 0, 7])
    np.testing.assert_allclose(
        roi['box_targets'][4], encode_boxes(gt[1], anchors[4], ROI_HEAD_WEIGHTS), atol=1e-6
    )
    # vmap over a batch of images.
    batch = jax.vmap(S.assign_anchors, in_axes=(None, 0, 0))(
        anchors, jnp.stack([gt, gt[::-1]]), jnp.array([[True, True, False], [False, True, True]])
    )
    assert batch['labels'].shape == (2, 5)
    np.testing.assert_array_equal(batch['labels'][0], out['labels'])


def test_sample_balanced_counts_and_determinism():
    labels = jnp.asarray(np.r_[np.ones(30), np.zeros(1000), -np.ones(50)].astype(np.int32))
    f = jax.jit(S.sample_balanced, static_argnums=(2, 3))
    pos, neg = f(jax.random.key(0), labels, 256, 0.5)
    assert int(pos.sum()) == 30 and int(neg.sum()) == 226  # few positives: negatives fill the batch
    assert not (pos & (labels != 1)).any() and not (neg & (labels != 0)).any()
    pos2, neg2 = S.sample_balanced(jax.random.key(0), labels, 256, 0.5)
    np.testing.assert_array_equal(pos, pos2)
    np.testing.assert_array_equal(neg, neg2)
    _, neg3 = S.sample_balanced(jax.random.key(1), labels, 256, 0.5)
    assert not np.array_equal(neg, neg3)
    many = jnp.asarray(np.r_[np.full(400, 2), np.zeros(1000)].astype(np.int32))  # class ids count as positive
    pos, neg = S.sample_balanced(jax.random.key(2), many, 512, 0.25)
    assert int(pos.sum()) == 128 and int(neg.sum()) == 384
    # Uniform draws: each negative is picked with probability ~226 / 1000.
    freq = np.mean(
        [
            np.asarray(S.sample_balanced(k, labels, 256, 0.5)[1])[30:1030]
            for k in jax.random.split(jax.random.key(3), 40)
        ],
        0,
    )
    assert abs(freq.mean() - 0.226) < 1e-6 and freq.std() < 0.1
