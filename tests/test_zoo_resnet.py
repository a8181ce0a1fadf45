"""Residual family: ImageNet ResNet / ResNeXt / Wide / SE (research.models.resnet), pre-activation
ResNets (preact_resnet), CIFAR WRNs (wide_resnet), CIFAR ResNeXt-29 (resnext), and their
torchvision conversions (research.interop.tv_resnet).

Counts and MACs are the exact values of ../shared/reference/paper_targets.md (torchvision 0.29.1
metadata and hand counts); variable shapes come from jax.eval_shape (no real init of big models).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.layers.summary import summarize
from research.models import count_params, create
from research.models import preact_resnet, resnet, resnext, wide_resnet

# --------------------------------------------------------------------------- helpers

CIFAR_SIZE = 32
IMAGENET_SMALL = 64  # smallest convenient size for the ImageNet layouts (stride 32 -> 2x2)

CIFAR_MODELS = (
    set(wide_resnet.REGISTRY_ENTRIES)
    | set(resnext.REGISTRY_ENTRIES)
    | {'preact_resnet_cifar', 'preact_resnet110', 'preact_resnet164', 'preact_resnet1001'}
)
ALL_MODELS = sorted(
    set(resnet.REGISTRY_ENTRIES)
    | set(preact_resnet.REGISTRY_ENTRIES)
    | set(wide_resnet.REGISTRY_ENTRIES)
    | set(resnext.REGISTRY_ENTRIES)
)
# Traces that take > 10 s on one core (333 bottleneck units).
SLOW_TRACE = {'preact_resnet1001'}


def _size(name):
    return CIFAR_SIZE if name in CIFAR_MODELS else IMAGENET_SMALL


@functools.lru_cache(maxsize=None)
def _abstract(name, size=None, **kwargs):
    """(logits, variables) shapes of ``create(name, **kwargs).init_with_output`` via eval_shape."""
    model = create(name, **kwargs)
    s = size or _size(name)
    x = jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)
    return jax.eval_shape(lambda k, x: model.init_with_output(k, x), jax.random.key(0), x)


def _params(name, **kwargs):
    return count_params(_abstract(name, **kwargs)[1])


def _maybe_slow(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TRACE else n for n in names]


# --------------------------------------------------------------------------- (1) exact counts

TORCHVISION_PARAMS = {
    'resnet18': 11_689_512,
    'resnet34': 21_797_672,
    'resnet50': 25_557_032,
    'resnet101': 44_549_160,
    'resnet152': 60_192_808,
    'resnext50_32x4d': 25_028_904,
    'resnext101_32x8d': 88_791_336,
    'wide_resnet50_2': 68_883_240,
    # torchvision's metadata for the two that paper_targets.md leaves out
    'resnext101_64x4d': 83_455_272,
    'wide_resnet101_2': 126_886_696,
}
CIFAR_PARAMS = {
    'wrn16_1': 175_066,
    'wrn16_2': 691_674,
    'wrn16_4': 2_748_890,
    'wrn16_8': 10_961_370,
    'wrn16_10': 17_116_634,
    'wrn22_8': 17_158_106,
    'wrn22_10': 26_797_914,
    'wrn28_10': 36_479_194,
    'wrn28_12': 52_517_850,
    'wrn40_1': 563_930,
    'wrn40_2': 2_243_546,
    'wrn40_4': 8_949_210,
    'wrn40_8': 35_748_314,
    'preact_resnet164': 1_703_258,
    'preact_resnet1001': 10_327_706,
    'resnext29_8x64d': 34_426_698,
    'resnext29_16x64d': 68_155_210,
}
PARAMS = {**TORCHVISION_PARAMS, **CIFAR_PARAMS}


@pytest.mark.parametrize('name', _maybe_slow(sorted(PARAMS)))
def test_exact_param_counts(name):
    assert _params(name) == PARAMS[name]


def test_v1_same_params_as_v15():
    for depth in (50, 101, 152):
        assert _params(f'resnet{depth}_v1') == PARAMS[f'resnet{depth}']


# SE-ResNet: base + sum over blocks of 2 C^2/r + C/r + C (C = block output channels, r = 16).
# The SE paper's Table 2 (rounded): SE-ResNet-50 28.1M, -101 49.3M, -152 66.8M, SE-ResNeXt-50
# 27.6M, SE-ResNeXt-101 (32x4d) 49.0M; ours 28,088,024 / 49,326,872 / 66,821,848 / 27,559,896 /
# 48,955,416 (SE-ResNet-18 11,778,592, -34 21,958,868).
SE_LAYOUT = {
    'se_resnet18': ('resnet18', (2, 2, 2, 2), 1),
    'se_resnet34': ('resnet34', (3, 4, 6, 3), 1),
    'se_resnet50': ('resnet50', (3, 4, 6, 3), 4),
    'se_resnet101': ('resnet101', (3, 4, 23, 3), 4),
    'se_resnet152': ('resnet152', (3, 8, 36, 3), 4),
    'se_resnext50_32x4d': ('resnext50_32x4d', (3, 4, 6, 3), 4),
    'se_resnext101_32x4d': ('resnext101_32x4d', (3, 4, 23, 3), 4),
}
SE_PAPER_M = {
    'se_resnet50': 28.1,
    'se_resnet101': 49.3,
    'se_resnet152': 66.8,
    'se_resnext50_32x4d': 27.6,
    'se_resnext101_32x4d': 49.0,
}


@pytest.mark.parametrize('name', sorted(SE_LAYOUT))
def test_se_counts(name):
    base, layers, expansion = SE_LAYOUT[name]
    r = 16
    extra = sum(
        n * (2 * c * c // r + c // r + c) for n, c in zip(layers, (64 * expansion * 2**s for s in range(4)))
    )
    assert _params(name) == _params(base) + extra
    if name in SE_PAPER_M:
        assert round(_params(name) / 1e6, 1) == SE_PAPER_M[name]


def test_resnext101_32x4d_count():
    # The base of SE-ResNeXt-101 (not in torchvision; the value of the authors'/timm's model).
    assert _params('resnext101_32x4d') == 44_177_704


def test_preact_orderings_counts():
    """(d)/(e) share a count; (a)-(c) add a BN to the 2 or 3 projections and to the stem and drop
    the final BN (the difference does not depend on the depth)."""
    assert _params('preact_resnet110') == 1_730_522
    e20, e11 = (
        _params('preact_resnet_cifar', depth=20),
        _params('preact_resnet_cifar', depth=11, bottleneck=True),
    )
    for o in 'abcd':
        d20 = _params('preact_resnet_cifar', depth=20, ordering=o) - e20
        d11 = _params('preact_resnet_cifar', depth=11, bottleneck=True, ordering=o) - e11
        assert (d20, d11) == ((0, 0) if o == 'd' else (2 * (32 + 64), 2 * (64 + 128 + 256)))
    # The authors' Torch code gives the projections a bias: + output channels per projection.
    assert (
        _params('preact_resnet_cifar', depth=11, bottleneck=True, shortcut_bias=True) - e11 == 64 + 128 + 256
    )


# --------------------------------------------------------------------------- (2) MACs

MACS = {
    'resnet18': 1.814,
    'resnet34': 3.664,
    'resnet50': 4.089,
    'resnet101': 7.801,
    'resnet152': 11.514,
    'resnext50_32x4d': 4.230,
    'resnext101_32x8d': 16.414,
    'wide_resnet50_2': 11.398,
    'resnet50_v1': 3.858,  # the paper's stride placement: cheaper first 1x1s in the strided blocks
}


@pytest.mark.parametrize('name', sorted(MACS))
def test_macs(name):
    s = summarize(create(name), (1, 224, 224, 3))
    assert round(s.macs / 1e9, 3) == MACS[name]
    assert s.params == PARAMS.get(name.removesuffix('_v1'))


# --------------------------------------------------------------------------- (3) shapes and forwards


@pytest.mark.parametrize('name', _maybe_slow(ALL_MODELS))
def test_output_shape(name):
    logits, variables = _abstract(name)
    classes = 10 if name in CIFAR_MODELS else 1000
    assert logits.shape == (1, classes) and logits.dtype == jnp.float32
    assert set(variables) == {'params', 'batch_stats'}


def _random_variables(model, size, seed=0):
    """Variables of the right shapes filled with numpy draws (He-scaled kernels, random BN
    statistics): a real ``model.init`` compiles the initialisers of every leaf, which costs far
    more than the forward pass on CPU; the initialisers are tested once, in test_real_init."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(
        lambda k, x: model.init(k, x),
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
    )

    def fill(path, leaf):
        name = str(getattr(path[-1], 'key', path[-1]))
        shape = leaf.shape
        if name == 'kernel':
            return jnp.asarray(rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1])), leaf.dtype)
        if name in ('scale', 'var'):
            return jnp.asarray(0.5 + rng.random(shape), leaf.dtype)
        return jnp.asarray(0.1 * rng.standard_normal(shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _forward(model, size, train=False, seed=0, dropout_seed=2):
    x = jnp.asarray(np.random.default_rng(seed).standard_normal((2, size, size, 3)), jnp.float32)
    variables = _random_variables(model, size)
    if train:
        return jax.jit(
            lambda v, x, k: model.apply(v, x, train=True, mutable=['batch_stats'], rngs={'dropout': k})[0]
        )(variables, x, jax.random.key(dropout_seed))
    return jax.jit(model.apply)(variables, x)


# (name, kwargs, input size, also run in training mode)
FORWARDS = [
    ('resnet18', {}, 32, True),
    ('resnext50_32x4d', {'layers': (1, 1, 1, 1)}, 32, False),
    ('se_resnet50', {'layers': (1, 1, 1, 1)}, 32, False),
    ('resnet', {'layers': (1, 1, 1, 1), 'block': 'bottleneck', 'stride_on_1x1': True}, 32, False),
    ('preact_resnet18', {}, 32, False),
    ('preact_resnet_cifar', {'depth': 8}, 32, True),
    ('preact_resnet_cifar', {'depth': 11, 'bottleneck': True, 'ordering': 'a'}, 32, False),
    ('wrn16_2', {'dropout_rate': 0.3}, 32, False),
    ('resnext_cifar', {'depth': 11, 'cardinality': 4, 'base_width': 4}, 32, False),
]


@pytest.mark.parametrize(
    'name,kwargs,size,train', FORWARDS, ids=[f'{n}-{i}' for i, (n, *_) in enumerate(FORWARDS)]
)
def test_forward_finite(name, kwargs, size, train):
    model = create(name, num_classes=7, **kwargs)
    for t in (False, True) if train else (False,):
        out = _forward(model, size, train=t)
        assert out.shape == (2, 7) and out.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.std(out)) > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    'name',
    [
        'resnet34',
        'resnet50',
        'resnet101',
        'resnext101_32x8d',
        'wide_resnet50_2',
        'wrn28_10',
        'preact_resnet164',
    ],
)
def test_forward_finite_large(name):
    out = _forward(create(name, num_classes=5), 32)
    assert out.shape == (2, 5) and bool(jnp.all(jnp.isfinite(out)))


