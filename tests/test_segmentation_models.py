"""Segmentation models (issue 5): FCN (VGG and torchvision ResNet), SegNet, DeconvNet, U-Net, PSPNet,
DeepLabv3 / v3+, LR-ASPP, Yu & Koltun's context module, and their torchvision conversions.

Parameter counts of the torchvision models are the exact values of ../shared/reference/paper_targets.md
(fcn_resnet50 with aux 35,322,218; deeplabv3_resnet50 with aux 42,004,074; lraspp 3,221,538); shapes
come from jax.eval_shape; real forwards only at tiny widths.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.layers.conv import ConvTranspose
from research.layers.resample import upsample_bilinear
from research.models import context, count_params, create, deeplab, fcn, pspnet, segnet, unet
from research.models.fcn import bilinear_init, bilinear_kernel

SEG_MODELS = sorted(
    set(fcn.REGISTRY_ENTRIES)
    | set(segnet.REGISTRY_ENTRIES)
    | set(unet.REGISTRY_ENTRIES)
    | set(pspnet.REGISTRY_ENTRIES)
    | set(deeplab.REGISTRY_ENTRIES)
    | set(context.REGISTRY_ENTRIES)
)
SMALL = 64
# Models whose input is not a 64 px RGB image (or that need a knob at that size).
INPUTS = {
    'context_module': ((1, 32, 32, 21), {}),
    'deconvnet': ((1, SMALL, SMALL, 3), {'fc_kernel': SMALL // 32}),
    'unet_valid': ((1, 284, 284, 3), {}),  # 16 b + 124 with bottom side b = 10
}
AUX_MODELS = (
    'fcn_resnet50',
    'fcn_resnet101',
    'deeplabv3_resnet50',
    'deeplabv3_resnet101',
    'deeplabv3_mobilenet_v3_large',
    'pspnet_resnet50',
)


@functools.lru_cache(maxsize=None)
def _abstract(name, shape=None, return_aux=False, **kwargs):
    """(output, variables) shapes of init + apply via eval_shape (no real init)."""
    default_shape, default_kwargs = INPUTS.get(name, ((1, SMALL, SMALL, 3), {}))
    model = create(name, **{**default_kwargs, **kwargs})
    x = jax.ShapeDtypeStruct(shape or default_shape, jnp.float32)

    def f(k, x):
        v = model.init(k, x)
        return model.apply(v, x, return_aux=return_aux), v

    return jax.eval_shape(f, jax.random.key(0), x)


# --------------------------------------------------------------------------- counts and shapes

PARAMS = {
    # torchvision (paper_targets.md), 21 classes, with the aux head.
    ('fcn_resnet50', ()): 35_322_218,
    ('deeplabv3_resnet50', ()): 42_004_074,
    ('lraspp_mobilenet_v3_large', ()): 3_221_538,
    # torchvision 0.29.1 deeplabv3_mobilenet_v3_large(aux_loss=True) / (aux_loss=False)
    ('deeplabv3_mobilenet_v3_large', ()): 11_029_328,
    ('deeplabv3_mobilenet_v3_large', (('aux', False),)): 11_025_477,
    # Yu & Koltun's front end: VGG-16 convs 14,714,688 + fc6 (7x7x512x4096 + 4096) + fc7 + final (21),
    # the basic context module adds 7 (9 C^2 + C) + C^2 + C = 28,392 at C = 21.
    ('dilated_vgg16', ()): 14_714_688 + 7 * 7 * 512 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 21 + 21,
    ('dilated_vgg16_context', ()): 134_346_581 + 28_392,
    # torchvision 0.29.1 metadata: fcn_resnet101 54,314,346; deeplabv3_resnet101 60,996,202.
    ('fcn_resnet101', ()): 54_314_346,
    ('deeplabv3_resnet101', ()): 60_996_202,
    # Hand counts: VGG-16 convs 14,714,688 + fc6 102,764,544 + fc7 16,781,312 + score_fr 86,037
    # (= 134,346,581) + FCN-32s upscore 64*64*21*21.
    ('fcn32s', ()): 134_346_581 + 64 * 64 * 21 * 21,
    # + upscore2 4*4*21*21, score_pool4 512*21+21, upscore16 32*32*21*21.
    ('fcn16s', ()): 134_346_581 + 16 * 441 + 10_773 + 1024 * 441,
    # + upscore2, score_pool4, upscore_pool4, score_pool3 256*21+21, upscore8 16*16*21*21.
    ('fcn8s', ()): 134_346_581 + 16 * 441 + 10_773 + 16 * 441 + 5_397 + 256 * 441,
    # Yu & Koltun basic module: 7 (9 C^2 + C) + C^2 + C, C = 21.
    ('context_module', ()): 7 * (9 * 441 + 21) + 441 + 21,
    # U-Net Fig. 1 (2 classes): 31,031,810 (23 convs).
    ('unet', (('num_classes', 2),)): 31_031_810,
    ('unet_valid', (('num_classes', 2),)): 31_031_810,
    ('segnet', ()): 29_455_125,
    ('deeplabv3_resnet50', (('aux', False),)): 39_638_869,
}


@pytest.mark.parametrize('name,kwargs', list(PARAMS), ids=lambda p: str(p))
def test_param_counts(name, kwargs):
    assert count_params(_abstract(name, **dict(kwargs))[1]) == PARAMS[(name, kwargs)]


def test_aux_adds_exactly_an_fcn_head():
    # torchvision FCNHead(1024, 21): 3x3 conv 1024 -> 256 (no bias), BN 256, 1x1 conv 256 -> 21.
    head = 9 * 1024 * 256 + 2 * 256 + 256 * 21 + 21
    for name in ('fcn_resnet50', 'deeplabv3_resnet50'):
        with_aux = count_params(_abstract(name)[1])
        without = count_params(_abstract(name, aux=False)[1])
        assert with_aux - without == head


@pytest.mark.parametrize('name', SEG_MODELS)
def test_output_shape_and_dtype(name):
    out, _ = _abstract(name)
    shape, _ = INPUTS.get(name, ((1, SMALL, SMALL, 3), {}))
    n, h, w, _ = shape
    if name == 'unet_valid':
        h = w = unet.unet_valid_output_size(h)
        assert h == 100  # 16 b - 60
    assert out.shape == (n, h, w, 21)
    assert out.dtype == jnp.float32


@pytest.mark.parametrize(
    'name', ['fcn8s', 'fcn16s', 'fcn32s', 'deeplabv3_resnet50', 'pspnet_resnet50', 'unet']
)
def test_odd_and_nonsquare_inputs_keep_the_input_size(name):
    shape = (2, 80, 48, 3) if name == 'unet' else (2, 67, 45, 3)  # U-Net: sides divisible by 2**depth
    out, _ = _abstract(name, shape=shape)
    assert out.shape == shape[:3] + (21,)


def test_unet_valid_matches_the_paper_figure():
    assert unet.unet_valid_output_size(572) == 388
    assert unet.unet_valid_output_size(188) == 4
    out, _ = _abstract('unet_valid', shape=(1, 572, 572, 1), num_classes=2)
    assert out.shape == (1, 388, 388, 2)
    with pytest.raises(ValueError, match='odd'):
        _abstract('unet_valid', shape=(1, 128, 128, 3))
    with pytest.raises(ValueError, match='too small'):
        _abstract('unet_valid', shape=(1, 124, 124, 3))
    with pytest.raises(ValueError, match='too small'):
        unet.unet_valid_output_size(124)


def test_unet_overlap_tile_mirrors_the_input_and_crops_to_its_size():
    """Fig. 2's overlap-tile strategy: a 64x64 input is mirror-padded to the smallest valid size (156 at
    depth 3: 156 -> 68) and the output cropped to 64x64; on a 388x388 input the network sees 572x572."""
    assert unet.overlap_tile_input_size(64, 3) == 156 and unet.unet_valid_output_size(156, 3) == 68
    assert unet.overlap_tile_input_size(388, 4) == 572
    m = create('unet_valid', num_classes=3, depth=3, base_features=4, overlap_tile=True)
    x = jax.random.normal(jax.random.key(0), (1, 64, 64, 1))
    v = jax.jit(m.init)(jax.random.key(1), x)  # jitted: op-by-op init takes longer to dispatch
    y = jax.jit(m.apply)(v, x)
    assert y.shape == (1, 64, 64, 3)
    # Equal to the plain valid net applied to the mirror-padded input, centre-cropped.
    plain = create('unet_valid', num_classes=3, depth=3, base_features=4)
    padded = jnp.pad(x, ((0, 0), (46, 46), (46, 46), (0, 0)), mode='reflect')
    full = jax.jit(plain.apply)(v, padded)
    assert full.shape == (1, 68, 68, 3)
    np.testing.assert_allclose(y, full[:, 2:66, 2:66], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', AUX_MODELS)
def test_aux_head_only_on_request(name):
    (logits, extra), _ = _abstract(name, return_aux=True)
    assert logits.shape == extra['aux'].shape == (1, SMALL, SMALL, 21)
    with pytest.raises(ValueError, match='aux'):
        _abstract(name, return_aux=True, aux=False)


@pytest.mark.parametrize('output_stride,rates', [(8, (12, 24, 36)), (16, (6, 12, 18)), (32, (3, 6, 9))])
def test_deeplab_output_stride_knob(output_stride, rates):
    x = jax.ShapeDtypeStruct((1, SMALL, SMALL, 3), jnp.float32)
    backbone = deeplab.ResNetBackbone(output_stride=output_stride, multi_grid=(1, 2, 4))
    feats = jax.eval_shape(lambda x: backbone.init_with_output(jax.random.key(0), x)[0], x)
    assert [feats[f'stage{i}'].shape[1] for i in range(1, 6)] == [
        SMALL // min(2**i, output_stride) for i in range(1, 6)
    ]
    model = create('deeplabv3_resnet50', output_stride=output_stride, multi_grid=(1, 2, 4))
    out, v = jax.eval_shape(lambda k, x: model.init_with_output(k, x), jax.random.key(0), x)
    assert out.shape == (1, SMALL, SMALL, 21)
    assert deeplab._default_rates(output_stride) == rates
    with pytest.raises(ValueError, match='output_stride'):
        deeplab.dilation_for_output_stride(4)


# --------------------------------------------------------------------------- tiny real forwards


def _np_variables(model, x, seed=0):
    """Variables of the right shapes filled with numpy noise (a real init compiles the RNG per shape)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        names = [str(getattr(k, 'key', k)) for k in path]
        if names[-1] == 'var':
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(fan_in), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _forward(model, x, train=False):
    v = _np_variables(model, x)
    return v, jax.jit(lambda v, x: model.apply(v, x, train=train))(v, x)


