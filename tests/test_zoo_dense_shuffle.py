"""DenseNet, DPN and ShuffleNet (v1, v2): exact parameter counts and MACs, output shapes, feature
strides, tiny forward passes, and torchvision weight conversion / output parity."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.layers.summary import summarize
from research.models import count_params, create
from research.models import densenet, dpn, shufflenet

# torchvision 0.29.1 (1000 classes): params, GMACs at 224 px (../shared/reference/paper_targets.md;
# shufflenet_v2_x1_5 / x2_0 from torchvision's weight metadata).
TORCHVISION = {
    'densenet121': (7_978_856, 2.834),
    'densenet161': (28_681_000, 7.728),
    'densenet169': (14_149_480, 3.360),
    'densenet201': (20_013_928, 4.291),
    'shufflenet_v2_x0_5': (1_366_792, 0.040),
    'shufflenet_v2_x1_0': (2_278_604, 0.145),
    'shufflenet_v2_x1_5': (3_503_624, 0.296),
    'shufflenet_v2_x2_0': (7_393_996, 0.583),
}
# Huang et al. 2017, Table 2 (10 classes): 0.8M / 15.3M / 25.6M and the plain DenseNet's 1.0M.
CIFAR_DENSENET = {
    'densenet_bc_100_12': 769_162,
    'densenet_bc_250_24': 15_324_406,
    'densenet_bc_190_40': 25_624_430,
    'densenet_40_12': 1_019_722,
}
CIFAR_DENSENET_PAPER_M = {
    'densenet_bc_100_12': 0.8,
    'densenet_bc_250_24': 15.3,
    'densenet_bc_190_40': 25.6,
    'densenet_40_12': 1.0,
}
# timm's DPN counts (1000 classes); the paper's Table 2: 37.7M / 61.6M / 79.3M params and
# 6.5 / 11.7 / 16.0 GFLOPs (multiply-adds) for DPN-92 / 98 / 131.
DPN_COUNTS = {
    'dpn68': 12_611_602,
    'dpn92': 37_668_392,
    'dpn98': 61_570_728,
    'dpn107': 86_917_800,
    'dpn131': 79_254_504,
}
DPN_PAPER = {'dpn92': (37.7, 6.5), 'dpn98': (61.6, 11.7), 'dpn131': (79.3, 16.0)}
# Zhang et al. 2018, Table 1: complexity (MFLOPs = multiply-adds) of ShuffleNet 1x per group count,
# and its Stage 2 output channels.
SHUFFLE_V1_MFLOPS = {1: 143, 2: 140, 3: 137, 4: 133, 8: 137}
SHUFFLE_V1_STAGE2 = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}

CIFAR_MODELS = ['densenet_cifar', *CIFAR_DENSENET]
IMAGENET_MODELS = [
    'densenet',
    *[n for n in TORCHVISION if n.startswith('densenet')],
    'densenet264',
    'dpn',
    *DPN_COUNTS,
    'shufflenet_v1',
    *[f'shufflenet_v1_g{g}' for g in SHUFFLE_V1_MFLOPS],
    'shufflenet_v2',
    *[n for n in TORCHVISION if n.startswith('shufflenet')],
]
MY_MODELS = set(densenet.REGISTRY_ENTRIES) | set(dpn.REGISTRY_ENTRIES) | set(shufflenet.REGISTRY_ENTRIES)


def _input_size(name: str) -> int:
    return 32 if name in CIFAR_MODELS else 64


def _abstract(name: str, size: int | None = None, **kwargs):
    """(logits, features) and variables of ``create(name)`` on a (1, size, size, 3) input, shapes only
    (cached: counts, output shapes and features share one trace per model)."""
    return _abstract_cached(name, size or _input_size(name), tuple(sorted(kwargs.items())))


@functools.lru_cache(maxsize=None)
def _abstract_cached(name: str, size: int, kwargs: tuple):
    model = create(name, **dict(kwargs))
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(
        lambda k, x: model.init_with_output(k, x, return_features=True), jax.random.key(0), x
    )


def _params(name: str, **kwargs) -> int:
    return count_params(_abstract(name, **kwargs)[1])


def test_every_registered_model_is_covered():
    assert MY_MODELS == set(CIFAR_MODELS) | set(IMAGENET_MODELS)


# --------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize('name', list(TORCHVISION))
def test_torchvision_param_counts(name):
    assert _params(name) == TORCHVISION[name][0]


@pytest.mark.parametrize('name', list(CIFAR_DENSENET))
def test_cifar_densenet_param_counts(name):
    n = _params(name)
    assert n == CIFAR_DENSENET[name]
    assert round(n / 1e6, 1) == CIFAR_DENSENET_PAPER_M[name]


@pytest.mark.parametrize('name', list(DPN_COUNTS))
def test_dpn_param_counts(name):
    n = _params(name)
    assert n == DPN_COUNTS[name]
    if name in DPN_PAPER:
        assert round(n / 1e6, 1) == DPN_PAPER[name][0]


def test_generic_entries_default_to_the_named_variants():
    assert _params('densenet') == TORCHVISION['densenet121'][0]
    assert _params('dpn') == DPN_COUNTS['dpn92']
    assert _params('densenet_cifar') == CIFAR_DENSENET['densenet_bc_100_12']
    assert _params('shufflenet_v1') == _params('shufflenet_v1_g3')
    assert _params('shufflenet_v2') == TORCHVISION['shufflenet_v2_x1_0'][0]


def test_dpn_final_activation_is_parameter_free():
    assert _params('dpn68', final_activation='relu') == DPN_COUNTS['dpn68']


# --------------------------------------------------------------------------- MACs

_SLOW_MACS = {'densenet161', 'densenet169', 'densenet201', 'dpn98', 'dpn131'}


# The three larger DenseNets trace for several seconds each: slow (their counts are checked above).
@pytest.mark.parametrize(
    'name',
    [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_MACS else n for n in TORCHVISION],
)
def test_torchvision_macs(name):
    s = summarize(create(name), (1, 224, 224, 3))
    assert s.params == TORCHVISION[name][0]
    assert round(s.macs / 1e9, 3) == TORCHVISION[name][1]


@pytest.mark.parametrize(
    'name', [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_MACS else n for n in DPN_PAPER]
)
def test_dpn_macs_match_paper(name):
    s = summarize(create(name), (1, 224, 224, 3))
    assert round(s.macs / 1e9, 1) == DPN_PAPER[name][1]


@pytest.mark.parametrize('groups', list(SHUFFLE_V1_MFLOPS))
def test_shufflenet_v1_macs_match_table1(groups):
    """Table 1's complexity counts the convolutions only (the FC adds 1000 x 4 x Stage-2 channels):
    the conv MACs must round to the paper's integer MFLOPs (tolerance 0.5M, its rounding)."""
    s = summarize(create(f'shufflenet_v1_g{groups}'), (1, 224, 224, 3))
    fc = 1000 * 4 * SHUFFLE_V1_STAGE2[groups]
    assert abs((s.macs - fc) / 1e6 - SHUFFLE_V1_MFLOPS[groups]) <= 0.5


