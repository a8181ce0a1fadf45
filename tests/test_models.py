"""Model zoo tests: exact parameter counts (shape-only init), tiny forward passes, registry errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.models import abstract_variables, count_params, create, list_models, param_counts_by_layer
from research.models import lenet, registry, resnet_cifar
from research.layers.common import BatchNorm, bind_norm

RESNET_COUNTS = {  # He et al. 2015, Table 6 (10 classes, option A).
    'resnet20': 269_722,
    'resnet32': 464_154,
    'resnet44': 658_586,
    'resnet56': 853_018,
    'resnet110': 1_727_962,
    'resnet1202': 19_421_274,
}
OPTION_B_EXTRA = 2_752
LENET5_LAYERS = {'C1': 156, 'S2': 12, 'C3': 1_516, 'S4': 32, 'C5': 48_120, 'F6': 10_164}


def _rng_images(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


# --------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize('name', list(RESNET_COUNTS))
def test_resnet_param_counts(name):
    v = abstract_variables(create(name, num_classes=10))
    assert count_params(v) == RESNET_COUNTS[name]
    assert 'batch_stats' in v  # running statistics exist but are not counted


@pytest.mark.parametrize('depth', [20, 56])
def test_option_b_adds_projection_params(depth):
    a = count_params(abstract_variables(create('resnet_cifar', depth=depth, shortcut='A')))
    b = count_params(abstract_variables(create('resnet_cifar', depth=depth, shortcut='B')))
    assert b - a == OPTION_B_EXTRA


def test_option_c_projects_every_block():
    v = abstract_variables(create('resnet20', shortcut='C'))
    # 1x1 conv + BN in all 9 blocks: 3*(16*16+32) + (16*32+64) + 2*(32*32+64) + (32*64+128) + 2*(64*64+128)
    assert count_params(v) - RESNET_COUNTS['resnet20'] == 14_240
    assert all('proj_conv' in v['params'][f'stage{s}_block{b}'] for s in (1, 2, 3) for b in (1, 2, 3))


@pytest.mark.parametrize('depth', [20, 32, 44, 56, 110])
def test_plain_nets_match_option_a_counts(depth):
    v = abstract_variables(create(f'plain{depth}'))
    assert count_params(v) == RESNET_COUNTS[f'resnet{depth}']


def test_lenet5_param_counts():
    v = abstract_variables(create('lenet5'), (1, 32, 32, 1))
    assert param_counts_by_layer(v) == LENET5_LAYERS
    assert count_params(v) == 60_000
    assert count_params(v, 'constants') == 840
    assert v['constants']['output']['rbf_centers'].shape == (10, 84)
    assert v['params']['C3']['kernel'].shape == (5, 5, 60)  # only the 60 connected kernels are stored


def test_lenet5_full_connection_knob():
    v = abstract_variables(create('lenet5', connection_table=False), (1, 28, 28, 1))
    counts = param_counts_by_layer(v)
    assert counts['C3'] == 2_416
    assert count_params(v) == 60_000 - 1_516 + 2_416


def test_lenet5_modern_param_count():
    v = abstract_variables(create('lenet5_modern'), (1, 28, 28, 1))
    assert count_params(v) == 156 + 2_416 + 48_120 + 10_164 + 850


# --------------------------------------------------------------------------- LeNet-5 details


def test_c3_connection_table_gradients():
    conv = lenet.PartialConv(16, (5, 5), lenet.C3_CONNECTIONS)
    x = _rng_images((1, 14, 14, 6))
    params = conv.init(jax.random.key(1), x)

    def per_map(x):  # sum of each C3 output map: [16]
        return conv.apply(params, x).sum(axis=(0, 1, 2))

    jac = jax.jacrev(per_map)(x)  # [16, 1, 14, 14, 6]
    sensitivity = np.asarray(jnp.abs(jac).sum(axis=(1, 2, 3)))  # [C3 map, S2 map]
    expected = lenet.connection_matrix().T
    assert np.all(sensitivity[~expected] == 0.0)
    assert np.all(sensitivity[expected] > 0.0)
    assert expected.sum() == 60


def test_lenet5_forward_and_rbf_logits():
    model = create('lenet5')
    x = _rng_images((2, 28, 28, 1))  # MNIST size: padded to 32x32
    variables = model.init(jax.random.key(0), x)
    logits, feats = model.apply(variables, x, return_features=True)
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
    assert {k: v.shape[1:3] for k, v in feats.items()} == {
        'c1': (28, 28),
        's2': (14, 14),
        'c3': (10, 10),
        's4': (5, 5),
        'c5': (1, 1),
    }
    # Logits are minus squared distances of F6 to fixed +-1 centres.
    assert np.all(logits <= 0)
    centers = np.asarray(variables['constants']['output']['rbf_centers'])
    assert set(np.unique(centers)) == {-1.0, 1.0}
    np.testing.assert_array_equal(centers @ centers.T, 84 * np.eye(10))  # orthogonal codes
    # Without the 'constants' collection the same deterministic centres are used.
    np.testing.assert_allclose(model.apply({'params': variables['params']}, x), logits, rtol=1e-6)
    # Already-32x32 input works too.
    assert model.apply(variables, _rng_images((2, 32, 32, 1))).shape == (2, 10)


def test_lenet_rejects_large_inputs():
    model = create('lenet5')
    with pytest.raises(ValueError, match=r'64x64.*data\.image_size=32'):
        model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 1)))


def test_lenet5_modern_forward():
    model = create('lenet5_modern', dropout_rate=0.5)
    x = _rng_images((2, 28, 28, 1))
    variables = model.init(jax.random.key(0), x)
    logits, feats = model.apply(variables, x, return_features=True)
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
    assert sorted(feats) == ['c1', 'c3', 'c5', 's2', 's4']
    train_logits = model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(1)})
    assert train_logits.shape == (2, 10) and not np.allclose(train_logits, logits)


# --------------------------------------------------------------------------- CIFAR ResNets


def test_shortcut_a_is_zero_padded_subsampled_identity():
    x = _rng_images((2, 8, 8, 16))
    y = resnet_cifar.shortcut_a(x, 32, strides=2)
    assert y.shape == (2, 4, 4, 32)
    np.testing.assert_array_equal(y[..., 8:24], x[:, ::2, ::2, :])
    assert np.all(y[..., :8] == 0) and np.all(y[..., 24:] == 0)
    assert resnet_cifar.shortcut_a(x, 16, strides=1) is x


def test_option_a_block_has_no_shortcut_params():
    norm = bind_norm(BatchNorm, train=False)
    block = resnet_cifar.BasicBlock(32, strides=2, shortcut='A', norm=norm)
    v = jax.eval_shape(block.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8, 8, 16), jnp.float32))
    assert sorted(v['params']) == ['bn1', 'bn2', 'conv1', 'conv2']
    assert count_params(v) == 3 * 3 * 16 * 32 + 3 * 3 * 32 * 32 + 4 * 32
    v = abstract_variables(create('resnet20'))
    assert not any('proj' in k for block in v['params'].values() for k in block)


@pytest.mark.parametrize('name,kwargs', [('resnet20', {}), ('resnet20', {'shortcut': 'B'}), ('plain20', {})])
def test_cifar_forward(name, kwargs):
    model = create(name, **kwargs)
    x = _rng_images((2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    logits, feats = model.apply(variables, x, return_features=True)
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
    assert {k: v.shape for k, v in feats.items()} == {
        'stem': (2, 32, 32, 16),
        'stage1': (2, 32, 32, 16),
        'stage2': (2, 16, 16, 32),
        'stage3': (2, 8, 8, 64),
    }
    # train=True uses batch statistics and updates the running averages.
    train_logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
    assert train_logits.shape == (2, 10) and np.all(np.isfinite(train_logits))
    old, new = variables['batch_stats']['stem_bn']['mean'], updates['batch_stats']['stem_bn']['mean']
    assert not np.allclose(old, new)
    assert jax.tree_util.tree_structure(updates['batch_stats']) == jax.tree_util.tree_structure(
        variables['batch_stats']
    )


def test_cifar_resnet_knobs():
    v = abstract_variables(create('resnet20', width=32, num_classes=100))
    assert v['params']['head']['kernel'].shape == (128, 100)
    v = abstract_variables(create('resnet20', norm=None))
    assert 'batch_stats' not in v and 'bias' in v['params']['stem_conv']
    v = abstract_variables(create('resnet20', norm='group', activation='gelu'))
    assert 'batch_stats' not in v


def test_bad_depth_error_names_depth():
    with pytest.raises(ValueError, match='21'):
        create('resnet_cifar', depth=21)
    with pytest.raises(ValueError, match='requires.*depth'):
        create('resnet_cifar')


# --------------------------------------------------------------------------- registry


def test_registry_lists_all_models():
    expected = {
        'lenet5',
        'lenet5_modern',
        'resnet_cifar',
        'plain_cifar',
        *RESNET_COUNTS,
        *(f'plain{d}' for d in (20, 32, 44, 56, 110)),
    }
    assert expected <= set(list_models())
    assert list_models() == sorted(list_models())


def test_registry_unknown_name():
    with pytest.raises(ValueError, match="unknown model 'resnet21'.*resnet20"):
        create('resnet21')


def test_registry_unknown_kwarg():
    with pytest.raises(ValueError, match="'dropuot'.*'resnet20'.*dropout_rate"):
        create('resnet20', dropuot=0.1)


def test_registry_register_and_overwrite():
    registry.register('_test_model', models.LeNet5)
    try:
        with pytest.raises(ValueError, match='already registered'):
            registry.register('_test_model', models.LeNet5Modern)
        registry.register('_test_model', models.LeNet5Modern, overwrite=True)
        assert isinstance(create('_test_model'), models.LeNet5Modern)
        with pytest.raises(TypeError):
            registry.register('_test_bad', lambda: None)
    finally:
        registry._REGISTRY.pop('_test_model', None)
    assert registry.get_constructor('resnet20') is resnet_cifar.ResNet20


def test_catalog_lists_the_package_models_not_run_time_registrations():
    """A model a user (or a test module) registers at run time is not part of docs/models.md: the
    catalog test failed in CI when another test module of the same worker had registered one."""
    from research.models import catalog

    before = catalog.names()
    registry.register('_test_runtime_model', models.LeNet5)
    try:
        assert '_test_runtime_model' in registry.list_models()
        assert catalog.names() == before
        assert len(before) == len(set(before)) and before == sorted(before) and 'resnet20' in before
    finally:
        registry._REGISTRY.pop('_test_runtime_model', None)