def test_tiny_unet_forward_and_dropout():
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    model = create('unet', depth=2, base_features=4, num_classes=3)
    v, y = _forward(model, x)
    assert y.shape == (2, 32, 32, 3) and bool(jnp.all(jnp.isfinite(y)))
    y_train = jax.jit(lambda v, x: model.apply(v, x, train=True, rngs={'dropout': jax.random.key(3)}))(v, x)
    assert not np.allclose(y, y_train)  # dropout at the bottom is active in training only
    np.testing.assert_allclose(jax.jit(model.apply)(v, x), y, rtol=1e-6, atol=1e-6)
    valid = create('unet_valid', depth=2, base_features=4, num_classes=3)
    xv = jnp.zeros((1, 60, 60, 3))
    _, yv = _forward(valid, xv)
    assert yv.shape == (1, unet.unet_valid_output_size(60, 2), unet.unet_valid_output_size(60, 2), 3)


def test_tiny_fcn8s_forward():
    x = jax.random.normal(jax.random.key(0), (1, 40, 36, 3))
    model = fcn.FCN(num_classes=5, stride=8, base_features=4, fc_features=8)
    v, y = _forward(model, x)
    assert y.shape == (1, 40, 36, 5) and bool(jnp.all(jnp.isfinite(y)))
    assert float(jnp.std(y)) > 0


