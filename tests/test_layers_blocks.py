"""Blocks: exact parameter counts (shape-only init) against hand formulas, output shapes, identity at
zero init, ordering/shortcut knobs. Counts with BN include its scale and bias (2 per channel) and
were cross-checked against torchvision 0.29 where it has the block."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.layers import blocks
from research.layers.conv import channel_shuffle
from research.models import count_params, resnet_cifar
from research.layers.common import BatchNorm, bind_norm


def _spec(shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _count(module, shape, **kw):
    """(trainable params, output shapes) without allocating or computing anything."""
    v = jax.eval_shape(lambda k, x: module.init(k, x, **kw), jax.random.key(0), _spec(shape))
    out = jax.eval_shape(lambda v, x: module.apply(v, x, **kw), v, _spec(shape))
    return count_params(v), jax.tree.map(lambda a: a.shape, out)


def _init(module, x, zero=(), real=False, **kw):
    """Variables for behaviour tests without compiling the initialisers (slow on CPU): kernels
    N(0, 0.3^2) from numpy, biases 0, norms the identity (scale 1, bias 0, mean 0, var 1).
    ``zero``: names of modules whose kernels are zeroed (True: all). ``real``: the module's init."""
    if real:
        return jax.jit(functools.partial(module.init, **kw))(jax.random.key(0, impl='rbg'), x)
    abstract = jax.eval_shape(
        functools.partial(module.init, **kw), jax.random.key(0), jax.tree.map(lambda a: _spec(a.shape), x)
    )
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        names = [str(getattr(k, 'key', k)) for k in path]
        if names[-1] == 'kernel':
            if zero is True or any(n in zero for n in names):
                return jnp.zeros(leaf.shape, leaf.dtype)
            return jnp.asarray(rng.normal(0.0, 0.3, leaf.shape), leaf.dtype)
        return (jnp.ones if names[-1] in ('scale', 'var') else jnp.zeros)(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def _apply(module, variables, x, **kw):
    return module.apply(variables, x, **kw)


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def bn(c):  # BatchNorm scale + bias
    return 2 * c


def conv(k, cin, cout, groups=1, bias=False):
    return k * k * cin // groups * cout + (cout if bias else 0)


# --------------------------------------------------------------------------- parameter counts


def test_basic_block_counts():
    assert _count(blocks.BasicBlock(64), (1, 8, 8, 64)) == (73_984, (1, 8, 8, 64))  # torchvision
    assert 73_984 == 2 * conv(3, 64, 64) + 2 * bn(64)
    # Projection (shortcut 'B') where the shape changes: resnet18 layer2[0].
    expected = conv(3, 64, 128) + conv(3, 128, 128) + conv(1, 64, 128) + 3 * bn(128)
    assert _count(blocks.BasicBlock(128, strides=2), (1, 8, 8, 64)) == (expected, (1, 4, 4, 128))
    assert expected == 230_144
    assert _count(blocks.BasicBlock(128, strides=2, shortcut='A'), (1, 8, 8, 64))[0] == expected - 8_192 - 256


def test_bottleneck_counts_and_v1_stride():
    expected = conv(1, 256, 64) + conv(3, 64, 64) + conv(1, 64, 256) + bn(64) + bn(64) + bn(256)
    assert expected == 70_400
    assert _count(blocks.Bottleneck(64), (1, 8, 8, 256)) == (70_400, (1, 8, 8, 256))
    # v1 (stride on the first 1x1) and v1.5 (on the 3x3): same params, different graph.
    x = _x((1, 8, 8, 64))
    for v1, conv1_hw in ((False, 8), (True, 4)):
        block = blocks.Bottleneck(32, strides=2, stride_on_1x1=v1)
        variables = _init(block, x)
        y, inter = _apply(block, variables, x, capture_intermediates=True)
        assert y.shape == (1, 4, 4, 128)
        assert inter['intermediates']['conv1']['__call__'][0].shape[1] == conv1_hw
        assert count_params(variables) == conv(1, 64, 32) + conv(3, 32, 32) + conv(1, 32, 128) + conv(
            1, 64, 128
        ) + (bn(32) * 2 + bn(128) * 2)


def test_resnext_block_counts():
    # ResNeXt-50 32x4d, first block of conv2: width 32 * 4 = 128, grouped 3x3, projection 64 -> 256.
    b = blocks.ResNeXtBlock(64)
    assert (b.cardinality, b.width) == (32, 128)
    expected = conv(1, 64, 128) + conv(3, 128, 128, groups=32) + conv(1, 128, 256) + conv(1, 64, 256)
    expected += bn(128) * 2 + bn(256) * 2
    assert _count(b, (1, 8, 8, 64)) == (expected, (1, 8, 8, 256))
    assert expected == 63_488  # torchvision resnext50_32x4d layer1[0]
    assert blocks.Bottleneck(64, groups=32, base_width=4).width == 128  # the same block by its knobs


@pytest.mark.parametrize('c,r', [(64, 16), (32, 4), (256, 16)])
def test_squeeze_excite_count(c, r):
    assert _count(blocks.SqueezeExcite(r), (1, 4, 4, c)) == (2 * c * c // r + c // r + c, (1, 4, 4, c))


def test_se_in_residual_blocks():
    assert _count(blocks.BasicBlock(64, se_reduction=16), (1, 4, 4, 64))[0] == 73_984 + 580
    assert (
        _count(blocks.Bottleneck(64, se_reduction=16), (1, 4, 4, 256))[0] == 70_400 + 2 * 256 * 16 + 16 + 256
    )


def test_inception_3a_counts():
    """GoogLeNet Table 1, inception (3a): 192 in; #1x1 64, #3x3 reduce 96, #3x3 128, #5x5 reduce 16,
    #5x5 32, pool proj 32 -> 256 channels. Conv (no bias) + BN per unit (torchvision's BasicConv2d)."""
    m = blocks.InceptionModule(64, 96, 128, 16, 32, 32)
    convs = conv(1, 192, 64) + conv(1, 192, 96) + conv(3, 96, 128) + conv(1, 192, 16) + conv(5, 16, 32)
    convs += conv(1, 192, 32)
    norms = bn(64 + 96 + 128 + 16 + 32 + 32)
    assert (convs, norms) == (163_328, 736)
    assert _count(m, (1, 28, 28, 192)) == (convs + norms, (1, 28, 28, 256))
    # The paper's units (conv + bias + ReLU): 368 biases instead of the BN parameters.
    assert _count(m.clone(norm=None), (1, 28, 28, 192))[0] == convs + 368
    # torchvision's GoogLeNet uses a 3x3 in the "5x5" branch: 155,872 there.
    tv = convs + norms - conv(5, 16, 32) + conv(3, 16, 32)
    assert _count(m.clone(branch3_kernel=3), (1, 28, 28, 192))[0] == tv == 155_872


def test_preact_orderings_counts():
    # Same channels: one norm per weight layer in every ordering -> equal counts.
    for o in blocks.PREACT_ORDERINGS:
        assert _count(blocks.PreActBlock(64, ordering=o), (1, 4, 4, 64)) == (73_984, (1, 4, 4, 64))
        assert _count(blocks.PreActBlock(256, ordering=o, bottleneck=True), (1, 4, 4, 256))[0] == 70_400
    # 32 -> 64, stride 2 with a projection: (a)-(c) conv + BN projection; (d)/(e) conv (+ bias)
    # projection of the pre-activated input; (e)'s first BN is on the 32 input channels.
    convs = conv(3, 32, 64) + conv(3, 64, 64) + conv(1, 32, 64)
    expected = {
        'a': convs + 3 * bn(64),
        'b': convs + 3 * bn(64),
        'c': convs + 3 * bn(64),
        'd': convs + 64 + 2 * bn(64),
        'e': convs + 64 + bn(32) + bn(64),
    }
    for o, n in expected.items():
        assert _count(blocks.PreActBlock(64, strides=2, ordering=o), (1, 8, 8, 32)) == (n, (1, 4, 4, 64)), o


def test_dense_block_and_transition_counts():
    # DenseNet-121's first block (torchvision _DenseBlock(6, 64, bn_size=4, growth_rate=32)): layer
    # i sees C_i = 64 + 32 i channels: BN(C_i) + 1x1 C_i -> 128 + BN(128) + 3x3 128 -> 32.
    expected = sum(bn(c) + conv(1, c, 128) + bn(128) + conv(3, 128, 32) for c in range(64, 256, 32))
    assert _count(blocks.DenseBlock(6, 32), (1, 8, 8, 64)) == (expected, (1, 8, 8, 256))
    assert expected == 335_040
    assert _count(blocks.DenseBlock(2, 12, bottleneck=False), (1, 8, 8, 24))[0] == (
        bn(24) + conv(3, 24, 12) + bn(36) + conv(3, 36, 12)
    )
    # Transition: BN + 1x1 to floor(theta C) + 2x2/2 average pool.
    assert _count(blocks.Transition(), (1, 8, 8, 256)) == (bn(256) + conv(1, 256, 128), (1, 4, 4, 128))
    assert _count(blocks.Transition(compression=1.0), (1, 8, 8, 10))[1] == (1, 4, 4, 10)


def test_dual_path_block():
    m = blocks.DualPathBlock(256, 96, 16, groups=32, project=True)
    expected = bn(64) + conv(1, 64, 256 + 32)  # projection: residual 256 + initial dense 2 * 16
    expected += (
        bn(64) + conv(1, 64, 96) + bn(96) + conv(3, 96, 96, groups=32) + bn(96) + conv(1, 96, 256 + 16)
    )
    n, shapes = _count(m, (1, 8, 8, 64))
    assert (n, shapes) == (expected, ((1, 8, 8, 256), (1, 8, 8, 48)))
    # A following block takes the (residual, dense) pair; the dense path grows by 16.
    x = (_x((1, 8, 8, 256)), _x((1, 8, 8, 48)))
    nxt = blocks.DualPathBlock(256, 96, 16, groups=32)
    y = _apply(nxt, _init(nxt, x), x)
    assert [a.shape for a in y] == [(1, 8, 8, 256), (1, 8, 8, 64)]
    with pytest.raises(ValueError, match='project=True'):
        nxt.init(jax.random.key(0), _x((1, 8, 8, 64)))


def test_inverted_residual_counts():
    # MobileNetV2, t=6, 24 -> 24: 1x1 expand 144, 3x3 depthwise, 1x1 project (torchvision: 8,832).
    expected = (
        conv(1, 24, 144) + bn(144) + conv(3, 144, 144, groups=144) + bn(144) + conv(1, 144, 24) + bn(24)
    )
    assert _count(blocks.InvertedResidual(24), (1, 8, 8, 24)) == (expected, (1, 8, 8, 24))
    assert expected == 8_832
    # EfficientNet MBConv6 k5 s2 with SE (squeeze = 0.25 * 24 input channels = 6).
    m = blocks.MBConv(40, strides=2, kernel_size=5, se_ratio=0.25, activation=nn.silu)
    se = 144 * 6 + 6 + 6 * 144 + 144
    expected = (
        conv(1, 24, 144) + bn(144) + conv(5, 144, 144, groups=144) + bn(144) + se + conv(1, 144, 40) + bn(40)
    )
    assert _count(m, (1, 8, 8, 24)) == (expected, (1, 4, 4, 40))
    # t = 1 (MobileNetV2's first block): no expansion conv.
    assert _count(blocks.InvertedResidual(16, expansion=1), (1, 8, 8, 32))[0] == (
        conv(3, 32, 32, groups=32) + bn(32) + conv(1, 32, 16) + bn(16)
    )


def test_shuffle_unit_counts():
    # v1, g = 3, Stage 2 first unit: 24 -> 240 (ungrouped first 1x1; 216 conv channels + 24 pooled).
    m = blocks.ShuffleUnitV1(240, groups=3, strides=2, group_first=False)
    expected = (
        conv(1, 24, 60) + bn(60) + conv(3, 60, 60, groups=60) + bn(60) + conv(1, 60, 216, groups=3) + bn(216)
    )
    assert _count(m, (1, 8, 8, 24)) == (expected, (1, 4, 4, 240))
    expected = conv(1, 240, 60, groups=3) + bn(60) + 9 * 60 + bn(60) + conv(1, 60, 240, groups=3) + bn(240)
    assert _count(blocks.ShuffleUnitV1(240, groups=3), (1, 8, 8, 240)) == (expected, (1, 8, 8, 240))
    # v2 (torchvision InvertedResidual(24, 116, 2) = 7,398 and (116, 116, 1) = 7,598).
    b = 58
    down = 9 * 24 + bn(24) + conv(1, 24, b) + bn(b)
    down += conv(1, 24, b) + bn(b) + 9 * b + bn(b) + conv(1, b, b) + bn(b)
    assert (
        _count(blocks.ShuffleUnitV2(116, strides=2), (1, 8, 8, 24)) == (down, (1, 4, 4, 116))
        and down == 7_398
    )
    same = conv(1, b, b) + bn(b) + 9 * b + bn(b) + conv(1, b, b) + bn(b)
    assert _count(blocks.ShuffleUnitV2(116), (1, 8, 8, 116)) == (same, (1, 8, 8, 116)) and same == 7_598


def test_aspp_and_pyramid_pooling_counts():
    c, f, n = 512, 256, 3  # torchvision DeepLabv3 ASPP(512, [6, 12, 18]): 4,131,840
    expected = c * f * (2 + 9 * n) + f * f * (n + 2) + 2 * f * (n + 3)
    assert expected == 4_131_840
    assert _count(blocks.ASPP(f, (6, 12, 18)), (1, 9, 9, c)) == (expected, (1, 9, 9, f))
    # PSP: 4 bins, each 1x1 conv C -> C/4 + BN; output C + 4 * C/4 = 2C.
    assert _count(blocks.PyramidPooling(), (1, 12, 12, 64)) == (
        4 * (conv(1, 64, 16) + bn(16)),
        (1, 12, 12, 128),
    )
    # Non-divisible sizes use torch's adaptive bins.
    assert _count(blocks.PyramidPooling(features=8), (1, 7, 9, 16))[1] == (1, 7, 9, 48)


# --------------------------------------------------------------------------- behaviour


def test_residual_blocks_start_as_identity():
    x = jnp.abs(_x((2, 6, 6, 16)))  # relu(x) == x
    for block, zero, real in (
        (blocks.BasicBlock(16, zero_init_last=True), (), True),  # last BN scale 0 (Goyal et al.)
        (blocks.Bottleneck(4, zero_init_last=True), (), True),
        (blocks.BasicBlock(16, norm=None), ('conv2',), False),
        (blocks.ShuffleUnitV1(16, groups=2), ('gconv2',), False),
        (blocks.InvertedResidual(16), ('project_conv',), False),
        (blocks.PreActBlock(16), True, False),
    ):
        y = _apply(block, _init(block, x, zero=zero, real=real), x)
        np.testing.assert_allclose(y, x, atol=1e-6, err_msg=type(block).__name__)


def test_preact_orderings_differ_with_same_params():
    x = _x((2, 6, 6, 16))
    v = _init(blocks.PreActBlock(16, ordering='a'), x)
    outs = {}
    for o in blocks.PREACT_ORDERINGS:
        block = blocks.PreActBlock(16, ordering=o)
        assert jax.tree.structure(_init(block, x)) == jax.tree.structure(v)
        outs[o] = np.asarray(_apply(block, v, x))
    for i, a in enumerate(blocks.PREACT_ORDERINGS):
        for b in blocks.PREACT_ORDERINGS[i + 1 :]:
            assert not np.allclose(outs[a], outs[b]), (a, b)
    # Zero weights: (c), (d), (e) are exactly the identity, (a) relu(x), (b) relu(BN(x)).
    for o, expect in [('c', x), ('d', x), ('e', x), ('a', nn.relu(x)), ('b', nn.relu(x / np.sqrt(1 + 1e-5)))]:
        block = blocks.PreActBlock(16, ordering=o)
        np.testing.assert_allclose(_apply(block, _init(block, x, zero=True), x), expect, atol=1e-6, err_msg=o)
    with pytest.raises(ValueError, match="ordering 'f'"):
        blocks.PreActBlock(16, ordering='f').init(jax.random.key(0), x)


def test_mbconv_residual_only_at_stride_1_same_channels():
    x = _x((1, 8, 8, 16))
    for block, shape, identity in [
        (blocks.InvertedResidual(16), (1, 8, 8, 16), True),
        (blocks.InvertedResidual(16, strides=2), (1, 4, 4, 16), False),
        (blocks.InvertedResidual(24), (1, 8, 8, 24), False),
    ]:
        y = _apply(block, _init(block, x, zero=('project_conv',)), x)
        assert y.shape == shape
        if identity:
            np.testing.assert_allclose(y, x, atol=1e-6)
        else:  # zero branch and no shortcut: all zeros
            assert np.all(np.asarray(y) == 0)


def test_channel_shuffle_is_a_permutation():
    g, c = 3, 12
    x = jnp.arange(c, dtype=jnp.float32).reshape(1, 1, 1, c)
    y = np.asarray(channel_shuffle(x, g)).ravel().astype(int)
    assert sorted(y) == list(range(c))
    # Channel j * (C/g) + i moves to i * g + j: output position p reads input p // g + (p % g) * C/g.
    assert list(y) == [p // g + (p % g) * (c // g) for p in range(c)]
    # ShuffleNet V2 stride 1: the passed-through half lands on the even channels after the shuffle.
    block = blocks.ShuffleUnitV2(8)
    x = _x((1, 4, 4, 8))
    y = _apply(block, _init(block, x), x)
    np.testing.assert_array_equal(y[..., 0::2], x[..., :4])


def test_basic_block_shortcut_a_matches_cifar_block():
    """blocks.BasicBlock(shortcut='A') is a drop-in for resnet_cifar.BasicBlock (same names, values)."""
    x = _x((2, 8, 8, 16))
    norm = bind_norm(BatchNorm, train=False)
    cifar = resnet_cifar.BasicBlock(32, strides=2, shortcut='A', norm=norm)
    shared = blocks.BasicBlock(32, strides=2, shortcut='A', norm=norm)
    v = _init(cifar, x)
    assert jax.tree.structure(_init(shared, x)) == jax.tree.structure(v)
    np.testing.assert_allclose(_apply(shared, v, x), _apply(cifar, v, x), rtol=1e-6, atol=1e-6)


def test_train_flag_and_prebound_norm():
    x = _x((4, 6, 6, 8))
    block = blocks.BasicBlock(8)
    v = _init(block, x)  # train=None + unbound BatchNorm: eval mode
    y_eval = _apply(block, v, x)
    np.testing.assert_allclose(_apply(block, v, x, train=False), y_eval, rtol=1e-6)
    y_train, upd = _apply(block, v, x, train=True, mutable=['batch_stats'])
    assert not np.allclose(y_train, y_eval)
    assert not np.allclose(upd['batch_stats']['bn1']['mean'], v['batch_stats']['bn1']['mean'])
    # A norm bound by the caller (as models do) is used as given when train is None.
    bound = blocks.BasicBlock(8, norm=bind_norm(BatchNorm, train=True))
    y_bound, _ = _apply(bound, v, x, mutable=['batch_stats'])
    np.testing.assert_allclose(y_bound, y_train, rtol=1e-5, atol=1e-6)


def test_norm_and_activation_knobs():
    v = jax.eval_shape(blocks.Bottleneck(4, norm=None).init, jax.random.key(0), _spec((1, 4, 4, 16)))
    assert 'batch_stats' not in v and all('bias' in v['params'][k] for k in ('conv1', 'conv2', 'conv3'))
    n, _ = _count(blocks.InceptionModule(8, 8, 8, 8, 8, 8, norm='group', activation='gelu'), (1, 8, 8, 16))
    assert n > 0
    for block in (blocks.DenseLayer(4, dropout_rate=0.5),):
        x = _x((2, 6, 6, 8))
        v = _init(block, x)
        y, _ = _apply(
            block, v, x, train=True, rngs={'dropout': jax.random.key(1, impl='rbg')}, mutable=['batch_stats']
        )
        assert np.all(np.isfinite(y))