# --------------------------------------------------------------------------- shapes and features


@pytest.mark.parametrize('name', sorted(MY_MODELS))
def test_output_shape(name):
    (logits, feats), variables = _abstract(name)
    num_classes = 10 if name in CIFAR_MODELS else 1000
    assert logits.shape == (1, num_classes) and logits.dtype == jnp.float32
    assert 'batch_stats' in variables


@pytest.mark.parametrize(
    'name', ['densenet121', 'densenet161', 'dpn68', 'dpn92', 'shufflenet_v1_g3', 'shufflenet_v2_x1_0']
)
def test_feature_strides(name):
    size = 64
    (_, feats), _ = _abstract(name, size)
    assert sorted(feats) == [f'stage{i}' for i in range(1, 6)]
    for i in range(1, 6):
        assert feats[f'stage{i}'].shape[:3] == (1, size // 2**i, size // 2**i), (name, i)


def test_densenet121_feature_channels():
    """Table 1: 64 stem features, blocks of 6/12/24/16 layers with k=32, compression 0.5."""
    (_, feats), _ = _abstract('densenet121', 64)
    channels = [feats[f'stage{i}'].shape[-1] for i in range(1, 6)]
    assert channels == [64, 64 + 6 * 32, 128 + 12 * 32, 256 + 24 * 32, 512 + 16 * 32]


@pytest.mark.parametrize('name', CIFAR_MODELS)
def test_cifar_densenet_features(name):
    model = create(name)
    (_, feats), _ = _abstract(name, 32)
    assert sorted(feats) == ['stage1', 'stage2', 'stage3', 'stem']
    assert [feats[k].shape[1] for k in ('stem', 'stage1', 'stage2', 'stage3')] == [32, 32, 16, 8]
    # Sec. 3: C_out = C_in + n k per block; transitions keep floor(theta C).
    k, n, theta = model.growth_rate, model.layers_per_block, model.compression
    c = feats['stem'].shape[-1]
    assert c == (2 * k if model.bottleneck else 16)
    for stage in ('stage1', 'stage2', 'stage3'):
        c = c + n * k
        assert feats[stage].shape[-1] == c
        c = int(theta * c)


def test_cifar_densenet_rejects_bad_depth():
    with pytest.raises(ValueError, match='6n \\+ 4'):
        create('densenet_cifar', depth=101)
    with pytest.raises(ValueError, match='3n \\+ 4'):
        create('densenet_cifar', depth=41, bottleneck=False)


def test_dpn_feature_channels():
    """DPN-92 (Table 1): residual widths 256..2048 plus 3 + (n - 1) dense increments per stage."""
    (_, feats), _ = _abstract('dpn92', 64)
    m = create('dpn92')
    expected = [64] + [256 * 2**s + (n + 2) * inc for s, (n, inc) in enumerate(zip(m.k_sec, m.inc_sec))]
    assert [feats[f'stage{i}'].shape[-1] for i in range(1, 6)] == expected


@pytest.mark.parametrize('groups', list(SHUFFLE_V1_STAGE2))
def test_shufflenet_v1_channels(groups):
    (_, feats), _ = _abstract(f'shufflenet_v1_g{groups}', 64)
    c = SHUFFLE_V1_STAGE2[groups]
    assert [feats[f'stage{i}'].shape[-1] for i in range(1, 6)] == [24, 24, c, 2 * c, 4 * c]


@pytest.mark.parametrize(
    'groups,scale,expected',
    [(3, 0.5, (12, 120)), (8, 0.5, (16, 192)), (3, 2.0, (48, 480)), (4, 0.25, (8, 64)), (8, 0.25, (8, 96))],
)
def test_shufflenet_v1_scale(groups, scale, expected):
    """Table 2's "s x": channels scaled by s, rounded to what the group convs can split."""
    model = create('shufflenet_v1', groups=groups, scale=scale)
    stem, c2, c3, c4 = model.channels
    assert (stem, c2) == expected and (c3, c4) == (2 * c2, 4 * c2)
    (logits, feats), _ = _abstract('shufflenet_v1', 64, groups=groups, scale=scale)
    assert logits.shape == (1, 1000) and feats['stage5'].shape == (1, 2, 2, 4 * c2)


def test_shufflenet_v2_unit_names_cover_torchvision_branches():
    _, variables = _abstract('shufflenet_v2_x0_5', 64)
    params = variables['params']
    assert set(params['stage2_unit0']) == {
        'b1_dw',
        'b1_bn1',
        'b1_conv',
        'b1_bn2',
        'b2_conv1',
        'b2_bn1',
        'b2_dw',
        'b2_bn2',
        'b2_conv2',
        'b2_bn3',
    }
    assert set(params['stage2_unit1']) == {'b2_conv1', 'b2_bn1', 'b2_dw', 'b2_bn2', 'b2_conv2', 'b2_bn3'}
    assert sum(k.startswith('stage3_unit') for k in params) == 8


# --------------------------------------------------------------------------- real forward passes


def _numpy_variables(abstract, seed=0):
    """Variables for ``abstract`` (shapes) drawn with numpy: He-normal kernels (fan-in), unit BN
    scales, random BN statistics. Much cheaper than ``model.init``, whose per-shape RNG programs
    take minutes to compile for DenseNets on CPU; the real init is exercised in the train-mode test."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = str(getattr(path[-1], 'key', path[-1]))
        shape = leaf.shape
        if name == 'kernel':
            fan_in = int(np.prod(shape[:-1]))
            return rng.standard_normal(shape).astype(np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        if name == 'var':
            return (0.5 + rng.random(shape)).astype(np.float32)
        if name == 'scale':
            return np.ones(shape, np.float32)
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)  # bias, mean

    return jax.tree_util.tree_map_with_path(draw, abstract)


def _forward(name, size, **kwargs):
    model = create(name, **kwargs)
    x = jax.random.normal(jax.random.key(0), (2, size, size, 3), jnp.float32)
    variables = _numpy_variables(_abstract(name, size, **kwargs)[1])
    return jax.jit(lambda v, x: model.apply(v, x))(variables, x)


# One small model per family (a DenseNet runs for real in the train-mode test and the parity test).
@pytest.mark.parametrize('name,size', [('dpn68', 32), ('shufflenet_v1_g8', 32), ('shufflenet_v2_x0_5', 32)])
def test_forward_small(name, size):
    logits = _forward(name, size)
    assert logits.shape == (2, 10 if name in CIFAR_MODELS else 1000)
    assert np.all(np.isfinite(np.asarray(logits)))
    assert not np.allclose(logits[0], logits[1])


def test_forward_train_mode_updates_batch_stats():
    """A real ``model.init`` and train-mode steps (batch statistics, dropout) on a tiny DenseNet-BC.
    RBG keys: threefry's random programs take seconds each to compile on CPU."""
    model = create('densenet_cifar', depth=10, growth_rate=4, dropout_rate=0.2)
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(1, impl='rbg'), x)
    step = jax.jit(
        lambda v, x, k: model.apply(v, x, train=True, rngs={'dropout': k}, mutable=['batch_stats'])
    )
    logits, updates = step(variables, x, jax.random.key(2, impl='rbg'))
    assert logits.shape == (4, 10) and np.all(np.isfinite(np.asarray(logits)))
    before = jax.tree_util.tree_leaves(variables['batch_stats'])
    after = jax.tree_util.tree_leaves(updates['batch_stats'])
    assert len(before) == len(after) and all(not np.allclose(a, b) for a, b in zip(before, after))
    again, _ = step(variables, x, jax.random.key(3, impl='rbg'))
    assert not np.allclose(logits, again)  # dropout is active in train mode