def test_tiny_segnet_forward_and_unpooling_positions():
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    model = create('segnet', base_features=4, num_classes=3)
    v = _np_variables(model, x)
    y, state = jax.jit(lambda v, x: model.apply(v, x, mutable=['intermediates']))(v, x)
    assert y.shape == (2, 32, 32, 3) and bool(jnp.all(jnp.isfinite(y)))
    inter = state['intermediates']
    for b in range(1, 6):
        enc = np.asarray(inter[f'enc{b}'][0])
        dec_in = np.asarray(inter[f'dec_in{b}'][0])
        unpooled = np.asarray(inter[f'unpool{b}'][0])
        n, h, w, c = enc.shape
        assert unpooled.shape == enc.shape
        # Windows (n, h/2, w/2, c, 4) in row-major tap order; the first maximum wins as in torch.
        win = (
            enc.reshape(n, h // 2, 2, w // 2, 2, c)
            .transpose(0, 1, 3, 5, 2, 4)
            .reshape(n, h // 2, w // 2, c, 4)
        )
        got = unpooled.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(win.shape)
        onehot = np.arange(4) == np.argmax(win, axis=-1)[..., None]
        expected = np.where(onehot, dec_in[..., None], 0.0)
        np.testing.assert_array_equal(got, expected)
        if b == 5:  # the deepest decoder input is the pooled encoder map itself
            np.testing.assert_array_equal(dec_in, win.max(-1))


def test_deconvnet_tiny_forward():
    x = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))
    model = create('deconvnet', base_features=4, fc_features=8, fc_kernel=2, num_classes=3)
    _, y = _forward(model, x)
    assert y.shape == (1, 64, 64, 3) and bool(jnp.all(jnp.isfinite(y)))
    with pytest.raises(ValueError, match='fc_kernel'):
        _forward(create('deconvnet', base_features=4, fc_features=8, num_classes=3), x)


