"""research.layers.blocks.conv_norm_act, research.layers.stems.imagenet_stem and
research.layers.heads.classifier_head: the same parameters and values as the hand-written layers
they replace, and each family's stem geometry."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.layers import classifier_head, conv_norm_act, imagenet_stem
from research.layers.common import BatchNorm, Conv, bind_norm
from research.models.googlenet import BasicConv2d


def _shapes(variables):
    return {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_flatten_with_path(variables)[0]}


class _Shared(nn.Module):
    @nn.compact
    def __call__(self, x):
        norm = bind_norm(BatchNorm, True)
        return conv_norm_act(
            x, Conv, norm, nn.relu, 8, (3, 5), strides=2, dilation=(1, 2), name='c', norm_name='b'
        )


class _ByHand(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = Conv(
            8,
            (3, 5),
            strides=(2, 2),
            padding=((1, 1), (4, 4)),
            kernel_dilation=(1, 2),
            use_bias=False,
            name='c',
        )(x)
        return nn.relu(bind_norm(BatchNorm, True)(name='b')(x))


def test_conv_norm_act_is_the_hand_written_unit():
    x = jax.random.normal(jax.random.key(0), (2, 9, 11, 3))
    a, b = _Shared(), _ByHand()
    va, vb = a.init(jax.random.key(1), x), b.init(jax.random.key(1), x)
    assert (
        _shapes(va)
        == _shapes(vb)
        == {
            "['batch_stats']['b']['mean']": (8,),
            "['batch_stats']['b']['var']": (8,),
            "['params']['b']['bias']": (8,),
            "['params']['b']['scale']": (8,),
            "['params']['c']['kernel']": (3, 5, 3, 8),
        }
    )
    ya, _ = a.apply(va, x, mutable=['batch_stats'])
    yb, _ = b.apply(va, x, mutable=['batch_stats'])
    assert ya.shape == (2, 5, 6, 8)
    np.testing.assert_array_equal(ya, yb)


@pytest.mark.parametrize(
    'padding,kernel,out',
    [
        (None, 3, (8, 8)),  # torch's k // 2
        (0, 3, (6, 6)),
        ((1, 0), 3, (8, 6)),
        ('VALID', 3, (6, 6)),
        (((2, 0), (0, 0)), 3, (8, 6)),
        (None, (1, 7), (8, 8)),
    ],
)
def test_conv_norm_act_padding_forms(padding, kernel, out):
    class M(nn.Module):
        @nn.compact
        def __call__(self, x):
            return conv_norm_act(x, Conv, None, None, 4, kernel, padding=padding, name='c', norm_name='b')

    y, _ = jax.eval_shape(lambda x: M().init_with_output(jax.random.key(0), x), jnp.zeros((1, 8, 8, 2)))
    assert y.shape[1:3] == out


@pytest.mark.parametrize(
    'norm,use_bias,params',
    [
        (None, None, {'c': {'bias', 'kernel'}}),  # no norm: the conv gets the bias
        (BatchNorm, None, {'b': {'bias', 'scale'}, 'c': {'kernel'}}),
        (BatchNorm, True, {'b': {'bias', 'scale'}, 'c': {'bias', 'kernel'}}),  # SegNet's conv + bias -> BN
        (None, False, {'c': {'kernel'}}),  # pre-activation CIFAR stem of ordering 'e'
    ],
)
def test_conv_norm_act_bias(norm, use_bias, params):
    class M(nn.Module):
        @nn.compact
        def __call__(self, x):
            n = bind_norm(norm, False)
            return conv_norm_act(x, Conv, n, nn.relu, 4, 3, use_bias=use_bias, name='c', norm_name='b')

    v = jax.eval_shape(M().init, jax.random.key(0), jnp.zeros((1, 8, 8, 2)))
    assert {k: set(p) for k, p in v['params'].items()} == params


def _stem(**kw):
    class Stem(nn.Module):
        @nn.compact
        def __call__(self, x):
            norm = bind_norm(BatchNorm, False)
            return imagenet_stem(x, Conv, norm, nn.relu, 16, **kw)

    return Stem()


@pytest.mark.parametrize(
    'kw,size,stem,pooled,params',
    [
        ({}, 224, 112, 56, {'conv1', 'bn1'}),  # ResNet, pre-activation ResNet
        ({'name': 'conv0', 'norm_name': 'norm0'}, 224, 112, 56, {'conv0', 'norm0'}),  # DenseNet
        ({'kernel': 3, 'norm_name': 'conv1_bn'}, 224, 112, 56, {'conv1', 'conv1_bn'}),  # ShuffleNet, DPN-68
        # SqueezeNet 1.0: 7x7/2 valid (224 -> 109), ceil-mode pool (-> 54), as torchvision
        (
            {'padding': 'VALID', 'pool_padding': 0, 'ceil_mode': True, 'norm_name': 'conv1_bn'},
            224,
            109,
            54,
            {'conv1', 'conv1_bn'},
        ),
        # GoogLeNet: BasicConv2d nests conv and bn under conv1; ceil-mode pool without padding
        (
            {'block': functools.partial(BasicConv2d, norm=BatchNorm), 'pool_padding': 0, 'ceil_mode': True},
            224,
            112,
            56,
            {'conv1'},
        ),
    ],
)
def test_imagenet_stem_geometry_and_names(kw, size, stem, pooled, params):
    (s, p), v = jax.eval_shape(
        lambda x: _stem(**kw).init_with_output(jax.random.key(0), x), jnp.zeros((1, size, size, 3))
    )
    assert s.shape == (1, stem, stem, 16) and p.shape == (1, pooled, pooled, 16)
    assert set(v['params']) == params
    if 'block' in kw:
        assert set(v['params']['conv1']) == {'conv', 'bn'}


def test_imagenet_stem_values_are_conv_norm_act_then_max_pool():
    x = jax.random.normal(jax.random.key(0), (1, 33, 33, 3))
    m = _stem(kernel=3, norm_name='conv1_bn')
    v = m.init(jax.random.key(1), x)
    s, p = m.apply(v, x)
    k = v['params']['conv1']['kernel']
    bn = v['params']['conv1_bn']
    ref = jax.lax.conv_general_dilated(
        x, k, (2, 2), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
    ref = nn.relu(ref / jnp.sqrt(1 + 1e-5) * bn['scale'] + bn['bias'])
    np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-5)
    pooled = jax.lax.reduce_window(
        ref, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )
    np.testing.assert_allclose(p, pooled, rtol=1e-5, atol=1e-5)


def test_classifier_head_is_pool_dropout_dense_in_float32():
    class Head(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return classifier_head(x, 5, dropout_rate=0.5, train=train, dtype=jnp.bfloat16, name='classifier')

    x = jax.random.normal(jax.random.key(0), (3, 4, 4, 6))
    v = Head().init(jax.random.key(1), x)
    assert _shapes(v) == {
        "['params']['classifier']['bias']": (5,),
        "['params']['classifier']['kernel']": (6, 5),
    }
    y = Head().apply(v, x)
    assert y.dtype == jnp.float32
    p = v['params']['classifier']
    ref = nn.Dense(5, dtype=jnp.bfloat16).apply({'params': p}, jnp.mean(x, axis=(1, 2)))
    np.testing.assert_array_equal(y, ref.astype(jnp.float32))
    y_train = Head().apply(v, x, train=True, rngs={'dropout': jax.random.key(2)})
    assert not np.array_equal(y_train, y)  # dropout is on in training
