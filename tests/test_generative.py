"""DCGAN, style-transfer losses and optimisation, and the visual tools (filters, feature maps,
CAM, receptive fields). Tiny models only: the whole file runs in well under a minute on one core."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.generative import dcgan
from research.generative import style_transfer as st
from research.layers.summary import summarize
from research.viz import cam as cam_lib
from research.viz import feature_maps as fm
from research.viz import filters as filt
from research.viz import receptive_field as rf
from research.viz.images import make_grid


def _key(seed):
    """RBG keys: XLA's RngBitGenerator compiles far faster on CPU than threefry (init dominates here)."""
    return jax.random.key(seed, impl='rbg')


# --------------------------------------------------------------------------- losses


def test_gram_matrix_hand_checked():
    # 2 positions (H=2, W=1), 2 channels: F = [[1, 2], [3, 4]].
    f = jnp.asarray([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # [1, 2, 1, 2]
    g = st.gram_matrix(f)
    # F^T F = [[1+9, 2+12], [2+12, 4+16]] = [[10, 14], [14, 20]], divided by H*W = 2.
    np.testing.assert_allclose(np.asarray(g[0]), [[5.0, 7.0], [7.0, 10.0]])
    assert g.shape == (1, 2, 2)


def test_gram_matrix_is_symmetric_and_size_normalised():
    f = jax.random.normal(_key(0), (2, 4, 4, 3))
    g = st.gram_matrix(f)
    np.testing.assert_allclose(np.asarray(g), np.asarray(jnp.swapaxes(g, 1, 2)), rtol=1e-6)
    # Tiling the map 2x2 keeps the per-position statistics, hence the Gram matrix.
    g4 = st.gram_matrix(jnp.tile(f, (1, 2, 2, 1)))
    np.testing.assert_allclose(np.asarray(g4), np.asarray(g), rtol=1e-5)


def test_content_loss_zero_for_identical_features_positive_otherwise():
    f = jax.random.normal(_key(1), (1, 5, 5, 4))
    assert float(st.content_loss(f, f)) == 0.0
    other = f.at[0, 2, 2, 1].add(2.0)
    # 1/2 mean: a single difference of 2 among 100 entries -> 0.5 * 4 / 100.
    np.testing.assert_allclose(float(st.content_loss(other, f)), 0.02, rtol=1e-6)


def test_style_loss_zero_for_identical_grams_positive_otherwise():
    g = st.gram_matrix(jax.random.normal(_key(2), (1, 3, 3, 4)))
    assert float(st.style_loss(g, g)) == 0.0
    assert float(st.style_loss(g, g * 1.5)) > 0.0


def test_total_variation_zero_for_constant_image():
    assert float(st.total_variation(jnp.full((1, 6, 6, 3), 0.3))) == 0.0
    assert float(st.total_variation(jax.random.uniform(_key(0), (1, 6, 6, 3)))) > 0.0


# --------------------------------------------------------------------------- DCGAN


_TINY_GAN = []


def _tiny_gan():
    """A fresh copy of one tiny GAN state (built once: initialisation compiles)."""
    if not _TINY_GAN:
        g = dcgan.Generator(image_size=28, channels=1, base_size=7, width=4)
        d = dcgan.Discriminator(image_size=28, base_size=7, width=4)
        _TINY_GAN.append(dcgan.create_gan_state(g, d, _key(0), latent_dim=8))
    return jax.tree.map(jnp.copy, _TINY_GAN[0])


def test_generator_and_discriminator_shapes_and_range():
    state = _tiny_gan()
    z = jax.random.normal(_key(3), (5, 8)) * 10.0  # large z: tanh must still bound the output
    x = jax.jit(dcgan.generate)(state, z)
    assert x.shape == (5, 28, 28, 1)
    assert float(jnp.max(jnp.abs(x))) <= 1.0
    logits = jax.jit(state.discriminator.apply)({'params': state.d_params, 'batch_stats': state.d_stats}, x)
    assert logits.shape == (5,)
    # 32x32 RGB as the paper's nets: base 4, three x2 stages (shapes only).
    g = dcgan.Generator(image_size=32, channels=3, base_size=4, width=4)
    out = jax.eval_shape(lambda z: g.apply(g.init(_key(0), z), z), jnp.zeros((2, 8)))
    assert out.shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match='power of two'):
        jax.eval_shape(lambda: dcgan.Generator(image_size=30, base_size=7).init(_key(0), jnp.zeros((1, 8))))


def _leaves_equal(a, b):
    return all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def test_jitted_gan_step_updates_both_nets_with_finite_losses():
    state = _tiny_gan()
    g0, d0 = jax.device_get(state.g_params), jax.device_get(state.d_params)
    gs0, ds0 = jax.device_get(state.g_stats), jax.device_get(state.d_stats)
    real = jax.random.uniform(_key(4), (6, 28, 28, 1), minval=-1, maxval=1)
    step = jax.jit(dcgan.gan_train_step, donate_argnums=0)
    state, metrics = step(state, {'image': real}, _key(5))
    for k in ('d_loss', 'g_loss', 'd_real', 'd_fake'):
        assert np.isfinite(float(metrics[k])), k
    assert not _leaves_equal(g0, state.g_params)
    assert not _leaves_equal(d0, state.d_params)
    assert not _leaves_equal(gs0, state.g_stats) and not _leaves_equal(ds0, state.d_stats)
    assert int(state.step) == 1
    # Both nets' parameters change in every leaf (each optimizer updates its own net fully).
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(state.g_params)):
        assert not np.array_equal(a, np.asarray(b))


