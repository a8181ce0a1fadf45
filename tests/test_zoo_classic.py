"""Classic ImageNet families: AlexNet, VGG, GoogLeNet, Inception v3/v4, SqueezeNet.

Exact parameter counts (shape-only init) and MACs against ../shared/reference/paper_targets.md,
output shapes and feature strides (eval_shape), tiny real forwards, the paper-variant knobs, and
torchvision parity / round trip (skipped without torchvision).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.layers.summary import summarize
from research.models import abstract_variables, count_params, create, list_models
from research.models.alexnet import local_response_norm

# torchvision 0.29.1 metadata (paper_targets.md): params and GMACs at 224 px (299 for inception_v3).
TV_TARGETS = {
    'alexnet': (61_100_840, 0.714),
    'vgg11': (132_863_336, 7.609),
    'vgg11_bn': (132_868_840, 7.609),
    'vgg13': (133_047_848, 11.308),
    'vgg13_bn': (133_053_736, 11.308),
    'vgg16': (138_357_544, 15.470),
    'vgg16_bn': (138_365_992, 15.470),
    'vgg19': (143_667_240, 19.632),
    'vgg19_bn': (143_678_248, 19.632),
    'googlenet': (6_624_904, 1.498),
    'inception_v3': (27_161_264, 5.713),
    'squeezenet1_0': (1_248_424, 0.819),
    'squeezenet1_1': (1_235_496, 0.349),
}
# Variants without torchvision weights: counts derived by hand (see the model docstrings).
OTHER_COUNTS = {
    # Fig. 2: conv 34,944 + 307,456 + 885,120 + 663,936 + 442,624, FC 37,752,832 + 16,781,312 + 4,097,000.
    'alexnet_paper': 60_965_224,
    'vgg11_lrn': 132_863_336,  # LRN has no parameters
    'vgg16_c': 138_357_544 - 8 * (256 * 256 + 2 * 512 * 512),  # three 3x3 -> 1x1 convs
    'googlenet_paper': 6_998_552,
    'inception_v4': 42_679_816,  # timm / keras-hub inception_v4
}
INPUT = {'inception_v3': 299, 'inception_v4': 299}
MY_MODELS = sorted(set(TV_TARGETS) | set(OTHER_COUNTS))


def _size(name):
    return INPUT.get(name, 224)


def _count(name, **kw):
    s = _size(name)
    return count_params(abstract_variables(create(name, **kw), (1, s, s, 3)))


def test_all_registered():
    assert set(MY_MODELS) <= set(list_models())


# --------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize('name', MY_MODELS)
def test_param_counts(name):
    expected = TV_TARGETS[name][0] if name in TV_TARGETS else OTHER_COUNTS[name]
    assert _count(name) == expected


def test_aux_head_counts():
    assert _count('inception_v3') - _count('inception_v3', aux_logits=False) == 3_326_696
    # torchvision's GoogLeNet InceptionAux: 1x1 conv 128 + BN, FC 2048 -> 1024 -> 1000; after 4a (512) and 4d (528).
    aux = lambda c: c * 128 + 2 * 128 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000  # noqa: E731
    assert _count('googlenet', aux_logits=True) - _count('googlenet') == aux(512) + aux(528)


def test_squeezenet_bypass_counts():
    base = _count('squeezenet1_0')
    assert _count('squeezenet1_0', bypass='simple') == base
    # Complex bypass: 1x1 conv (+ bias) around fire2, 4, 6, 8: 96->128, 128->256, 256->384, 384->512.
    extra = sum(i * o + o for i, o in ((96, 128), (128, 256), (256, 384), (384, 512)))
    assert _count('squeezenet1_0', bypass='complex') == base + extra


def test_paper_variant_structure():
    p = abstract_variables(create('alexnet_paper'), (1, 224, 224, 3))['params']
    assert p['conv2']['kernel'].shape == (5, 5, 48, 256)  # two towers: groups=2
    assert p['conv3']['kernel'].shape == (3, 3, 256, 384)  # conv3 connects across the towers
    assert p['conv5']['kernel'].shape == (3, 3, 192, 256)
    p = abstract_variables(create('googlenet_paper'), (1, 224, 224, 3))
    assert p['params']['inception3a']['b3_conv']['kernel'].shape == (5, 5, 16, 32)
    assert 'bias' in p['params']['inception3a']['b3_conv'] and 'batch_stats' not in p
    p = abstract_variables(create('vgg16_c'), (1, 224, 224, 3))['params']
    assert p['conv3_3']['kernel'].shape == (1, 1, 256, 256) and p['conv5_2']['kernel'].shape[:2] == (3, 3)


# --------------------------------------------------------------------------- MACs


MAC_MODELS = [
    'alexnet',
    'vgg11',
    'vgg13',
    'vgg16',
    'vgg19',
    'googlenet',
    'inception_v3',
    'squeezenet1_0',
    'squeezenet1_1',
]


@pytest.mark.parametrize('name', MAC_MODELS)
def test_macs(name):
    s = _size(name)
    assert round(summarize(create(name), (1, s, s, 3)).macs / 1e9, 3) == TV_TARGETS[name][1]


# --------------------------------------------------------------------------- shapes and features


@pytest.mark.parametrize('name', MY_MODELS)
def test_output_shape(name):
    model = create(name, num_classes=7)
    s = 139 if name.startswith('inception') else 64  # v3's aux head needs a 5x5 map at Mixed_6e
    v = abstract_variables(model, (1, s, s, 3))
    out = jax.eval_shape(lambda v, x: model.apply(v, x), v, jax.ShapeDtypeStruct((2, s, s, 3), jnp.float32))
    assert out.shape == (2, 7) and out.dtype == jnp.float32


# Spatial size of each feature map ('stage{k}' at output stride 2^k; valid convs/pools make
# AlexNet, SqueezeNet and Inception a little smaller than H / 2^k).
FEATURE_SIZES = {
    'vgg16': {f'stage{k}': 224 // 2**k for k in range(1, 6)},
    'googlenet': {f'stage{k}': 224 // 2**k for k in range(1, 6)},
    'alexnet': {'stage2': 55, 'stage3': 27, 'stage4': 13, 'stage5': 6},
    'alexnet_paper': {'stage2': 55, 'stage3': 27, 'stage4': 13, 'stage5': 6},
    'squeezenet1_0': {'stage1': 109, 'stage2': 54, 'stage3': 27, 'stage4': 13},
    'squeezenet1_1': {'stage1': 111, 'stage2': 55, 'stage3': 27, 'stage4': 13},
    'inception_v3': {'stage1': 147, 'stage2': 71, 'stage3': 35, 'stage4': 17, 'stage5': 8},
    'inception_v4': {'stage1': 147, 'stage2': 71, 'stage3': 35, 'stage4': 17, 'stage5': 8},
}


@pytest.mark.parametrize('name', sorted(FEATURE_SIZES))
def test_feature_strides(name):
    model = create(name)
    s = _size(name)
    x = jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)
    v = abstract_variables(model, x.shape)
    _, feats = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True), v, x)
    assert {k: f.shape[1] for k, f in feats.items()} == FEATURE_SIZES[name]
    assert all(f.shape[1] == f.shape[2] for f in feats.values())
    for k, size in FEATURE_SIZES[name].items():  # output stride 2^k up to the 'valid' border losses
        assert s / 2 ** int(k[-1]) * 0.85 <= size <= s / 2 ** int(k[-1])


def test_vgg_features_are_the_maps_before_the_pools():
    model = create('vgg11', classifier_width=8)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    v = abstract_variables(model, x.shape)
    _, feats = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True), v, x)
    assert [feats[f'stage{k}'].shape[-1] for k in range(1, 6)] == [128, 256, 512, 512, 512]


# --------------------------------------------------------------------------- real forwards

FORWARD = {  # name -> (kwargs keeping the classifier small, input size)
    'alexnet': ({'classifier_width': 64}, 64),
    'alexnet_paper': ({'classifier_width': 64}, 64),
    'vgg11_lrn': ({'classifier_width': 64}, 32),
    'vgg16_c': ({'classifier_width': 64}, 32),
    'googlenet': ({}, 32),
    'squeezenet1_0': ({'bypass': 'complex'}, 32),
    'squeezenet1_1': ({'bypass': 'simple'}, 32),
}
SLOW_FORWARD = {
    'vgg11_bn': ({'classifier_width': 64}, 32),
    'vgg19_bn': ({'classifier_width': 64}, 32),
    'googlenet_paper': ({'aux_logits': True}, 32),
    'inception_v3': ({'aux_logits': False}, 75),
    'inception_v4': ({}, 75),
}


def _filled_variables(model, shape, seed=0):
    """He-normal kernels, unit scales/variances, zero biases/means, from numpy: ``model.init``
    compiles one random-number program per distinct kernel shape, far slower on CPU than the
    forward itself (init itself is covered by test_real_init_and_forward and the counts)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], 'key', path[-1]))
        if name == 'kernel':
            std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) * std)
        if name in ('scale', 'var'):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.asarray(0.1 * rng.standard_normal(leaf.shape, np.float32))

    return jax.tree_util.tree_map_with_path(fill, abstract_variables(model, shape))