# --------------------------------------------------------------------------- initialisations


def test_bilinear_kernel_values():
    np.testing.assert_allclose(bilinear_kernel(4)[0], np.array([0.25, 0.75, 0.75, 0.25]) * 0.25)
    np.testing.assert_allclose(bilinear_kernel(4).sum(), 4.0)  # stride 2: each output gets weight 1
    np.testing.assert_allclose(bilinear_kernel(16).sum(), 64.0)


@pytest.mark.parametrize('stride', [2, 8, 32])
def test_bilinear_init_equals_bilinear_upsampling(stride):
    c = 3
    x = jax.random.normal(jax.random.key(stride), (1, 6, 5, c))
    up = ConvTranspose(
        c, 2 * stride, strides=stride, padding=stride // 2, use_bias=False, kernel_init=bilinear_init
    )
    v = up.init(jax.random.key(0), x)
    y = up.apply(v, x)
    ref = upsample_bilinear(x, scale_factor=stride, align_corners=False)
    assert y.shape == ref.shape
    s = stride  # borders differ: zero padding vs torch's edge clamp
    np.testing.assert_allclose(y[:, s:-s, s:-s], ref[:, s:-s, s:-s], atol=1e-5)


def test_fcn_transposed_convs_start_bilinear():
    # Constant-initialised ordinary convs (no RNG compile): the transposed convs and the skip scores
    # must still get their own initialisers.
    ones = functools.partial(nn.Conv, kernel_init=nn.initializers.ones_init())
    model = fcn.FCN(num_classes=3, stride=8, base_features=4, fc_features=8, conv=ones)
    v = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert np.all(np.asarray(v['params']['score_fr']['kernel']) == 1)
    for name, size in (('upscore2', 4), ('upscore_pool4', 4), ('upscore8', 16)):
        k = np.asarray(v['params'][name]['kernel'])
        assert k.shape == (size, size, 3, 3)
        expected = np.einsum('hw,oi->hwoi', bilinear_kernel(size), np.eye(3))
        np.testing.assert_array_equal(k, expected)
        assert 'bias' not in v['params'][name]
    for name in ('score_pool4', 'score_pool3'):  # zero-initialised skip scores (Long et al. Sec. 4.2)
        assert not np.any(np.asarray(v['params'][name]['kernel']))


def test_context_module_identity_init():
    model = create('context_module', num_classes=5)
    x = jax.random.normal(jax.random.key(0), (2, 20, 24, 5))
    v = jax.jit(model.init)(jax.random.key(1), x)
    apply = jax.jit(model.apply)
    probs = jax.nn.softmax(x, axis=-1)  # non-negative score maps pass through unchanged
    np.testing.assert_allclose(apply(v, probs), probs, atol=1e-6)
    np.testing.assert_allclose(apply(v, x), jax.nn.relu(x), atol=1e-6)  # the ReLUs clip negatives
    big = create('context_module', num_classes=5, width_multipliers=(2, 2, 4, 8, 16, 32, 32, 1))
    vb = jax.jit(big.init)(jax.random.key(1), x)
    assert vb['params']['ctx_conv6']['kernel'].shape == (3, 3, 16 * 5, 32 * 5)
    np.testing.assert_allclose(jax.jit(big.apply)(vb, probs), probs, atol=1e-6)
    with pytest.raises(ValueError, match='input maps'):
        model.init(jax.random.key(1), jnp.zeros((1, 8, 8, 3)))


# --------------------------------------------------------------------------- torchvision parity

LIGHT = ('fcn_resnet50', 'deeplabv3_resnet50', 'deeplabv3_mobilenet_v3_large', 'lraspp_mobilenet_v3_large')


@pytest.mark.parametrize('name', LIGHT)
def test_torchvision_parity_light(name):
    pytest.importorskip('torchvision')
    from research.interop import torchvision as tvi

    from parity_helper import assert_parity

    assert tvi.get_conversion(name).input_size == (96, 96)
    r = assert_parity(name)
    # torchvision's aux_loss=True: the aux head's output is compared too (FCN's, DeepLab's)
    assert (r.aux_error is not None) == (name != 'lraspp_mobilenet_v3_large')