def test_d_step_leaves_g_unchanged_and_g_step_leaves_d_unchanged():
    state = _tiny_gan()
    real = jax.random.uniform(_key(6), (4, 28, 28, 1), minval=-1, maxval=1)
    z = jax.random.normal(_key(7), (4, 8))
    after_d, m = jax.jit(dcgan.discriminator_step)(state, real, z)
    assert _leaves_equal(state.g_params, after_d.g_params) and _leaves_equal(state.g_stats, after_d.g_stats)
    assert _leaves_equal(state.g_opt, after_d.g_opt)
    assert not _leaves_equal(state.d_params, after_d.d_params)
    after_g, m2 = jax.jit(dcgan.generator_step)(after_d, z)
    assert _leaves_equal(after_d.d_params, after_g.d_params) and _leaves_equal(
        after_d.d_stats, after_g.d_stats
    )
    assert _leaves_equal(after_d.d_opt, after_g.d_opt)
    assert not _leaves_equal(after_d.g_params, after_g.g_params)

    @jax.jit
    def by_hand(state, after_d):
        # The G step uses the updated D: its loss is the updated D's verdict on the same fakes...
        fake, _ = dcgan._apply_train(state.generator, state.g_params, state.g_stats, z)
        logits, _ = dcgan._apply_train(after_d.discriminator, after_d.d_params, after_d.d_stats, fake)
        # ...and the D step's loss is BCE(real, 1) + BCE(fake, 0) of the old D.
        rl, st1 = dcgan._apply_train(state.discriminator, state.d_params, state.d_stats, real)
        fl, _ = dcgan._apply_train(state.discriminator, state.d_params, st1, fake)
        return dcgan.bce_real(logits), dcgan.bce_real(rl) + dcgan.bce_fake(fl)

    g_loss, d_loss = by_hand(state, after_d)
    np.testing.assert_allclose(float(m2['g_loss']), float(g_loss), rtol=1e-5)
    np.testing.assert_allclose(float(m['d_loss']), float(d_loss), rtol=1e-5)


def test_classifier_scores_extremes():
    uniform = np.full((100, 10), 0.1)
    s = dcgan.classifier_scores(uniform)
    assert s['score'] == pytest.approx(1.0) and s['confidence'] == pytest.approx(0.1)
    onehot = np.eye(10)[np.arange(100) % 10]
    s = dcgan.classifier_scores(onehot)
    assert s['score'] == pytest.approx(10.0, rel=1e-6) and s['confidence'] == pytest.approx(1.0)
    collapsed = np.eye(10)[np.zeros(100, int)]  # mode collapse: confident but one class only
    assert dcgan.classifier_scores(collapsed)['score'] == pytest.approx(1.0, rel=1e-6)


# --------------------------------------------------------------------------- style transfer


def _tiny_vgg():
    """A VGG-like stand-in: the registry's generic VGG with a 2-block conv stack."""
    model = models.create('vgg', cfg=(4, 'M', 8, 8, 'M'), num_classes=3, classifier_width=8, pool_size=1)
    variables = jax.jit(model.init)(_key(0), jnp.zeros((1, 16, 16, 3)))
    return model, variables