@pytest.mark.slow
@pytest.mark.parametrize(
    'name,size',
    [
        ('densenet_bc_100_12', 32),
        ('densenet_40_12', 32),
        ('densenet121', 32),
        ('densenet_bc_250_24', 32),
        ('dpn92', 32),
        ('shufflenet_v1_g3', 64),
        ('shufflenet_v2_x2_0', 64),
    ],
)
def test_forward_medium(name, size):
    logits = _forward(name, size)
    assert logits.shape == (2, 10 if name in CIFAR_MODELS else 1000)
    assert np.all(np.isfinite(np.asarray(logits)))


# --------------------------------------------------------------------------- torchvision


def _tvi():
    pytest.importorskip('torchvision')
    from research.interop import torchvision as tvi

    return tvi


def test_conversions_registered():
    from research.interop import tv_dense

    assert set(tv_dense.CONVERSIONS) == {
        'densenet121',
        'densenet161',
        'densenet169',
        'densenet201',
        'shufflenet_v2_x0_5',
        'shufflenet_v2_x1_0',
        'shufflenet_v2_x1_5',
        'shufflenet_v2_x2_0',
    }
    heavy = {n for n, c in tv_dense.CONVERSIONS.items() if c.heavy}
    assert heavy == {'densenet161', 'densenet169', 'densenet201'}
    assert (
        tv_dense.densenet_rename(('denseblock2', 'layer7', 'norm1'))
        == 'features.denseblock2.denselayer7.norm1'
    )
    assert tv_dense.densenet_rename(('transition3', 'conv')) == 'features.transition3.conv'
    assert tv_dense.shufflenet_v2_rename(('stage3_unit0', 'b2_dw')) == 'stage3.0.branch2.3'


