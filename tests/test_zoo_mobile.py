"""Mobile families: MobileNet v1/v2/v3, EfficientNet B0-B7, MnasNet.

Exact parameter counts (shape-only init) and MACs against ../shared/reference/paper_targets.md
(torchvision 0.29.1 metadata; MobileNet v1 against the paper's rounded Tables 6-7), output shapes,
feature strides, tiny real forwards, stochastic depth, torchvision parity and round trip, and
the RMSProp optimizer the papers' recipes use.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.layers import blocks
from research.layers.summary import summarize
from research.models import abstract_variables, count_params, create
from research.models import efficientnet, mnasnet, mobilenet

# torchvision 0.29.1 (paper_targets.md): name -> (params, GMACs, resolution).
TV_TARGETS = {
    'mobilenet_v2': (3_504_872, 0.301, 224),
    'mobilenet_v3_large': (5_483_032, 0.217, 224),
    'mobilenet_v3_small': (2_542_856, 0.057, 224),
    'mnasnet1_0': (4_383_312, 0.314, 224),
    'efficientnet_b0': (5_288_548, 0.386, 224),
    'efficientnet_b1': (7_794_184, 0.687, 240),
    'efficientnet_b2': (9_109_994, 1.088, 288),
    'efficientnet_b3': (12_233_232, 1.827, 300),
    'efficientnet_b4': (19_341_616, 4.394, 380),
    'efficientnet_b5': (30_389_784, 10.266, 456),
    'efficientnet_b6': (43_040_704, 19.068, 528),
    'efficientnet_b7': (66_347_960, 37.746, 600),
}
# torchvision's other MnasNet widths (num_params of its weights metadata).
MNASNET_PARAMS = {'mnasnet0_5': 2_218_512, 'mnasnet0_75': 3_170_208, 'mnasnet1_3': 6_282_256}
# Howard et al. 2017, Tables 6-7: alpha -> (M params to 0.1, M MACs to 1) at 224, and our exact counts.
V1_PAPER = {
    'mobilenet_v1': (4.2, 569, 4_231_976),
    'mobilenet_v1_075': (2.6, 325, 2_585_560),
    'mobilenet_v1_050': (1.3, 149, 1_331_592),
    'mobilenet_v1_025': (0.5, 41, 470_072),
}
MY_MODELS = sorted(
    set(mobilenet.REGISTRY_ENTRIES) | set(efficientnet.REGISTRY_ENTRIES) | set(mnasnet.REGISTRY_ENTRIES)
)
HEAVY_MACS = tuple(f'efficientnet_b{i}' for i in range(3, 8))  # 8-40 s each on a shared CPU


H = 64  # eval_shape input size: params do not depend on it; every model here reaches stride 32


@functools.lru_cache(maxsize=None)
def _abstract(name):
    """eval_shape of init_with_output(return_features=True) on (1, H, H, 3), once per model:
    ((logits, feats), variables) as ShapeDtypeStructs, shared by the count/shape/stride tests."""
    m = create(name)
    x = jax.ShapeDtypeStruct((1, H, H, 3), jnp.float32)
    return jax.eval_shape(lambda x: m.init_with_output(jax.random.key(0), x, return_features=True), x)


def _fast_jit(f):
    """jit with XLA's CPU backend optimisations off: these tests run once per compile, which
    then takes about half the time (the numbers are unaffected)."""
    if jax.default_backend() != 'cpu':
        return jax.jit(f)
    return jax.jit(
        f, compiler_options={'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
    )


def _params(name, **kw):
    if not kw:
        return count_params(_abstract(name)[1])
    return count_params(abstract_variables(create(name, **kw), (1, H, H, 3)))


# --------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize('name', list(TV_TARGETS) + list(MNASNET_PARAMS))
def test_param_counts_match_torchvision(name):
    expected = TV_TARGETS[name][0] if name in TV_TARGETS else MNASNET_PARAMS[name]
    assert _params(name) == expected


@pytest.mark.parametrize('name', list(V1_PAPER))
def test_mobilenet_v1_params_match_paper(name):
    paper_m, _, exact = V1_PAPER[name]
    n = _params(name)
    assert n == exact
    assert round(n / 1e6, 1) == paper_m


def test_mnasnet_a1_matches_paper():
    # Tan et al. 2019, Table 1: MnasNet-A1 3.9 M params, 312 M MACs.
    m = create('mnasnet_a1')
    assert round(count_params(abstract_variables(m, (1, 64, 64, 3))) / 1e6, 1) == 3.9
    assert round(summarize(m, (1, 224, 224, 3)).macs / 1e6) == 312
    assert _params('mnasnet_a1', se=False) < _params('mnasnet_a1')


# --------------------------------------------------------------------------- MACs


@pytest.mark.parametrize(
    'name',
    [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY_MACS else n for n in TV_TARGETS],
)
def test_macs_match_torchvision(name):
    params, gmacs, res = TV_TARGETS[name]
    s = summarize(create(name), (1, res, res, 3))
    assert round(s.macs / 1e9, 3) == gmacs
    assert s.params == params


@pytest.mark.parametrize('name', list(V1_PAPER))
def test_mobilenet_v1_macs_match_paper(name):
    s = summarize(create(name), (1, 224, 224, 3))
    assert round(s.macs / 1e6) == V1_PAPER[name][1]


def test_mobilenet_v1_resolution_multiplier():
    # Table 7 (alpha 1): rho 224/192/160/128 -> 569/418/290/186 M MACs: the paper scales the
    # whole 569 M by rho^2; the 1.0 M FC does not scale, so at 160 the exact count is 290.7 M.
    m = create('mobilenet_v1')
    got = [summarize(m, (1, r, r, 3)).macs / 1e6 for r in (192, 160, 128)]
    assert [round(g) for g in got] == [418, 291, 186]
    assert [round(569 * (r / 224) ** 2) for r in (192, 160, 128)] == [418, 290, 186]
    fc = 1024 * 1000 / 1e6
    assert [round(568.74 * (r / 224) ** 2 - fc * ((r / 224) ** 2 - 1), 1) for r in (192, 160, 128)] == [
        round(g, 1) for g in got
    ]


# --------------------------------------------------------------------------- shapes and forwards


@pytest.mark.parametrize('name', MY_MODELS)
def test_output_shape(name):
    (logits, _), variables = _abstract(name)
    assert logits.shape == (1, 1000) and logits.dtype == jnp.float32
    assert 'batch_stats' in variables


def test_num_classes_and_batch():
    m = create('mobilenet_v3_small', num_classes=7)
    x = jax.ShapeDtypeStruct((3, 48, 48, 3), jnp.float32)
    out = jax.eval_shape(lambda x: m.init_with_output(jax.random.key(0), x)[0], x)
    assert out.shape == (3, 7) and out.dtype == jnp.float32


@pytest.mark.parametrize(
    'name',
    [
        'mobilenet_v1_025',
        'mobilenet_v3_small',
        # XLA's CPU compile of these takes 30-90 s on a shared 2-core machine.
        pytest.param('mobilenet_v2', marks=pytest.mark.slow),
        pytest.param('mnasnet0_5', marks=pytest.mark.slow),
        pytest.param('efficientnet_b0', marks=pytest.mark.slow),
    ],
)
def test_tiny_forward(name):
    m = create(name, num_classes=5)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))

    @_fast_jit
    def run(x):  # one compile for init + eval + train step (eager op-by-op is far slower)
        variables = m.init(jax.random.key(0), x)
        y = m.apply(variables, x)
        y_train, updates = m.apply(
            variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(2)}
        )
        return y, y_train, updates['batch_stats']

    y, y_train, stats = run(x)
    assert y.shape == (2, 5) and bool(jnp.all(jnp.isfinite(y)))
    assert y_train.shape == (2, 5) and bool(jnp.all(jnp.isfinite(y_train)))
    assert not np.allclose(np.asarray(y), np.asarray(y_train))  # batch statistics vs running ones
    assert len(jax.tree_util.tree_leaves(stats)) > 0


@pytest.mark.parametrize('name', MY_MODELS)
def test_feature_strides(name):
    (_, feats), _ = _abstract(name)
    for s in range(1, 6):
        assert feats[f'stage{s}'].shape[1:3] == (H // 2**s, H // 2**s), (name, s)


def test_v3_dilated_and_reduced_tail():
    h = 64
    m = create('mobilenet_v3_large', dilated=True, reduced_tail=True)
    x = jax.ShapeDtypeStruct((1, h, h, 3), jnp.float32)
    _, feats = jax.eval_shape(lambda x: m.init_with_output(jax.random.key(0), x, return_features=True)[0], x)
    assert feats['stage4'].shape[1:3] == (h // 16, h // 16)
    assert feats['stage5'].shape == (1, h // 16, h // 16, 480)  # 6 x 160 / 2, kept at stride 16
    # LR-ASPP's inputs (torchvision IntermediateLayerGetter): features4 (low, /8), features16 (high).
    assert feats['features4'].shape == (1, h // 8, h // 8, 40)
    assert feats['features16'].shape[1:3] == (h // 16, h // 16)


def test_v3_knobs_match_torchvision_counts():
    tv = pytest.importorskip('torchvision')
    for kw in ({'reduced_tail': True, 'dilated': True}, {'width_mult': 0.75}):
        tm = tv.models.mobilenet_v3_large(weights=None, **kw)
        assert _params('mobilenet_v3_large', **kw) == sum(p.numel() for p in tm.parameters()), kw
    assert _params('mobilenet_v3_small', se=False) < TV_TARGETS['mobilenet_v3_small'][0]


def test_efficientnet_scaling():
    stages = create('efficientnet_b7').stages()
    assert [st[4] for st in stages] == [32, 48, 80, 160, 224, 384, 640]
    assert [st[5] for st in stages] == [4, 7, 7, 10, 10, 13, 4]
    # phi = 0 is B0; the published B1-B7 are not an integer phi (see the module docstring).
    kw = efficientnet.compound_scaling(0)
    assert kw.pop('resolution') == 224
    assert _params('efficientnet', **kw) == TV_TARGETS['efficientnet_b0'][0]
    kw = efficientnet.compound_scaling(1)
    assert (kw['width_mult'], kw['depth_mult'], kw['resolution']) == pytest.approx((1.1, 1.2, 258))


def test_make_divisible_and_rounding():
    assert mobilenet.make_divisible(32 * 0.35) == 16  # never more than 10% down
    assert mobilenet.make_divisible(1280 * 1.4) == 1792
    assert mnasnet.round_to_multiple_of(83) == 80 and mnasnet.round_to_multiple_of(84) == 88


# --------------------------------------------------------------------------- stochastic depth


def test_drop_path():
    x = jnp.ones((4000, 2, 2, 3))
    y = blocks.drop_path(x, 0.25, jax.random.key(0))
    kept = np.asarray(y[:, 0, 0, 0]) != 0
    assert 0.7 < kept.mean() < 0.8  # per example, survival 0.75
    assert np.allclose(np.asarray(y)[kept], 1 / 0.75)  # survivors rescaled
    assert bool(jnp.all((y == 0).all(axis=(1, 2, 3)) | (y != 0).all(axis=(1, 2, 3))))


def test_mbconv_stochastic_depth_only_in_training():
    blk = blocks.MBConv(16, expansion=4, se_ratio=0.25, drop_path_rate=0.5, activation=jax.nn.silu)
    x = jax.random.normal(jax.random.key(0), (8, 6, 6, 16))
    v = _fast_jit(blk.init)(jax.random.key(1), x)
    ref = _fast_jit(blk.apply)(v, x)
    again = _fast_jit(blk.apply)(v, x)
    np.testing.assert_array_equal(np.asarray(ref), np.asarray(again))
    a, _ = _fast_jit(
        lambda v, x: blk.apply(v, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(2)})
    )(v, x)
    # Dropped examples are exactly the identity (residual only).
    dropped = np.all(np.asarray(a) == np.asarray(x), axis=(1, 2, 3))
    assert 0 < dropped.sum() < 8
    no_sd = blk.clone(drop_path_rate=0.0)
    b, _ = no_sd.apply(v, x, train=True, mutable=['batch_stats'])
    assert not np.any(np.all(np.asarray(b) == np.asarray(x), axis=(1, 2, 3)))


# --------------------------------------------------------------------------- torchvision parity

LIGHT_PARITY = ['mobilenet_v2', 'mobilenet_v3_small', 'efficientnet_b0', 'mnasnet0_5']
ALL_PARITY = [
    'mobilenet_v2',
    'mobilenet_v3_large',
    'mobilenet_v3_small',
    *(f'efficientnet_b{i}' for i in range(8)),
    'mnasnet0_5',
    'mnasnet0_75',
    'mnasnet1_0',
    'mnasnet1_3',
]


@pytest.mark.parametrize('name', LIGHT_PARITY)
def test_torchvision_parity_light(name):
    pytest.importorskip('torchvision')
    from parity_helper import assert_parity

    assert_parity(name, input_size=(64, 64))


@pytest.mark.slow
@pytest.mark.parametrize('name', ALL_PARITY)
def test_torchvision_parity_full(name):
    pytest.importorskip('torchvision')
    from parity_helper import assert_parity

    assert_parity(name)


def test_conversions_registered():
    pytest.importorskip('torchvision')
    from research.interop import torchvision as tvi
    from research.interop import tv_mobile

    assert sorted(tv_mobile.CONVERSIONS) == sorted(ALL_PARITY)
    heavy = {n for n in ALL_PARITY if tvi.get_conversion(n).heavy}
    assert heavy == {f'efficientnet_b{i}' for i in range(3, 8)}
    assert tvi.get_conversion('efficientnet_b2').input_size == (288, 288)


def test_torchvision_round_trip():
    torch = pytest.importorskip('torch')
    pytest.importorskip('torchvision')
    from research.interop import torchvision as tvi

    tm = tvi.randomize_torch_model(tvi.torchvision_model('mobilenet_v3_small'), seed=3)
    sd = tvi.to_torchvision('mobilenet_v3_small', tvi.from_torchvision('mobilenet_v3_small', tm))
    fresh = tvi.torchvision_model('mobilenet_v3_small')
    fresh.load_state_dict(sd, strict=True)
    for k, v in tm.state_dict().items():
        if not k.endswith('num_batches_tracked'):
            assert torch.equal(fresh.state_dict()[k], v), k


# --------------------------------------------------------------------------- RMSProp


def test_rmsprop_matches_tf1_update():
    import ml_collections

    from research.config import base_config
    from research.train import optim

    cfg = base_config().optimizer
    cfg.name, cfg.lr, cfg.momentum, cfg.b2, cfg.eps = 'rmsprop', 0.1, 0.9, 0.9, 1e-3
    assert 'rmsprop' in optim.OPTIMIZERS
    tx = optim.make_optimizer(ml_collections.ConfigDict(cfg.to_dict()), lambda step: 0.1)
    w = jnp.array([1.0, -2.0])
    state = tx.init(w)
    ms, mom = np.ones(2), np.zeros(2)  # TF1 RMSPropOptimizer: ms starts at 1
    w_ref = np.asarray(w)
    for g in ([0.5, -1.0], [0.2, 0.3]):
        g = np.asarray(g)
        ms = 0.9 * ms + 0.1 * g**2
        mom = 0.9 * mom + 0.1 * g / np.sqrt(ms + 1e-3)
        w_ref = w_ref - mom
        upd, state = tx.update(jnp.asarray(g, jnp.float32), state, w)
        w = w + upd
    np.testing.assert_allclose(np.asarray(w), w_ref, rtol=1e-5)


def test_registry_names():
    for name in MY_MODELS:
        assert name in models.list_models()


# --------------------------------------------------------------------------- experiment configs


@pytest.mark.parametrize(
    'module, arg, model, image_size',
    [
        ('mobilenet', 'model=v1,width=0.5,resolution=160', 'mobilenet_v1', 160),
        ('mobilenet', 'model=v2', 'mobilenet_v2', 224),
        ('mobilenet', 'model=v3_small,folder=/tmp/imagenet', 'mobilenet_v3_small', 224),
        ('mobilenet', 'model=mnasnet,width=0.5,quick', 'mnasnet1_0', 0),
        ('efficientnet', 'variant=b3', 'efficientnet_b3', 300),
        ('efficientnet', 'variant=b0,quick', 'efficientnet_b0', 0),
    ],
)
def test_experiment_configs(module, arg, model, image_size):
    import importlib

    from research.config import validate_config

    c = importlib.import_module(f'experiments.classification.{module}').get_config(arg)
    validate_config(c)
    assert c.model.name == model and c.data.image_size == image_size
    assert c.optimizer.name == 'rmsprop' and c.schedule.name == 'step'
    kwargs = {k: v for k, v in c.model.items() if k != 'name'}
    m = create(model, num_classes=10, **kwargs)
    if 'width=0.5' in arg:
        assert getattr(m, 'width_multiplier', getattr(m, 'alpha', None)) == 0.5
    bounds = c.schedule.boundaries
    assert all(b.endswith('epochs') for b in bounds)
    if 'quick' not in arg:  # staircase decay every 1 (v1/v2) or 2.4 epochs over 200-350 epochs
        assert len(bounds) >= 145