@pytest.mark.slow
@pytest.mark.parametrize('name', LIGHT + ('fcn_resnet101', 'deeplabv3_resnet101'))
def test_torchvision_parity_full_size(name):
    pytest.importorskip('torchvision')
    from parity_helper import assert_parity

    assert_parity(name, input_size=(520, 520))


@pytest.mark.parametrize('name', ['fcn_resnet50', 'deeplabv3_mobilenet_v3_large'])
def test_torchvision_aux_flag_follows_the_torch_model(name):
    """torchvision's aux_loss=False converts to aux=False (no aux_classifier leaves); aux_loss=True
    (the conversion's default) to aux=True, whose output the parity tests compare."""
    pytest.importorskip('torchvision')
    from research.interop import torchvision as tvi

    model, v = tvi.convert(name, tvi.torchvision_model(name, aux_loss=False))
    assert model.aux is False and 'aux_classifier' not in v['params']
    assert tvi.flax_model(name, tvi.torchvision_model(name)).aux is True


def test_torchvision_param_counts_match_the_conversion_targets():
    pytest.importorskip('torchvision')
    from research.interop import torchvision as tvi

    for name in LIGHT:
        tm = tvi.torchvision_model(name)
        n = sum(p.numel() for p in tm.parameters())
        assert count_params(_abstract(name)[1]) == n == PARAMS[(name, ())]


@pytest.mark.parametrize(
    'name,kwargs',
    [('segnet', {'base_features': 4}), ('unet', {'depth': 2, 'base_features': 4, 'norm': 'batch'})],
)
def test_train_mode_gradients(name, kwargs):
    model = create(name, num_classes=3, **kwargs)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    labels = jax.random.randint(jax.random.key(1), (2, 32, 32), 0, 3)
    v = _np_variables(model, x)

    def loss(params):
        logits, state = model.apply(
            {**v, 'params': params},
            x,
            train=True,
            mutable=['batch_stats'],
            rngs={'dropout': jax.random.key(2)},
        )
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], -1)), state

    (value, state), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(v['params'])
    assert np.isfinite(float(value))
    assert jax.tree.structure(state['batch_stats']) == jax.tree.structure(v['batch_stats'])
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms))
    # Kernels at both ends get gradient (biases right before a train-mode BN get ~0, as they should).
    first = 'conv1_1' if name == 'segnet' else 'down1_conv1'
    for layer in (first, 'classifier'):
        assert float(jnp.linalg.norm(grads[layer]['kernel'])) > 0


def test_pyramid_pooling_bins_and_pooling_knobs():
    from research.layers import blocks
    from research.layers.pooling import adaptive_max_pool

    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 8))
    none = blocks.PyramidPooling(bins=())
    v = none.init(jax.random.key(1), x, train=False)
    np.testing.assert_array_equal(none.apply(v, x, train=False), x)  # the dilated-FCN baseline
    ppm = blocks.PyramidPooling(bins=(1,), pooling='max', norm=None, activation='identity')
    v = ppm.init(jax.random.key(1), x, train=False)
    out = ppm.apply(v, x, train=False)
    p = v['params']['bin1_conv']
    want = adaptive_max_pool(x, 1) @ p['kernel'][0, 0] + p.get('bias', 0.0)  # 1x1 conv of the max
    np.testing.assert_allclose(out[..., 8:], np.broadcast_to(want, (2, 6, 6, 8)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="'min'"):
        blocks.PyramidPooling(pooling='min').init(jax.random.key(1), x, train=False)


@pytest.mark.parametrize(
    'name', ['deeplabv3_resnet18', 'pspnet_resnet18', 'fcn_resnet18', 'deeplabv3plus_resnet18']
)
def test_small_resnet_backbones_scale_with_width(name):
    """The CPU-sized models: ``width`` scales the ResNet-18 backbone (planes width * 2**i)."""
    _, v = (
        _abstract(name, width=16, stem_width=16, aux=False)
        if name != 'deeplabv3plus_resnet18'
        else _abstract(name, width=16, stem_width=16)
    )
    bb = v['params']['backbone']
    assert bb['conv1']['kernel'].shape == (7, 7, 3, 16)
    assert bb['layer4_block1']['conv2']['kernel'].shape == (3, 3, 128, 128)
    _, full = _abstract(name)
    assert full['params']['backbone']['layer4_block1']['conv2']['kernel'].shape == (3, 3, 512, 512)