def test_wrn_dropout_is_active_only_in_training():
    model = create('wrn', depth=10, widen_factor=1, dropout_rate=0.5)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
    v = _random_variables(model, 32)

    @jax.jit
    def run(v, k):
        return model.apply(v, x, train=True, mutable=['batch_stats'], rngs={'dropout': k})[0]

    a, b = run(v, jax.random.key(0)), run(v, jax.random.key(1))
    assert not np.allclose(a, b)
    evaluate = jax.jit(lambda v: model.apply(v, x))
    no_dropout = create('wrn', depth=10, widen_factor=1, dropout_rate=0.0)
    np.testing.assert_array_equal(evaluate(v), jax.jit(lambda v: no_dropout.apply(v, x))(v))


def test_real_init():
    """The initialisers themselves, on one small model: He fan-out kernels, BN (1, 0), and
    ``zero_init_residual`` zeroing the last BN scale of every block."""
    model = create('resnet', layers=(1, 1, 1, 1), block='bottleneck', zero_init_residual=True, num_classes=3)
    x = jnp.zeros((1, 32, 32, 3))
    v = jax.jit(model.init)(jax.random.key(0, impl='unsafe_rbg'), x)
    p = v['params']
    for s in range(1, 5):
        blk = p[f'layer{s}_block0']
        assert not np.any(np.asarray(blk['bn3']['scale']))
        assert np.all(np.asarray(blk['bn2']['scale']) == 1) and not np.any(np.asarray(blk['bn2']['bias']))
    k = np.asarray(p['layer3_block0']['conv2']['kernel'])  # 3x3x256x256, fan_out = 9 * 256
    assert k.shape == (3, 3, 256, 256) and abs(k.std() / np.sqrt(2.0 / (9 * 256)) - 1) < 0.02
    out = jax.jit(model.apply)(v, jax.random.normal(jax.random.key(1), (2, 32, 32, 3)))
    assert out.shape == (2, 3) and bool(jnp.all(jnp.isfinite(out)))