def test_layer_outputs_by_module_path_and_pruned_variables():
    model, variables = _tiny_vgg()
    x = jax.random.uniform(_key(1), (1, 16, 16, 3))
    out = fm.layer_outputs(model, variables, x, ['conv1_1', 'conv2_2'])
    assert out['conv1_1'].shape == (1, 16, 16, 4) and out['conv2_2'].shape == (1, 8, 8, 8)
    assert fm.list_layers(model, variables, (1, 16, 16, 3)) == ['conv1_1', 'conv2_1', 'conv2_2']
    pruned = fm.used_variables(model, variables, (1, 16, 16, 3), ['conv2_1'])
    assert set(pruned['params']) == {'conv1_1', 'conv2_1'}  # no conv2_2, no classifier
    again = fm.layer_outputs(model, pruned, x, ['conv2_1'])  # stops before the missing layers
    ref = fm.layer_outputs(model, variables, x, ['conv2_1'], stop_early=False)
    np.testing.assert_allclose(np.asarray(again['conv2_1']), np.asarray(ref['conv2_1']), rtol=1e-6)
    with pytest.raises(ValueError, match='conv9_9'):
        fm.used_variables(model, variables, (1, 16, 16, 3), ['conv9_9'])


def test_style_transfer_optimisation_lowers_total_loss():
    model, variables = _tiny_vgg()
    net = st.LossNetwork(model, variables, ('conv2_1',), ('conv1_1', 'conv2_1'))
    content = jax.random.uniform(_key(2), (16, 16, 3))
    style = jnp.tile(jnp.asarray([[0.9, 0.1, 0.1], [0.1, 0.1, 0.9]])[None], (16, 8, 1))  # stripes
    img, hist = st.stylize(net, content, style, weights=st.StyleWeights(1.0, 100.0), steps=15, lr=0.05)
    assert img.shape == (16, 16, 3) and img.min() >= 0.0 and img.max() <= 1.0
    assert hist[0]['content'] == 0.0  # starts at the content image
    assert hist[-1]['total'] < 0.7 * hist[0]['total']
    assert hist[-1]['style'] < hist[0]['style']


def test_transformer_net_shape_range_and_fast_style_step():
    model, variables = _tiny_vgg()
    net = st.LossNetwork(model, variables, ('conv2_1',), ('conv1_1', 'conv2_1'))
    t = st.TransformerNet(width=2, blocks=1)
    x = jax.random.uniform(_key(3), (1, 8, 8, 3))
    params = jax.jit(t.init)(_key(0), x)['params']
    y = t.apply({'params': params}, x)
    assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    t2 = st.TransformerNet(width=4, blocks=1, upsample='transpose')
    assert jax.eval_shape(lambda: t2.apply(t2.init(_key(0), x), x)).shape == x.shape
    import optax

    tx = optax.adam(2e-3)
    style_t = net.style_targets(jnp.full((1, 8, 8, 3), 0.5).at[:, ::2].set(0.1))
    step = jax.jit(
        lambda p, o, b: st.fast_style_step(
            p, o, b, net=net, transformer=t, tx=tx, style_targets=style_t, weights=st.StyleWeights(1.0, 10.0)
        )
    )
    opt = tx.init(params)
    losses = []
    for _ in range(8):
        params, opt, parts = step(params, opt, x)
        losses.append(float(parts['total']))
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


# --------------------------------------------------------------------------- visual tools