def _forward(name, kw, s, train=False):
    model = create(name, num_classes=5, **kw)
    x = jax.random.normal(jax.random.key(0), (2, s, s, 3))
    v = _filled_variables(model, x.shape)
    if train:
        apply = functools.partial(model.apply, train=True, mutable=['batch_stats', 'intermediates'])
        out, _ = jax.jit(apply)(v, x, rngs={'dropout': jax.random.key(2)})
    else:
        out = jax.jit(model.apply)(v, x)
    assert out.shape == (2, 5)
    assert bool(jnp.all(jnp.isfinite(out)))
    return out


@pytest.mark.parametrize('name', sorted(FORWARD))
def test_forward(name):
    kw, s = FORWARD[name]
    out = _forward(name, kw, s)
    assert float(jnp.max(jnp.abs(out[0] - out[1]))) > 0  # depends on the input


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(SLOW_FORWARD))
def test_forward_slow(name):
    _forward(name, *SLOW_FORWARD[name])
    _forward(name, *SLOW_FORWARD[name], train=True)


def test_real_init_and_forward():
    model = create('alexnet_paper', num_classes=5, classifier_width=16)
    x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    v = jax.jit(model.init)(jax.random.key(1), x)
    fan_out = 11 * 11 * 96  # He et al. 2015 normal init, fan-out mode (research.layers.common)
    assert float(jnp.std(v['params']['conv1']['kernel'])) == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)
    out = jax.jit(model.apply)(v, x)
    assert out.shape == (2, 5) and bool(jnp.all(jnp.isfinite(out)))