def test_invalid_configs_raise():
    with pytest.raises(ValueError, match='6n\\+2'):
        create('preact_resnet_cifar', depth=21)
    with pytest.raises(ValueError, match='9n\\+2'):
        create('preact_resnet_cifar', depth=57, bottleneck=True)
    with pytest.raises(ValueError, match='6N\\+4'):
        create('wrn', depth=20)
    with pytest.raises(ValueError, match='9n\\+2'):
        create('resnext_cifar', depth=30)
    with pytest.raises(ValueError, match='multi_grid'):
        create('resnet50', multi_grid=(1, 2))
    with pytest.raises(ValueError, match='ordering'):
        create('preact_resnet18', ordering='f')
    with pytest.raises(ValueError, match='block'):
        create('resnet', block='triple')


# --------------------------------------------------------------------------- (4) feature strides


def _feature_shapes(name, size, **kwargs):
    model = create(name, **kwargs)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)

    def f(k, x):
        v = model.init(k, x)
        return model.apply(v, x, return_features=True)

    return jax.eval_shape(f, jax.random.key(0), x)


@pytest.mark.parametrize(
    'name', ['resnet18', 'resnet50', 'resnext50_32x4d', 'se_resnet50', 'preact_resnet50']
)
def test_feature_strides(name):
    size = 64
    logits, feats = _feature_shapes(name, size)
    assert logits.shape == (1, 1000)
    assert sorted(feats) == [f'stage{i}' for i in range(1, 6)]
    widths = (64, 64, 128, 256, 512) if name in ('resnet18',) else (64, 256, 512, 1024, 2048)
    for i, c in zip(range(1, 6), widths):
        assert feats[f'stage{i}'].shape == (1, size // 2**i, size // 2**i, c)


@pytest.mark.parametrize(
    'name,dilate,strides',
    [
        ('resnet50', (False, True, True), (2, 4, 8, 8, 8)),  # DeepLab output stride 8
        ('resnet101', (False, False, True), (2, 4, 8, 16, 16)),  # output stride 16
        ('resnet18', (False, True, True), (2, 4, 8, 8, 8)),  # basic blocks dilate too
    ],
)
def test_dilated_feature_strides(name, dilate, strides):
    size = 64
    _, feats = _feature_shapes(name, size, replace_stride_with_dilation=dilate, multi_grid=None)
    for i, s in zip(range(1, 6), strides):
        assert feats[f'stage{i}'].shape[1:3] == (size // s, size // s)


def test_multi_grid_dilations():
    """DeepLabv3 multi-grid: layer4 block i dilates by rate * multi_grid[i] (rate 2 at OS 16)."""
    model = create('resnet50', replace_stride_with_dilation=(False, False, True), multi_grid=(1, 2, 4))
    x = jnp.zeros((1, 64, 64, 3))
    seen = {}

    def record(next_fun, args, kwargs, context):
        m = context.module
        if context.method_name == '__call__' and m.name == 'conv2' and m.parent.name.startswith('layer4'):
            seen[m.parent.name] = m.kernel_dilation
        return next_fun(*args, **kwargs)

    import flax.linen as nn

    with nn.intercept_methods(record):
        jax.eval_shape(lambda k: model.init(k, x), jax.random.key(0))
    assert seen == {'layer4_block0': (2, 2), 'layer4_block1': (4, 4), 'layer4_block2': (8, 8)}


@pytest.mark.parametrize(
    'name,kwargs,stages',
    [
        ('preact_resnet110', {}, (16, 32, 64)),
        ('preact_resnet164', {}, (64, 128, 256)),
        ('wrn16_4', {}, (64, 128, 256)),
        ('resnext29_8x64d', {}, (256, 512, 1024)),
    ],
)
def test_cifar_feature_maps(name, kwargs, stages):
    _, feats = _feature_shapes(name, 32, **kwargs)
    assert sorted(feats) == ['stage1', 'stage2', 'stage3', 'stem']
    for i, c in enumerate(stages):
        assert feats[f'stage{i + 1}'].shape == (1, 32 // 2**i, 32 // 2**i, c)


# --------------------------------------------------------------------------- (5, 6) torchvision


def _tvi():
    pytest.importorskip('torch')
    pytest.importorskip('torchvision')
    from research.interop import torchvision as tvi

    return tvi


@pytest.mark.parametrize('name', ['resnet18', 'resnext50_32x4d'])
def test_torchvision_parity_light(name):
    _tvi()
    from parity_helper import assert_parity

    assert_parity(name, input_size=(64, 64))


def _tv_names():
    from research.interop import tv_resnet

    return sorted(tv_resnet.CONVERSIONS)


@pytest.mark.slow
@pytest.mark.parametrize('name', _tv_names())
def test_torchvision_parity_full(name):
    _tvi()
    from parity_helper import assert_parity

    assert_parity(name)


def test_conversions_registered_and_flagged():
    from research.interop import tv_resnet

    assert set(tv_resnet.CONVERSIONS) == set(TORCHVISION_PARAMS)
    heavy = {n for n, c in tv_resnet.CONVERSIONS.items() if c.heavy}
    assert heavy == {'resnet101', 'resnet152', 'resnext101_32x8d', 'resnext101_64x4d'} | {
        'wide_resnet50_2',
        'wide_resnet101_2',
    }


def test_torchvision_roundtrip_resnet18():
    tvi = _tvi()
    import torch

    tm = tvi.randomize_torch_model(tvi.torchvision_model('resnet18'), seed=3)
    variables = tvi.from_torchvision('resnet18', tm)
    sd = tvi.to_torchvision('resnet18', variables)
    fresh = tvi.torchvision_model('resnet18')
    fresh.load_state_dict(sd, strict=True)
    ref = tm.state_dict()
    for k, v in fresh.state_dict().items():
        if not k.endswith('num_batches_tracked'):
            assert torch.equal(v, ref[k]), k


def test_dilated_resnet50_matches_torchvision():
    """replace_stride_with_dilation has torchvision's semantics (first block keeps the old rate)."""
    _tvi()
    import torchvision
    from parity_helper import assert_parity

    from research.interop.torchvision import Conversion
    from research.interop.tv_resnet import rename_resnet

    dilate = (False, True, True)
    conv = Conversion(
        model='resnet50',
        rename=rename_resnet,
        model_kwargs={'replace_stride_with_dilation': dilate},
        input_size=(64, 64),
    )
    tm = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=list(dilate)).eval()
    assert_parity(conv, torch_model=tm)


# --------------------------------------------------------------------------- experiment configs

CONFIGS = [
    ('experiments.classification.resnet_imagenet', 'model=resnext50_32x4d,zero_init', 'resnext50_32x4d'),
    ('experiments.classification.resnet_imagenet', 'model=resnet18,quick', 'resnet18'),
    ('experiments.classification.preact_resnet_cifar', 'depth=1001,folder', 'preact_resnet_cifar'),
    ('experiments.classification.wrn_cifar', 'depth=28,k=10,dropout=0.3', 'wrn'),
    ('experiments.classification.resnext_cifar', 'cardinality=16,quick', 'resnext_cifar'),
    ('experiments.ablations.preact_orderings', 'depth=164,quick', 'preact_resnet_cifar'),
    ('experiments.ablations.preact_orderings', 'depth=20,quick,train_images=1000', 'preact_resnet_cifar'),
    ('experiments.ablations.wrn_depth_width', 'quick', 'wrn'),
]


@pytest.mark.parametrize('module,arg,model', CONFIGS, ids=[f'{m.split(".")[-1]}-{a}' for m, a, _ in CONFIGS])
def test_experiment_configs(module, arg, model):
    import importlib

    from research.config import validate_config
    from research.models import get_constructor
    from research.models.registry import _module_class

    m = importlib.import_module(module)
    c = m.get_config(arg)
    validate_config(c)
    assert c.model.name == model
    kwargs = {k: v for k, v in c.model.items() if k != 'name'}
    built = create(model, **kwargs)  # the registry checks the keys
    assert isinstance(built, _module_class(get_constructor(model)))
    if module.endswith('preact_resnet_cifar'):
        assert (built.depth, built.bottleneck) == (1001, True)
    if module.endswith('wrn_cifar'):
        assert c.optimizer.name == 'nesterov' and c.schedule.boundaries == (
            '60 epochs',
            '120 epochs',
            '160 epochs',
        )
    if hasattr(m, 'get_sweep'):
        for overrides in m.get_sweep(arg):
            keys = {k.removeprefix('model.'): v for k, v in overrides.items() if k.startswith('model.')}
            create(model, **{**kwargs, **keys})
        tables = m.get_table(arg)
        for t in tables if isinstance(tables, list) else [tables]:
            assert t['rows'].startswith('model.')


def test_wrn_ablation_table_matches_real_counts():
    from experiments.ablations import wrn_depth_width

    params = next(t for t in wrn_depth_width.get_table() if t['name'] == 'wrn_params')
    for d, k in wrn_depth_width.NETS:
        if (d, k) in params['paper']:
            assert _params(f'wrn{d}_{k}') == params['paper'][(d, k)]


@pytest.mark.parametrize('module', ['resnet_degradation', 'wrn_depth_width', 'preact_orderings'])
def test_ablation_subset_arguments(module):
    """train_images / test_images select TFDS sub-splits (the first N images); 0 keeps the whole splits."""
    import importlib

    m = importlib.import_module(f'experiments.ablations.{module}')
    c = m.get_config('quick,train_images=5000,test_images=2000')
    assert (c.data.train_split, c.data.eval_split) == ('train[:5000]', 'test[:2000]')
    c = m.get_config('quick,train_images=0')
    assert (c.data.train_split, c.data.eval_split) == ('train', 'test')


def test_preact_orderings_reduced_depth():
    """A smaller 6n+2 depth runs basic units without the 110-layer warm-up and shows ResNet-110's
    paper numbers, labelled as such; other depths are refused by name."""
    from experiments.ablations import preact_orderings

    c = preact_orderings.get_config('depth=20,quick')
    assert (c.model.depth, c.model.bottleneck, c.schedule.warmup) == (20, False, '0 steps')
    assert preact_orderings.get_config('depth=110,quick').schedule.warmup == '400 steps'
    table = preact_orderings.get_table('depth=20')
    assert table['paper']['e'] == 6.37 and table['paper_label'] == 'paper ResNet-110 (median of 5)'
    assert preact_orderings.get_table('depth=164')['paper']['e'] == 5.46
    for bad in (21, 4, 1001):
        with pytest.raises(ValueError, match=f'got {bad}'):
            preact_orderings.get_config(f'depth={bad}')