class _TinyGapNet(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> global average pool -> Dense: the CAM setting."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(3, (3, 3), name='conv1')(x))
        x = nn.relu(nn.Conv(5, (3, 3), strides=2, name='conv2')(x))
        return nn.Dense(4, name='head')(x.mean(axis=(1, 2)))


def test_filter_grid_and_first_conv_kernel():
    model, variables = _tiny_vgg()
    path, kernel = filt.first_conv_kernel(model, variables, (1, 16, 16, 3))
    assert path == 'conv1_1' and kernel.shape == (3, 3, 3, 4)
    imgs = filt.filter_images(kernel)
    assert imgs.shape == (4, 3, 3, 3) and imgs.min() == 0.0 and imgs.max() == 1.0
    grid = filt.filter_grid(kernel, padding=1)
    assert grid.shape == (2 * 4 + 1, 2 * 4 + 1, 3)  # 2x2 tiles of 3x3, 1 px padding
    gray = filt.filter_images(np.ones((5, 5, 8, 6)) * np.arange(6))
    assert gray.shape == (6, 5, 5, 1)  # 8 input channels: shown as their mean


def test_feature_map_grid_shape():
    model, variables = _tiny_vgg()
    x = jax.random.uniform(_key(1), (1, 16, 16, 3))
    f = fm.layer_outputs(model, variables, x, ['conv2_2'])['conv2_2']
    grid = fm.feature_map_grid(f, padding=1)
    assert grid.shape == (3 * 9 + 1, 3 * 9 + 1, 1)  # 8 maps of 8x8 on a 3x3 grid
    assert make_grid(np.zeros((5, 2, 2, 1)), nrow=5, padding=0).shape == (2, 10, 1)


def test_cam_equals_hand_computation():
    model = _TinyGapNet()
    x = jax.random.normal(_key(0), (2, 9, 9, 2))
    variables = model.init(_key(1), x)
    res = cam_lib.class_activation_maps(model, variables, x)
    p = variables['params']
    h1 = jax.nn.relu(nn.Conv(3, (3, 3)).apply({'params': p['conv1']}, x))
    f = np.asarray(jax.nn.relu(nn.Conv(5, (3, 3), strides=2).apply({'params': p['conv2']}, h1)))
    logits = np.asarray(model.apply(variables, x))
    pred = logits.argmax(-1)
    w = np.asarray(p['head']['kernel'])
    hand = np.stack([np.einsum('hwk,k->hw', f[i], w[:, pred[i]]) for i in range(2)])
    assert res['layer'] == 'conv2' and res['cam'].shape == (2, 5, 5)
    np.testing.assert_allclose(res['cam'], hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(res['classes'], pred)
    # Zhou et al. Eq. 2: the class score is the CAM's mean plus the bias.
    b = np.asarray(p['head']['bias'])
    np.testing.assert_allclose(res['cam'].mean(axis=(1, 2)) + b[pred], logits[np.arange(2), pred], rtol=1e-5)
    assert cam_lib.upsample_cam(res['cam'], (9, 9)).shape == (2, 9, 9)
    assert cam_lib.overlay(np.zeros((9, 9, 1)), np.zeros((9, 9))).shape == (9, 9, 3)


def test_cam_rejects_models_without_gap_head():
    model = models.create('vgg', cfg=(4, 'M', 8, 'M'), num_classes=3, classifier_width=6, pool_size=2)
    x = jax.random.uniform(_key(0), (1, 16, 16, 3))
    variables = model.init(_key(0), x)  # adaptive pool 2x2 -> flatten -> fc layers: no CAM
    with pytest.raises(ValueError, match='global average'):
        cam_lib.class_activation_maps(model, variables, x)


def test_dilated_receptive_fields_match_summarize_and_support():
    assert rf.dilated_receptive_fields((1, 2, 4)) == [3, 7, 15]
    assert rf.dilated_receptive_fields((1, 1, 1)) == [3, 5, 7]
    s = summarize(rf.DilatedStack((1, 2, 4)), (1, 33, 33, 1))
    assert int(s.receptive_field[0]) == 15
    masks = rf.dilated_supports((1, 2, 4), size=33)
    for mask, r in zip(masks, [3, 7, 15]):
        rows, cols = np.nonzero(mask)
        assert rows.max() - rows.min() + 1 == r and cols.max() - cols.min() + 1 == r
    assert masks[-1].all(axis=None) is not True and masks[-1][9:24, 9:24].all()  # 1,2,4: no holes
    gridded = rf.dilated_supports((2, 2), size=33)[-1]
    assert gridded[16, 16] and not gridded[16, 17]  # equal rates leave holes ("gridding")


def test_layer_receptive_fields_of_a_model():
    model, _ = _tiny_vgg()
    rows = rf.layer_receptive_fields(model, (1, 16, 16, 3))
    # conv 3 -> pool 4 (jump 2) -> conv 8 -> conv 12 -> pool 14
    assert [r for _, r, _ in rows] == [3, 4, 8, 12, 14]
    assert [j for _, _, j in rows] == [1, 2, 2, 2, 4]


def test_experiment_configs_validate_and_name_their_task():
    from experiments.generative import dcgan_mnist, fast_style, style_transfer
    from research.config import validate_config

    for module, arg, task in (
        (dcgan_mnist, 'quick', 'gan'),
        (style_transfer, 'size=64,steps=5', 'style_transfer'),
        (fast_style, 'quick', 'fast_style'),
    ):
        c = module.get_config(arg)
        validate_config(c)
        assert c.task == task
    assert dcgan_mnist.get_config('quick').gan.g_width == 32
    with pytest.raises(ValueError, match='unknown config argument'):
        style_transfer.get_config('stlye=x.jpg')


def test_unknown_task_is_refused_by_name():
    from research import tasks
    from research.config import base_config

    c = base_config()
    c.task = 'diffusion'
    with pytest.raises(KeyError, match="unknown task 'diffusion'"):
        tasks.create(c)


@pytest.mark.parametrize('task', ['speedrun', 'segmentation', 'detection', 'gan'])
def test_tasks_refuse_synthetic_data(task):
    """data.synthetic is the classification task's; the other tasks refuse it rather than ignore it."""
    from research import tasks
    from research.config import base_config

    c = base_config()
    c.task = task
    c.data.synthetic = True
    with pytest.raises(ValueError, match=f"data.synthetic=True is not supported by task '{task}'"):
        tasks.create(c)
