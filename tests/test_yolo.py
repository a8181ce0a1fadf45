"""YOLO v1 (research.models.yolo): the paper's network size, the Eq. 3 loss on a hand-computed case, decoding,
the detector contract and a tiny mnist_det overfit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.models.yolo import yolo_decode, yolo_loss


def test_paper_network_shape_and_params():
    m = models.create('yolov1')
    v = models.abstract_variables(m, (1, 448, 448, 3))
    assert models.count_params(v) == 271_703_550  # 24 convs (with biases) + FC 4096 + FC 1470
    assert sum(1 for k in v['params'] if k.startswith('conv')) == 24
    out = jax.eval_shape(
        lambda v, x: m.apply(v, x, method='predict'), v, jax.ShapeDtypeStruct((1, 448, 448, 3), jnp.float32)
    )
    assert out.shape == (1, 7, 7, 30)  # S = 7, B = 2, C = 20
    m = models.create('yolov1', grid=14, boxes_per_cell=3, num_classes=81, width_mult=0.25, fc_width=64)
    v = models.abstract_variables(m, (1, 448, 448, 3))
    assert v['params']['conv1']['kernel'].shape == (7, 7, 3, 16) and v['params']['fc2']['kernel'].shape == (
        64,
        14 * 14 * 95,
    )


def _hand_case():
    """64x64 image, S = 2 (32 px cells), B = 2, C = 2; one object [8, 8, 40, 24] of class 2 in cell (0, 0)."""
    out = np.zeros((2, 2, 12), np.float32)
    out[0, 0, 0:5] = [0.5, 0.5, 0.5, 0.5, 0.8]  # box [8, 8, 24, 24]: IoU 0.5 with the object
    out[0, 0, 5:10] = [0.75, 0.5, 0.7, 0.5, 0.3]  # box [8.32, 8, 39.68, 24]: IoU 0.98 -> responsible
    out[0, 0, 10:] = [0.2, 0.6]
    out[1, 1, 0:5] = [0.5, 0.5, 0.5, 0.5, 0.4]  # box [40, 40, 56, 56], no object
    out[1, 1, 10:] = [0.5, 0.5]
    boxes = np.array([[8, 8, 40, 24], [0, 0, 0, 0]], np.float32)
    return jnp.asarray(out), boxes, np.array([2, 0], np.int32), np.array([True, False])


@pytest.mark.parametrize('rescore', [True, False])
def test_loss_hand_checked(rescore):
    out, boxes, labels, valid = _hand_case()
    got = yolo_loss(out, boxes, labels, valid, image_size=(64, 64), boxes_per_cell=2, rescore=rescore)
    # Targets of the responsible predictor: x = 24 / 32 - 0 = 0.75, y = 16 / 32 = 0.5, sqrt(32 / 64), sqrt(16 / 64).
    coord = 5.0 * ((0.75 - 0.75) ** 2 + (0.5 - 0.5) ** 2 + (0.7 - np.sqrt(0.5)) ** 2 + (0.5 - 0.5) ** 2)
    obj = (0.3 - (0.98 if rescore else 1.0)) ** 2  # IoU = 501.76 / 512
    noobj = 0.5 * (0.8**2 + 0.4**2)  # the other predictor of the object's cell + the empty cell's
    cls = (0.2 - 0.0) ** 2 + (0.6 - 1.0) ** 2  # only the object's cell
    np.testing.assert_allclose(float(got['loss_coord']), coord, rtol=1e-5)
    np.testing.assert_allclose(float(got['loss_obj']), obj, rtol=1e-5)
    np.testing.assert_allclose(float(got['loss_noobj']), noobj, rtol=1e-5)
    np.testing.assert_allclose(float(got['loss_class']), cls, rtol=1e-5)


def test_decode_class_specific_confidence():
    out, *_ = _hand_case()
    det = yolo_decode(out, boxes_per_cell=2, image_size=(64, 64), score_thresh=0.01, nms_thresh=0.5)
    v = np.asarray(det['valid'])
    scores = np.asarray(det['scores'])[v]
    # conf x Pr(class | object): 0.8 x 0.6, 0.4 x 0.5 (two classes), 0.3 x 0.6, 0.8 x 0.2, 0.3 x 0.2; the two
    # predictors of cell (0, 0) overlap by IoU 0.495 < 0.5, so NMS keeps both.
    np.testing.assert_allclose(scores, [0.48, 0.2, 0.2, 0.18, 0.16, 0.06], rtol=1e-5)
    assert np.asarray(det['labels'])[0] == 2
    np.testing.assert_allclose(np.asarray(det['boxes'])[0], [8, 8, 24, 24], atol=1e-4)


def test_detector_contract_cpu_variant():
    model = models.create('yolov1_mnist')
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 128, 128, 1)), jnp.float32)
    t = {
        'boxes': np.array([[[10, 10, 40, 60]], [[0, 0, 0, 0]]], np.float32),
        'labels': np.array([[3], [0]], np.int32),
        'box_mask': np.array([[True], [False]]),
    }
    k = jax.random.key(0)
    v = jax.jit(lambda x, t: model.init({'params': k, 'sample': k, 'dropout': k}, x, t, train=True))(x, t)
    assert models.count_params(v) == 1_102_368
    losses = jax.jit(lambda v, x, t: model.apply(v, x, t, train=True, rngs={'dropout': k}))(v, x, t)
    assert set(losses) == {'loss_coord', 'loss_obj', 'loss_noobj', 'loss_class'}
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
    assert out['boxes'].shape == (2, 50, 4) and out['labels'].dtype == jnp.int32


@pytest.mark.slow
def test_overfit_mnist_det():
    from tests.test_retinanet import mnist_det_batch, overfit

    # Measured (2 CPU cores shared with other jobs): loss 23.5 -> 0.003, mAP@0.5 1.0 after 150 steps,
    # 42-69 s depending on the load.
    first, last, m_ap, secs = overfit(models.create('yolov1_mnist'), mnist_det_batch(8), 150)
    print(f'yolo overfit: loss {first:.3f} -> {last:.3f}, mAP {m_ap:.3f}, {secs:.0f} s')
    assert last < 0.01 * first and m_ap > 0.7


def test_conv_head_ablation():
    """head='conv' (no fully connected layers, per-cell weights shared): same S x S x (5B + C) output, head
    parameters a 3x3 conv to fc_width and a 1x1 conv to 5B + C; a stack not ending at S x S is refused."""
    x = jnp.zeros((1, 128, 128, 1), jnp.float32)
    fc = models.abstract_variables(models.create('yolov1_mnist', batch_norm=True), x.shape)
    conv_m = models.create('yolov1_mnist', batch_norm=True, head='conv', fc_width=256)
    v = models.abstract_variables(conv_m, x.shape)
    assert 'fc1' not in v['params'] and 'fc1' in fc['params']
    stack = models.count_params(fc['params']) - sum(
        models.count_params(fc['params'][k]) for k in ('fc1', 'fc2')
    )  # the conv stack alone (BN scale/bias, no conv biases)
    head = 3 * 3 * 32 * 256 + 2 * 256 + 256 * 20 + 20  # head1 (BN instead of bias), head2 with bias
    assert models.count_params(v['params']) == stack + head
    out = jax.eval_shape(lambda v, x: conv_m.apply(v, x, method='predict'), v, x)
    assert out.shape == (1, 8, 8, 20)
    with pytest.raises(ValueError, match='8x8 grid, got 4x4'):
        models.abstract_variables(conv_m, (1, 64, 64, 1))
    with pytest.raises(ValueError, match="head must be 'fc' or 'conv', got 'mlp'"):
        models.abstract_variables(models.create('yolov1_mnist', head='mlp'), x.shape)
