"""research.detection.roi_heads against torchvision's RoIHeads pieces (random inputs)."""

from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.detection import roi_heads as rh

torch = pytest.importorskip('torch')
tv_roi_heads = pytest.importorskip('torchvision.models.detection.roi_heads')
from torchvision.models.detection import _utils as det_utils  # noqa: E402
from torchvision.models.detection.faster_rcnn import TwoMLPHead as TvTwoMLPHead  # noqa: E402
from torchvision.ops import MultiScaleRoIAlign  # noqa: E402
from torchvision.ops.poolers import LevelMapper  # noqa: E402


def _random_boxes(rng, n, size=100.0, min_wh=2.0, max_wh=60.0):
    xy = rng.uniform(0, size - 10, (n, 2))
    wh = rng.uniform(min_wh, max_wh, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def test_two_mlp_head_matches_torchvision_flatten_order():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 4, 6)).astype(np.float32)  # torch NCHW: R, C, h, w
    tm = TvTwoMLPHead(6 * 3 * 4, 16).eval()
    head = rh.TwoMLPHead(representation_size=16)
    params = {
        'fc6': {
            'kernel': jnp.asarray(tm.fc6.weight.detach().numpy().T),
            'bias': jnp.asarray(tm.fc6.bias.detach().numpy()),
        },
        'fc7': {
            'kernel': jnp.asarray(tm.fc7.weight.detach().numpy().T),
            'bias': jnp.asarray(tm.fc7.bias.detach().numpy()),
        },
    }
    out = head.apply({'params': params}, jnp.asarray(x.transpose(0, 2, 3, 1)))
    ref = tm(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_predictor_shapes_and_names():
    p = rh.FastRCNNPredictor(num_classes=7)
    v = p.init(jax.random.PRNGKey(0), jnp.zeros((3, 32)))
    assert set(v['params']) == {'cls_score', 'bbox_pred'}
    cls, box = p.apply(v, jnp.ones((3, 32)))
    assert cls.shape == (3, 7) and box.shape == (3, 28)


def test_fastrcnn_loss_matches_torchvision():
    rng = np.random.default_rng(1)
    b, s, k = 2, 24, 5
    logits = rng.standard_normal((b, s, k)).astype(np.float32)
    reg = rng.standard_normal((b, s, 4 * k)).astype(np.float32) * 0.3
    labels = rng.integers(0, k, (b, s)).astype(np.int32)
    targets = (rng.standard_normal((b, s, 4)) * 0.2).astype(np.float32)
    valid = np.ones((b, s), bool)
    valid[0, 20:] = False
    valid[1, 15:] = False
    targets = np.where((labels > 0)[..., None], targets, 0).astype(np.float32)
    cl, bl = rh.fastrcnn_loss(
        jnp.asarray(logits), jnp.asarray(reg), jnp.asarray(labels), jnp.asarray(targets), jnp.asarray(valid)
    )
    t = lambda a, i: torch.from_numpy(a[i][valid[i]])  # noqa: E731
    rc, rb = tv_roi_heads.fastrcnn_loss(
        torch.cat([t(logits, 0), t(logits, 1)]),
        torch.cat([t(reg, 0), t(reg, 1)]),
        [t(labels, 0).long(), t(labels, 1).long()],
        [t(targets, 0), t(targets, 1)],
    )
    np.testing.assert_allclose(float(cl), rc.item(), rtol=1e-5)
    np.testing.assert_allclose(float(bl), rb.item(), rtol=1e-5)


def test_fastrcnn_loss_hand_checked():
    # One positive RoI of class 1 with a 0.1 error on dx (< beta=1/9: 0.5 * 0.01 * 9) and one background
    # RoI; CE of uniform logits over 2 classes = log 2 each.
    logits = jnp.zeros((2, 2))
    reg = jnp.zeros((2, 8)).at[0, 4].set(0.1)
    labels = jnp.array([1, 0])
    targets = jnp.zeros((2, 4))
    cl, bl = rh.fastrcnn_loss(logits, reg, labels, targets, jnp.array([True, True]))
    np.testing.assert_allclose(float(cl), np.log(2), rtol=1e-6)
    np.testing.assert_allclose(float(bl), 0.5 * 0.01 * 9 / 2, rtol=1e-5)
    cl0, bl0 = rh.fastrcnn_loss(logits, reg, labels, targets, jnp.array([False, False]))
    assert float(cl0) == 0.0 and float(bl0) == 0.0


def test_roi_detections_matches_postprocess_detections():
    rng = np.random.default_rng(2)
    r, k, hw = 60, 6, (90, 110)
    rois = _random_boxes(rng, r, 100.0)
    logits = (rng.standard_normal((r, k)) * 2.5).astype(np.float32)
    reg = (rng.standard_normal((r, 4 * k)) * 0.5).astype(np.float32)
    heads = tv_roi_heads.RoIHeads(
        None, None, None, 0.5, 0.5, 512, 0.25, (10.0, 10.0, 5.0, 5.0), 0.05, 0.5, 100
    )
    boxes, scores, labels = heads.postprocess_detections(
        torch.from_numpy(logits), torch.from_numpy(reg), [torch.from_numpy(rois)], [hw]
    )
    out = rh.roi_detections(
        jnp.asarray(logits),
        jnp.asarray(reg),
        jnp.asarray(rois),
        jnp.ones((r,), bool),
        hw,
        pre_nms_top_k=r * (k - 1),
    )
    n = int(out['valid'].sum())
    assert n == len(scores[0]) > 5
    np.testing.assert_allclose(np.asarray(out['boxes'][:n]), boxes[0].numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(out['scores'][:n]), scores[0].numpy(), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(out['labels'][:n]), labels[0].numpy())
    # padded RoIs never produce detections
    none = rh.roi_detections(
        jnp.asarray(logits), jnp.asarray(reg), jnp.asarray(rois), jnp.zeros((r,), bool), hw
    )
    assert not bool(none['valid'].any())


def test_sample_rois_labels_and_counts():
    rng = np.random.default_rng(3)
    gt = _random_boxes(rng, 4, 100.0, 20, 50)
    gt_valid = np.array([True, True, True, False])
    gt_labels = np.array([3, 1, 2, 0], np.int32)
    # proposals: jittered copies of the ground truth (positives) and random boxes (mostly negatives)
    jit = np.repeat(gt[:3], 10, 0) + rng.normal(0, 3, (30, 4)).astype(np.float32)
    props = np.concatenate([jit, _random_boxes(rng, 170, 100.0)], 0).astype(np.float32)
    pvalid = np.ones((200,), bool)
    pvalid[-20:] = False
    s = 64
    out = jax.jit(
        lambda key: rh.sample_rois(
            key,
            jnp.asarray(props),
            jnp.asarray(pvalid),
            jnp.asarray(gt),
            jnp.asarray(gt_labels),
            jnp.asarray(gt_valid),
            batch_size_per_image=s,
        )
    )(jax.random.PRNGKey(0))
    # torchvision's assignment of the same candidates (valid proposals + valid ground truth)
    cand = np.concatenate([props[pvalid], gt[gt_valid]], 0)
    matcher = det_utils.Matcher(0.5, 0.5, allow_low_quality_matches=False)
    from torchvision.ops import box_iou

    m = matcher(box_iou(torch.from_numpy(gt[gt_valid]), torch.from_numpy(cand))).numpy()
    tv_labels = np.where(m >= 0, gt_labels[gt_valid][np.maximum(m, 0)], 0)
    lookup = {tuple(np.round(b, 4)): lab for b, lab in zip(cand, tv_labels)}
    valid = np.asarray(out['valid'])
    labels = np.asarray(out['labels'])
    rois = np.asarray(out['rois'])
    num_pos = int((tv_labels > 0).sum())
    assert valid.sum() == s  # enough candidates to fill the minibatch
    assert (labels > 0).sum() == min(num_pos, s // 4)
    npos = int((labels > 0).sum())
    assert (labels[:npos] > 0).all() and (labels[npos:] == 0).all()  # positives first
    for b, lab, v in zip(rois, labels, valid):
        assert lookup[tuple(np.round(b, 4))] == lab
    # targets decode back onto the matched ground truth
    from research.detection.boxes import ROI_HEAD_WEIGHTS, decode_boxes

    dec = np.asarray(decode_boxes(out['box_targets'][:npos], out['rois'][:npos], ROI_HEAD_WEIGHTS))
    np.testing.assert_allclose(dec, gt[np.asarray(out['matched_gt'][:npos])], atol=1e-3)


def test_sample_rois_no_ground_truth_all_background_and_padding():
    props = _random_boxes(np.random.default_rng(4), 10, 100.0)
    out = rh.sample_rois(
        jax.random.PRNGKey(1),
        jnp.asarray(props),
        jnp.ones((10,), bool),
        jnp.zeros((2, 4)),
        jnp.zeros((2,), jnp.int32),
        jnp.zeros((2,), bool),
        batch_size_per_image=16,
    )
    assert out['rois'].shape == (16, 4)
    assert int(out['valid'].sum()) == 10 and int((out['labels'] > 0).sum()) == 0
    assert np.isfinite(np.asarray(out['box_targets'])).all()


def test_level_mapper_and_multiscale_roi_align_match_torchvision():
    rng = np.random.default_rng(5)
    img = (256, 384)
    boxes = _random_boxes(rng, 30, 250.0, 2, 250)
    boxes = np.concatenate(
        [boxes, np.array([[0, 0, 384, 256], [3, 4, 5, 7], [10, 10, 122, 122]], np.float32)]
    )
    ref_lvl = LevelMapper(2, 5)([torch.from_numpy(boxes)]).numpy()
    np.testing.assert_array_equal(np.asarray(rh.map_levels(jnp.asarray(boxes), 2, 5)), ref_lvl)
    assert len(set(ref_lvl.tolist())) >= 3
    feats = [rng.standard_normal((2, 4, img[0] // s, img[1] // s)).astype(np.float32) for s in (4, 8, 16, 32)]
    pool = MultiScaleRoIAlign(['0', '1', '2', '3'], 7, 2)
    tb = [torch.from_numpy(boxes), torch.from_numpy(boxes[::-1].copy())]
    ref = pool(
        OrderedDict((str(i), torch.from_numpy(f)) for i, f in enumerate(feats)), tb, [img, img]
    ).numpy()
    out = rh.multiscale_roi_align(
        [jnp.asarray(f.transpose(0, 2, 3, 1)) for f in feats],
        jnp.asarray(np.stack([boxes, boxes[::-1]])),
        img,
    )
    out = np.asarray(out).reshape(-1, 7, 7, 4).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
