"""Dense CRF (research.segmentation.crf): mean-field inference, exact vs bilateral-grid messages, the
constructed two-region denoising case, gradients, jit and the Flax layer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.segmentation.crf import DenseCRF, _approx_message, _exact_message, dense_crf


def _two_region_case(size=32, num_classes=2, flip=0.25, seed=0):
    """Left half dark, right half bright (plus noise); labels by region; confident logits of the true
    labels with a random fraction of pixels flipped to a wrong class."""
    rng = np.random.default_rng(seed)
    image = np.full((1, size, size, 3), 40.0, np.float32)
    image[:, :, size // 2 :] = 200.0
    image = np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.float32)
    labels = np.zeros((1, size, size), np.int32)
    labels[:, :, size // 2 :] = 1
    pred = labels.copy()
    flips = rng.random(labels.shape) < flip
    pred[flips] = (labels[flips] + rng.integers(1, num_classes, flips.sum())) % num_classes
    logits = 3.0 * np.eye(num_classes, dtype=np.float32)[pred] + rng.normal(
        0, 0.3, pred.shape + (num_classes,)
    )
    return jnp.asarray(logits.astype(np.float32)), jnp.asarray(image), labels


def _miou(pred, labels, num_classes):
    """Mean IoU over classes present in labels or prediction, from a confusion matrix."""
    cm = np.bincount(labels.ravel() * num_classes + pred.ravel(), minlength=num_classes**2)
    cm = cm.reshape(num_classes, num_classes)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    return float(np.mean(inter[union > 0] / union[union > 0]))


def _random_inputs(size=16, num_classes=4, seed=1):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (2, size, size, num_classes)).astype(np.float32)
    image = rng.uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    return jnp.asarray(logits), jnp.asarray(image)


# --------------------------------------------------------------------------- (1) no pairwise terms


@pytest.mark.parametrize('method', ['exact', 'approx'])
def test_zero_weights_give_softmax(method):
    logits, image = _random_inputs()
    out = dense_crf(logits, image, w1=0.0, w2=0.0, method=method)
    np.testing.assert_allclose(out, jax.nn.softmax(logits, -1), atol=1e-6)


def test_zero_iterations_and_zero_compatibility_give_softmax():
    logits, image = _random_inputs()
    expected = jax.nn.softmax(logits, -1)
    np.testing.assert_allclose(dense_crf(logits, image, num_iterations=0), expected, atol=1e-6)
    zeros = jnp.zeros((4, 4))
    np.testing.assert_allclose(dense_crf(logits, image, compatibility=zeros), expected, atol=1e-6)
    # a non-zero compatibility does change the result
    assert float(jnp.abs(dense_crf(logits, image) - expected).max()) > 0.1


# --------------------------------------------------------------------------- (2) constructed case


@pytest.mark.parametrize('method', ['exact', 'approx'])
def test_crf_cleans_noisy_two_region_prediction(method):
    logits, image, labels = _two_region_case()
    before = _miou(np.asarray(jnp.argmax(logits, -1)), labels, 2)
    q = dense_crf(logits, image, method=method)  # DeepLab defaults: w1=10, w2=3, theta 80 / 13 / 3
    after = _miou(np.asarray(jnp.argmax(q, -1)), labels, 2)
    # measured: before 0.594, after 1.000 (both methods; 64x64: 0.620 -> 1.000)
    assert 0.5 < before < 0.7
    assert after >= before + 0.3, (before, after)


def test_crf_helps_with_three_classes_and_weak_weights():
    logits, image, labels = _two_region_case(size=24, num_classes=3, flip=0.3, seed=3)
    before = _miou(np.asarray(jnp.argmax(logits, -1)), labels, 3)
    q = dense_crf(logits, image, w1=0.05, w2=0.5, num_iterations=10)
    after = _miou(np.asarray(jnp.argmax(q, -1)), labels, 3)
    # measured: before 0.370, after 1.000
    assert after >= before + 0.2, (before, after)


# --------------------------------------------------------------------------- (3) exact vs approximate


def _exact(q, image, w1, w2, chunk):
    return jax.jit(
        functools.partial(
            _exact_message, w1=w1, w2=w2, theta_alpha=80.0, theta_beta=13.0, theta_gamma=3.0, chunk=chunk
        )
    )(q, image)


def _approx(q, image, w1, w2, spacing, cells):
    return jax.jit(
        functools.partial(
            _approx_message,
            w1=w1,
            w2=w2,
            theta_alpha=80.0,
            theta_beta=13.0,
            theta_gamma=3.0,
            spacing=spacing,
            color_cells=cells,
        )
    )(q, image)


def _rel_l2(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def test_spatial_kernel_is_exact_in_approx_method():
    logits, image = _random_inputs(size=20)
    q = jax.nn.softmax(logits[0], -1)
    exact = _exact(q, image[0], 0.0, 1.0, 128)
    approx = _approx(q, image[0], 0.0, 1.0, 1.0, 21)
    assert _rel_l2(approx, exact) < 1e-5


@pytest.mark.parametrize('spacing,tol', [(1.0, 0.1), (0.5, 0.03)])
def test_bilateral_grid_message_close_to_exact(spacing, tol):
    """Appearance-kernel messages: relative L2 error of the bilateral grid (measured on this 24x24
    random-colour image: 0.087 at spacing 1.0, 0.017 at 0.5; 0.042 / 0.005 on the two-region image)."""
    _, image = _random_inputs(size=24)
    logits2, image2, _ = _two_region_case(size=24, num_classes=4)
    for img, lg in ((image[0], jax.random.normal(jax.random.key(0), (24, 24, 4))), (image2[0], logits2[0])):
        q = jax.nn.softmax(lg, -1)
        exact = _exact(q, img, 1.0, 0.0, 200)
        cells = int(255 / 13 / spacing) + 2
        approx = _approx(q, img, 1.0, 0.0, spacing, cells)
        assert _rel_l2(approx, exact) < tol


def test_exact_and_approx_marginals_agree():
    logits, image = _random_inputs(size=24, num_classes=5)
    kw = dict(w1=0.1, w2=0.1, num_iterations=5)
    exact = dense_crf(logits, image, method='exact', **kw)
    approx = dense_crf(logits, image, method='approx', **kw)
    # measured: max |dQ| 0.0025, argmax agreement 0.9991
    assert float(jnp.abs(exact - approx).max()) < 0.01
    assert float(jnp.mean(jnp.argmax(exact, -1) == jnp.argmax(approx, -1))) > 0.99
    # the pairwise term matters at these weights (the comparison is not trivially softmax vs softmax)
    assert float(jnp.abs(exact - jax.nn.softmax(logits, -1)).max()) > 0.1


def test_exact_chunking_does_not_change_result():
    logits, image = _random_inputs(size=12)
    a = dense_crf(logits, image, method='exact', chunk=7, w1=0.1, w2=0.1)
    b = dense_crf(logits, image, method='exact', chunk=1000, w1=0.1, w2=0.1)
    np.testing.assert_allclose(a, b, atol=1e-5)


# --------------------------------------------------------------------------- (4) gradients


@pytest.mark.parametrize('method', ['exact', 'approx'])
def test_gradient_wrt_logits_is_finite(method):
    logits, image = _random_inputs(size=12, num_classes=3)
    target = jax.nn.one_hot(jnp.zeros(logits.shape[:3], jnp.int32), 3)

    def loss(lg, w1):
        log_q = dense_crf(lg, image, method=method, w1=w1, w2=0.1, output='logits', num_iterations=3)
        return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(log_q, -1), -1))

    g_logits, g_w1 = jax.grad(loss, argnums=(0, 1))(logits, 0.05)
    assert bool(jnp.all(jnp.isfinite(g_logits))) and bool(jnp.isfinite(g_w1))
    assert float(jnp.abs(g_logits).max()) > 0 and float(jnp.abs(g_w1)) > 0


def test_dense_crf_layer_learns_its_weights():
    logits, image, labels = _two_region_case(size=12, num_classes=2, seed=5)
    layer = DenseCRF(num_classes=2, num_iterations=3, w1=0.01, w2=0.01, learn_compatibility=True)
    params = layer.init(jax.random.key(0), logits, image)['params']
    assert set(params) == {'w1', 'w2', 'compatibility'} and params['compatibility'].shape == (2, 2)
    target = jax.nn.one_hot(jnp.asarray(labels), 2)

    @jax.jit
    def loss(p):
        out = layer.apply({'params': p}, logits, image)
        return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(out, -1), -1))

    grads = jax.grad(loss)(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    lr = 1e-3
    new = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    assert float(loss(new)) < float(loss(params))
    fixed = DenseCRF(num_classes=2, learnable=False)
    assert fixed.init(jax.random.key(0), logits, image) == {}


# --------------------------------------------------------------------------- (5) jit, distribution, API


@pytest.mark.parametrize('method', ['exact', 'approx'])
def test_jit_output_is_a_distribution(method):
    logits, image = _random_inputs(size=16, num_classes=4)
    f = jax.jit(functools.partial(dense_crf, method=method, w1=0.2, w2=0.5))
    q = f(logits, image)
    assert q.shape == logits.shape and q.dtype == jnp.float32
    assert bool(jnp.all(q >= 0)) and bool(jnp.all(q <= 1))
    np.testing.assert_allclose(jnp.sum(q, -1), 1.0, atol=1e-5)
    np.testing.assert_allclose(q, dense_crf(logits, image, method=method, w1=0.2, w2=0.5), atol=1e-5)
    # logits output: its softmax is the probability output
    lg = dense_crf(logits, image, method=method, w1=0.2, w2=0.5, output='logits')
    np.testing.assert_allclose(jax.nn.softmax(lg, -1), q, atol=1e-5)


def test_bad_arguments_are_rejected():
    logits, image = _random_inputs(size=8)
    with pytest.raises(ValueError, match='method'):
        dense_crf(logits, image, method='permutohedral')
    with pytest.raises(ValueError, match='compatibility'):
        dense_crf(logits, image, compatibility=jnp.zeros((3, 3)))
    with pytest.raises(ValueError, match='logits'):
        dense_crf(logits[0], image)
    with pytest.raises(ValueError, match='grid_spacing'):
        dense_crf(logits, image, method='approx', grid_spacing=2.0)
