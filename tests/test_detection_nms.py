"""research.detection.nms: static-shape NMS equals torchvision.ops.nms / batched_nms."""

import jax
import numpy as np
import pytest

from research.detection.nms import batched_nms, nms, nms_mask


def _scene(seed, n=300):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 120, (n, 2))
    wh = rng.uniform(5, 40, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    return boxes, rng.uniform(size=n).astype(np.float32), rng.integers(0, 4, n)


def test_hand_case():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 9.5]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    idx, ok = nms(boxes, scores, 0.5, 5)
    # 3 (0.95) suppresses 0 (IoU 0.95) and 1 (IoU 0.78); 2 is disjoint.
    np.testing.assert_array_equal(idx, [3, 2, -1, -1, -1])
    np.testing.assert_array_equal(ok, [True, True, False, False, False])
    # Padded / invalid boxes never suppress and are never kept.
    idx, ok = nms(boxes, scores, 0.5, 3, valid=np.array([True, True, True, False]))
    np.testing.assert_array_equal(idx, [0, 2, -1])
    # Class-aware: box 1 has its own class and survives.
    idx, ok = batched_nms(boxes, scores, np.array([0, 1, 0, 0]), 0.5, 4)
    np.testing.assert_array_equal(idx[ok], [3, 1, 2])
    # Score threshold and a max_output smaller than the kept count.
    idx, ok = nms(boxes, scores, 0.5, 1, score_threshold=0.75)
    np.testing.assert_array_equal(idx, [3])


@pytest.mark.parametrize('thr', [0.3, 0.5, 0.7])
def test_equals_torchvision_nms(thr):
    torch = pytest.importorskip('torch')
    ops = pytest.importorskip('torchvision.ops')
    f = jax.jit(nms, static_argnums=(2, 3))
    for seed in range(3):
        boxes, scores, _ = _scene(seed)
        want = ops.nms(torch.tensor(boxes), torch.tensor(scores), thr).numpy()
        idx, ok = f(boxes, scores, thr, 400)
        np.testing.assert_array_equal(np.asarray(idx)[np.asarray(ok)], want)
        assert int(ok.sum()) == len(want) and (np.asarray(idx)[~np.asarray(ok)] == -1).all()
        # Truncated output: the top max_output of torchvision's list.
        idx, ok = f(boxes, scores, thr, 20)
        np.testing.assert_array_equal(idx, want[:20])
        np.testing.assert_array_equal(nms_mask(boxes, scores, thr), np.isin(np.arange(len(boxes)), want))


def test_equals_torchvision_batched_nms_and_vmaps():
    torch = pytest.importorskip('torch')
    ops = pytest.importorskip('torchvision.ops')
    scenes = [_scene(10 + s) for s in range(3)]
    got_idx, got_ok = jax.vmap(lambda b, s, c: batched_nms(b, s, c, 0.5, 300))(
        *(np.stack([sc[i] for sc in scenes]) for i in range(3))
    )
    for (boxes, scores, cls), idx, ok in zip(scenes, np.asarray(got_idx), np.asarray(got_ok)):
        want = ops.batched_nms(torch.tensor(boxes), torch.tensor(scores), torch.tensor(cls), 0.5).numpy()
        np.testing.assert_array_equal(idx[ok], want)
        plain = ops.nms(torch.tensor(boxes), torch.tensor(scores), 0.5).numpy()
        assert len(want) > len(plain)  # class-awareness matters in this scene