def test_squeezenet_bypass_changes_output():
    plain, bypass = create('squeezenet1_1'), create('squeezenet1_1', bypass='simple')
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 32, 32, 3), np.float32))
    v = _filled_variables(plain, x.shape)
    assert not np.allclose(jax.jit(plain.apply)(v, x), jax.jit(bypass.apply)(v, x))  # same params, extra adds


def test_googlenet_aux_heads_in_train_mode():
    model = create('googlenet', num_classes=5, aux_logits=True)
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    v = abstract_variables(model, x.shape)

    def run(v, x, train):
        kw = (
            dict(mutable=['batch_stats', 'intermediates'], rngs={'dropout': jax.random.key(0)})
            if train
            else {}
        )
        return model.apply(v, x, train=train, return_features=True, **kw)

    (_, feats), state = jax.eval_shape(functools.partial(run, train=True), v, x)
    assert feats['aux1'].shape == feats['aux2'].shape == (2, 5)
    assert set(state['intermediates']) == {'aux1_logits', 'aux2_logits'}
    _, feats = jax.eval_shape(functools.partial(run, train=False), v, x)
    assert 'aux1' in feats  # torchvision drops them in eval; here they stay available


def test_inception_v3_aux_only_in_train_mode():
    model = create('inception_v3', num_classes=5)
    x = jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32)
    v = abstract_variables(model, x.shape)
    assert 'AuxLogits' in v['params']
    _, feats = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True), v, x)
    assert 'aux' not in feats
    (_, feats), _ = jax.eval_shape(
        lambda v, x: model.apply(
            v,
            x,
            train=True,
            return_features=True,
            mutable=['batch_stats', 'intermediates'],
            rngs={'dropout': jax.random.key(0)},
        ),
        v,
        x,
    )
    assert feats['aux'].shape == (2, 5)


# --------------------------------------------------------------------------- LRN


def test_lrn_matches_paper_formula():
    x = np.random.default_rng(0).standard_normal((2, 3, 3, 9)).astype(np.float32) * 10
    y = np.asarray(local_response_norm(jnp.asarray(x)))  # k=2, n=5, alpha=1e-4, beta=0.75
    n = x.shape[-1]
    ref = np.empty_like(x)
    for i in range(n):
        s = np.sum(x[..., max(0, i - 2) : min(n - 1, i + 2) + 1] ** 2, axis=-1)
        ref[..., i] = x[..., i] / (2.0 + 1e-4 * s) ** 0.75
    np.testing.assert_allclose(y, ref, rtol=1e-5)


def test_lrn_matches_torch():
    torch = pytest.importorskip('torch')
    x = np.random.default_rng(1).standard_normal((2, 4, 4, 16)).astype(np.float32) * 30
    y = np.asarray(
        local_response_norm(jnp.asarray(x), size=5, alpha=1e-2, beta=0.75, k=1.0, alpha_over_size=True)
    )
    ref = torch.nn.functional.local_response_norm(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), 5, 1e-2, 0.75, 1.0
    )
    np.testing.assert_allclose(y, ref.numpy().transpose(0, 2, 3, 1), rtol=1e-5)


# --------------------------------------------------------------------------- torchvision


def _tv():
    pytest.importorskip('torchvision')
    from research.interop import torchvision as tvi

    return tvi


