"""SSD (research.models.ssd): parameter count, torchvision parity (head outputs, default boxes,
post-processing, loss), the SSD matcher, the detector contract and a tiny mnist_det overfit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.models.ssd import ssd_match

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

from research.interop import tv_detection as tvd  # noqa: E402
from parity_helper import one_torch_thread  # noqa: E402
from tests.test_retinanet import mnist_det_batch, overfit  # noqa: E402


def test_param_counts():
    v = models.abstract_variables(models.create('ssd300_vgg16'), (1, 300, 300, 3))
    assert models.count_params(v) == 35_641_826  # = torchvision ssd300_vgg16 (91 classes)
    v = models.abstract_variables(models.create('ssd_mnist'), (1, 128, 128, 1))
    assert models.count_params(v) == 1_431_616


@pytest.fixture(scope='module')
def tm():
    with one_torch_thread():
        return tvd.torch_ssd(0)


def test_head_parity_with_torchvision(tm):
    with one_torch_thread():
        err = tvd.ssd_parity(tm, input_size=(300, 300))  # the extra layers need >= ~265 px
    assert err['cls_logits'] < 1e-4 and err['bbox_regression'] < 1e-4, err
    # the input-dependent part (difference of two real images' outputs), issue 27
    assert err['cls_logits_input'] < 1e-4 and err['bbox_regression_input'] < 1e-4, err
    assert err['anchors'] < 1e-6


def test_postprocess_parity_with_torchvision(tm):
    r = tvd.ssd_postprocess_parity(tm, input_size=(300, 300))
    assert r['num_flax'] == r['num_torch'] == 200
    assert r['labels_equal'] and r['score_err'] < 1e-5 and r['box_err'] < 1e-3, r


def test_ssd_match_forces_best_default_box():
    iou = jnp.asarray([[0.3, 0.2, 0.6, 0.1], [0.1, 0.45, 0.2, 0.0], [0.9, 0.9, 0.9, 0.9]])
    valid = jnp.asarray([True, True, False])
    # Box 2 >= 0.5 with gt 0; gt 0's best is box 2, gt 1's best box 1 (IoU 0.45 < 0.5, forced); gt 2 is padding.
    np.testing.assert_array_equal(ssd_match(iou, 0.5, valid), [-1, 1, 0, -1])


def test_loss_matches_torchvision(tm):
    from torchvision.models.detection.image_list import ImageList

    x = torch.zeros(2, 3, 300, 300)
    with torch.no_grad():
        feats = tm.backbone(x)
        feats = list(feats.values()) if isinstance(feats, dict) else feats
    anchors = tm.anchor_generator(ImageList(x, [(300, 300)] * 2), feats)
    n = anchors[0].shape[0]
    g = torch.Generator().manual_seed(0)
    head = {
        'cls_logits': 2 * torch.randn(2, n, 91, generator=g),
        'bbox_regression': torch.randn(2, n, 4, generator=g),
    }
    boxes = np.array(
        [[[10, 12, 60, 70], [80, 20, 250, 210], [0, 0, 0, 0]], [[30, 30, 34, 36], [0] * 4, [0] * 4]],
        np.float32,
    )
    labels = np.array([[3, 17, 0], [90, 0, 0]], np.int32)
    t = {'boxes': boxes, 'labels': labels, 'box_mask': labels > 0}
    tt = [
        {
            'boxes': torch.from_numpy(boxes[i][labels[i] > 0]),
            'labels': torch.from_numpy(labels[i][labels[i] > 0]).long(),
        }
        for i in range(2)
    ]
    matched = [tm.proposal_matcher(torchvision.ops.box_iou(d['boxes'], a)) for d, a in zip(tt, anchors)]
    ref = tm.compute_loss(tt, head, anchors, matched)
    model = models.create('ssd300_vgg16')
    out = {
        'cls_logits': jnp.asarray(head['cls_logits'].numpy()),
        'box_regression': jnp.asarray(head['bbox_regression'].numpy()),
        'anchors': anchors[0].numpy(),
    }
    got = model.loss(out, t)
    np.testing.assert_allclose(float(got['loss_classifier']), float(ref['classification']), rtol=1e-5)
    np.testing.assert_allclose(float(got['loss_box_reg']), float(ref['bbox_regression']), rtol=1e-5)


def test_detector_contract_cpu_variant():
    model = models.create('ssd_mnist')
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 64, 1)), jnp.float32)
    t = {
        'boxes': np.array([[[10, 10, 40, 60]], [[0, 0, 0, 0]]], np.float32),
        'labels': np.array([[3], [0]], np.int32),
        'box_mask': np.array([[True], [False]]),
    }
    k = jax.random.key(0)
    v = jax.jit(lambda x, t: model.init({'params': k, 'sample': k, 'dropout': k}, x, t, train=True))(x, t)
    assert jax.tree.structure(v) == jax.tree.structure(jax.eval_shape(lambda: model.init(k, x)))
    losses = jax.jit(lambda v, x, t: model.apply(v, x, t, train=True))(v, x, t)
    assert set(losses) == {'loss_classifier', 'loss_box_reg'} and all(
        np.isfinite(float(l)) for l in losses.values()
    )
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
    assert out['boxes'].shape == (2, 100, 4) and out['labels'].dtype == jnp.int32
    assert (np.asarray(out['labels'])[np.asarray(out['valid'])] >= 1).all()


@pytest.mark.slow
def test_overfit_mnist_det():
    # Measured (2 CPU cores shared with other jobs): loss 34.1 -> 0.014, mAP@0.5 1.0 after 150 steps, 126 s.
    first, last, m_ap, secs = overfit(models.create('ssd_mnist'), mnist_det_batch(8), 150)
    print(f'ssd overfit: loss {first:.3f} -> {last:.3f}, mAP {m_ap:.3f}, {secs:.0f} s')
    assert last < 0.05 * first and m_ap > 0.7
