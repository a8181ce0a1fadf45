"""research.detection.{losses,fpn,postprocess} against torch / torchvision and hand-checked cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.detection.fpn import FeaturePyramidNetwork
from research.detection.losses import hard_negative_mask, sigmoid_focal_loss, smooth_l1, softmax_cross_entropy
from research.detection.postprocess import select_detections

torch = pytest.importorskip('torch')
tv_ops = pytest.importorskip('torchvision.ops')


def test_smooth_l1_matches_torch():
    x = np.linspace(-3, 3, 61).astype(np.float32)
    for beta in (1.0, 1 / 9, 0.0):
        ref = torch.nn.functional.smooth_l1_loss(
            torch.tensor(x), torch.zeros(61), reduction='none', beta=beta
        )
        np.testing.assert_allclose(smooth_l1(jnp.asarray(x), beta), ref.numpy(), rtol=1e-6, atol=1e-7)
    assert float(smooth_l1(jnp.asarray(0.5), 1.0)) == pytest.approx(0.125)  # 0.5 * 0.25 / 1
    assert float(smooth_l1(jnp.asarray(2.0), 1.0)) == pytest.approx(1.5)


@pytest.mark.parametrize('alpha,gamma', [(0.25, 2.0), (0.75, 0.0), (-1.0, 5.0), (0.5, 0.5)])
def test_sigmoid_focal_loss_matches_torchvision(alpha, gamma):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 5)).astype(np.float32) * 3
    targets = (rng.uniform(size=(7, 5)) < 0.3).astype(np.float32)
    ref = tv_ops.sigmoid_focal_loss(
        torch.tensor(logits), torch.tensor(targets), alpha, gamma, reduction='none'
    )
    np.testing.assert_allclose(
        sigmoid_focal_loss(jnp.asarray(logits), jnp.asarray(targets), alpha, gamma),
        ref.numpy(),
        rtol=1e-5,
        atol=1e-7,
    )
    # Hand check: p = sigmoid(0) = 0.5 on a positive, alpha 0.25, gamma 2: 0.25 * 0.25 * log 2.
    assert float(sigmoid_focal_loss(jnp.zeros(1), jnp.ones(1))[0]) == pytest.approx(0.25 * 0.25 * np.log(2))


@pytest.mark.parametrize('gamma', [0.5, 2.0])
def test_sigmoid_focal_loss_gradient_finite_when_saturated(gamma):
    """Confident correct logits (1 - p_t underflows to 0 in float32): the power's gradient must not
    turn into NaN (it did for gamma < 1 with the naive (1 - p) ** gamma)."""
    logits = jnp.asarray([120.0, -120.0, 30.0, -30.0, 0.0])
    targets = jnp.asarray([1.0, 0.0, 1.0, 0.0, 1.0])
    g = jax.grad(lambda x: sigmoid_focal_loss(x, targets, 0.25, gamma).sum())(logits)
    assert np.isfinite(np.asarray(g)).all()
    assert abs(float(g[0])) < 1e-20 and float(g[4]) < 0  # saturated: no push; uncertain positive: push up


def test_softmax_cross_entropy_ignores_negative_labels():
    logits = jnp.asarray([[0.0, 0.0], [2.0, 0.0]])
    ce = softmax_cross_entropy(logits, jnp.asarray([1, -1]))
    np.testing.assert_allclose(ce, [np.log(2), 0.0], rtol=1e-6)


def test_hard_negative_mask_keeps_the_hardest_three_per_positive():
    loss = jnp.asarray([9.0, 1.0, 5.0, 3.0, 7.0, 2.0, 8.0, 0.5])
    positive = jnp.asarray([1, 0, 0, 0, 0, 0, 0, 0], bool)
    negative = jnp.asarray([0, 1, 1, 1, 1, 1, 0, 1], bool)  # index 6 is ignored (neither)
    keep = hard_negative_mask(loss, positive, negative, 3.0)
    np.testing.assert_array_equal(np.nonzero(np.asarray(keep))[0], [2, 3, 4])  # losses 5, 3, 7
    assert not hard_negative_mask(loss, jnp.zeros(8, bool), negative).any()  # no positive: no negative
    assert int(hard_negative_mask(loss, positive, negative, 10.0).sum()) == 6  # capped by the negatives


@pytest.mark.parametrize('extra,source', [('maxpool', 'p5'), ('p6p7', 'p5'), ('p6p7', 'c5')])
def test_fpn_matches_torchvision(extra, source):
    from torchvision.ops import FeaturePyramidNetwork as TorchFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    torch.manual_seed(0)
    chans, out = [8, 16, 32], 16
    block = (
        LastLevelMaxPool() if extra == 'maxpool' else LastLevelP6P7(out if source == 'p5' else chans[-1], out)
    )
    tfpn = TorchFPN(chans, out, extra_blocks=block).eval()
    for p in tfpn.parameters():
        torch.nn.init.normal_(p, std=0.1)
    sizes = [(17, 21), (9, 11), (5, 6)]  # odd sizes: nearest upsampling to the lateral's size
    xs = [
        np.random.default_rng(i).normal(size=(2, h, w, c)).astype(np.float32)
        for i, ((h, w), c) in enumerate(zip(sizes, chans))
    ]
    with torch.no_grad():
        ref = tfpn({str(i): torch.tensor(x).permute(0, 3, 1, 2) for i, x in enumerate(xs)})
    model = FeaturePyramidNetwork(out, min_level=3, extra=extra, p6p7_from=source)
    params = {}
    sd = tfpn.state_dict()
    names = {f'inner_blocks_{i}': f'inner_blocks.{i}.0' for i in range(3)}
    names.update({f'layer_blocks_{i}': f'layer_blocks.{i}.0' for i in range(3)})
    names.update({'p6': 'extra_blocks.p6', 'p7': 'extra_blocks.p7'})
    for ours, theirs in names.items():
        if f'{theirs}.weight' in sd:
            params[ours] = {
                'kernel': jnp.asarray(sd[f'{theirs}.weight'].permute(2, 3, 1, 0).numpy()),
                'bias': jnp.asarray(sd[f'{theirs}.bias'].numpy()),
            }
    abstract = jax.eval_shape(model.init, jax.random.key(0), xs)
    assert jax.tree.map(jnp.shape, abstract['params']) == jax.tree.map(jnp.shape, params)
    got = model.apply({'params': params}, xs)
    assert list(got) == ['p3', 'p4', 'p5', 'p6'] + (['p7'] if extra == 'p6p7' else [])
    for (k, g), r in zip(got.items(), ref.values()):
        r = r.permute(0, 2, 3, 1).numpy()
        assert g.shape == r.shape, k
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


def test_select_detections_matches_torchvision_postprocess():
    """Threshold, class-aware NMS, top-k: the same kept (box, class, score) set as torchvision's
    RoIHeads.postprocess_detections logic on shared boxes."""
    rng = np.random.default_rng(1)
    n, k = 60, 3
    xy = rng.uniform(0, 80, size=(n, 2))
    wh = rng.uniform(5, 40, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.uniform(size=(n, k)).astype(np.float32)
    out = select_detections(
        jnp.asarray(boxes),
        jnp.asarray(scores),
        image_size=(100, 90),
        score_threshold=0.3,
        iou_threshold=0.5,
        max_detections=25,
    )
    tb = torch.tensor(boxes)
    tb = torch.stack(
        [tb[:, 0].clamp(0, 90), tb[:, 1].clamp(0, 100), tb[:, 2].clamp(0, 90), tb[:, 3].clamp(0, 100)], 1
    )
    tb = tb[:, None].expand(n, k, 4).reshape(-1, 4)
    ts = torch.tensor(scores).reshape(-1)
    tl = torch.arange(1, k + 1).repeat(n)
    keep = torch.where(ts >= 0.3)[0]
    tb, ts, tl = tb[keep], ts[keep], tl[keep]
    keep = tv_ops.batched_nms(tb, ts, tl, 0.5)[:25]
    v = np.asarray(out['valid'])
    assert v.sum() == len(keep)
    np.testing.assert_allclose(np.asarray(out['boxes'])[v], tb[keep].numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out['scores'])[v], ts[keep].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out['labels'])[v], tl[keep].numpy())
    assert (np.asarray(out['labels'])[~v] == 0).all()