@pytest.mark.parametrize('name', ['densenet121', 'shufflenet_v2_x0_5'])
def test_torchvision_parity_light(name):
    _tvi()
    from parity_helper import assert_parity

    assert_parity(name, input_size=(64, 64))


@pytest.mark.slow
@pytest.mark.parametrize(
    'name',
    [
        'densenet121',
        'densenet161',
        'densenet169',
        'densenet201',
        'shufflenet_v2_x0_5',
        'shufflenet_v2_x1_0',
        'shufflenet_v2_x1_5',
        'shufflenet_v2_x2_0',
    ],
)
def test_torchvision_parity_full(name):
    _tvi()
    from parity_helper import assert_parity

    assert_parity(name)


def test_torchvision_round_trip():
    tvi = _tvi()
    import torch

    name = 'shufflenet_v2_x0_5'
    tm = tvi.randomize_torch_model(tvi.torchvision_model(name), seed=3)
    variables = tvi.from_torchvision(name, tm)
    assert count_params(variables) == TORCHVISION[name][0]
    sd = tvi.to_torchvision(name, variables)
    fresh = tvi.torchvision_model(name)
    fresh.load_state_dict(sd, strict=True)
    for k, v in tm.state_dict().items():
        if not k.endswith('num_batches_tracked'):
            assert torch.equal(fresh.state_dict()[k], v), k