MY_CONVERSIONS = ['alexnet', 'googlenet', 'inception_v3', 'squeezenet1_0', 'squeezenet1_1'] + [
    f'vgg{d}{bn}' for d in (11, 13, 16, 19) for bn in ('', '_bn')
]
LIGHT_PARITY = {'alexnet': (64, 64), 'vgg11_bn': (32, 32), 'squeezenet1_1': (64, 64), 'googlenet': (64, 64)}


def test_conversions_registered():
    tvi = _tv()
    assert set(MY_CONVERSIONS) <= set(tvi.list_conversions())
    assert {n for n in MY_CONVERSIONS if tvi.get_conversion(n).heavy} == {
        n for n in MY_CONVERSIONS if n.startswith(('vgg', 'inception'))
    }


@pytest.mark.parametrize('name', sorted(LIGHT_PARITY))
def test_parity_light(name):
    _tv()
    from parity_helper import assert_parity

    assert_parity(name, input_size=LIGHT_PARITY[name])


@pytest.mark.slow
@pytest.mark.parametrize('name', MY_CONVERSIONS)
def test_parity_full(name):
    _tv()
    from parity_helper import assert_parity

    assert_parity(name)


def test_round_trip_squeezenet():
    tvi = _tv()
    import torch

    tm = tvi.randomize_torch_model(tvi.torchvision_model('squeezenet1_1'), seed=3)
    variables = tvi.from_torchvision('squeezenet1_1', tm)
    sd = tvi.to_torchvision('squeezenet1_1', variables)
    fresh = tvi.torchvision_model('squeezenet1_1')
    fresh.load_state_dict(sd, strict=True)
    for k, t in tm.state_dict().items():
        if not k.endswith('num_batches_tracked'):
            assert torch.equal(fresh.state_dict()[k], t), k


def test_vgg_table_rejects_non_torchvision_cfg():
    _tv()
    from research.interop.tv_classic import vgg_table
    from research.models.vgg import CFGS

    assert vgg_table(CFGS['A'], True)['bn5_2'] == 'features.26'
    assert vgg_table(CFGS['D'], False)['conv5_3'] == 'features.28'
    with pytest.raises(ValueError):
        vgg_table(CFGS['C'], False)


# --------------------------------------------------------------------------- experiment configs

CONFIGS = [
    ('vgg_cifar', 'depth=16,folder,quick', 'vgg16_bn'),
    ('vgg_cifar', 'depth=11,bn=false', 'vgg11'),
    ('imagenet_classic', 'model=alexnet', 'alexnet'),
    ('imagenet_classic', 'model=vgg16_bn,folder=/data/imagenet', 'vgg16_bn'),
    ('imagenet_classic', 'model=googlenet', 'googlenet'),
    ('imagenet_classic', 'model=inception_v3', 'inception_v3'),
    ('imagenet_classic', 'model=inception_v4,quick,epochs=2', 'inception_v4'),
    ('imagenet_classic', 'model=squeezenet1_1,quick', 'squeezenet1_1'),
]


@pytest.mark.parametrize('module,arg,model', CONFIGS, ids=[f'{m}-{a}' for m, a, _ in CONFIGS])
def test_experiment_configs(module, arg, model):
    import importlib

    from research.config import parse_duration, validate_config

    c = importlib.import_module(f'experiments.classification.{module}').get_config(arg)
    validate_config(c)
    assert c.model.name == model
    built = create(model, **{k: v for k, v in c.model.items() if k != 'name'})  # the registry checks keys
    size = c.data.image_size or 32
    out = jax.eval_shape(
        lambda v, x: built.apply(v, x),
        abstract_variables(built, (1, size, size, 3)),
        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
    )
    assert out.shape[-1] == (10 if 'quick' in arg or module == 'vgg_cifar' else 1000)
    bounds = [parse_duration(b, 100) for b in c.schedule.boundaries]
    assert bounds == sorted(bounds) and all(b < parse_duration(c.train.duration, 100) for b in bounds)
    if module == 'vgg_cifar' and model == 'vgg16_bn':
        assert count_params(abstract_variables(built)) == 15_253_578  # see the config's docstring
    if model == 'googlenet':  # -4% every 8 epochs
        assert c.schedule.decay_factor == 0.96 and bounds[:2] == [800, 1600]
    if model == 'inception_v3':
        assert c.train.label_smoothing == 0.1 and c.optimizer.eps == 1.0 and c.data.image_size == 299


def test_imagenet_classic_rejects_unknown_model():
    from experiments.classification import imagenet_classic

    with pytest.raises(ValueError, match='unknown model'):
        imagenet_classic.get_config('model=resnet50')
