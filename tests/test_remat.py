"""``model.remat``: each block of a model under ``nn.remat`` (research/layers/remat.py).

- the parameter tree (every collection: names, shapes, dtypes) is identical with and without remat, for one
  model of every registered class that has the knob (all registered names: the slow test);
- forward values, BatchNorm statistics and gradients are equal on small float32 instances of every family
  (5 by default, the others slow), in train mode with dropout / drop-path rngs, jitted (so the CPU lowering
  of the kernels runs);
- the traced step really rematerialises: one remat equation per block (an exact count per model), none
  without the knob; the CPU backend's custom derivatives (shift-add first conv, tiled max pool) run inside
  them; XLA's compiled step needs less temporary memory;
- configs: ``--config.model.remat`` reaches the model, a model without the field refuses it by name, and a
  run may be resumed with the knob switched (the relaunch check; end to end through the loop: slow).

Slow tests: ``pytest -m slow tests/test_remat.py`` (about 6 min of value cases, 4.6 min of trees).
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.extend.core
import numpy as np
import pytest

from research import models
from research.configlib import ConfigError
from research.layers.remat import remat_call
from research.models.registry import _fields, _module_class

REMAT_PRIMITIVES = ('remat2', 'checkpoint', 'remat')
#: LLVM at -O0: a third of XLA:CPU's compile time for these small programs (both sides compiled alike).
FAST_COMPILE = {'xla_backend_optimization_level': 0}


def _classes_with_remat() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in models.list_models():
        cls = _module_class(models.get_constructor(name))
        if 'remat' in _fields(cls):
            out.setdefault(cls.__name__, []).append(name)
    return out


def _init_kwargs(name: str) -> dict:
    cls = _module_class(models.get_constructor(name)).__name__
    return {} if cls in ('FasterRCNN', 'MaskRCNN', 'RetinaNet') else {'train': False}


def _abstract(name: str, size: int, **kwargs):
    """The variables' shapes of ``model.init`` and the number of remat equations in it, traced only."""
    model = models.create(name, **kwargs)
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    jaxpr, shapes = jax.make_jaxpr(
        lambda: model.init(jax.random.key(0), x, **_init_kwargs(name)), return_shape=True
    )()
    return shapes, _count(jaxpr.jaxpr)


def _described(tree) -> list[tuple[str, tuple, str]]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return [(jax.tree_util.keystr(p), tuple(v.shape), str(v.dtype)) for p, v in leaves]


#: One registered model per class with the knob: the input size its init is traced at, and its blocks (the
#: remat equations expected in the traced init with the knob: the wrappers pass it on to their backbone).
TREE_CASES = {
    'AirbenchNet': ('airbench94_cifar', 32, 3),  # 3 conv groups
    'CifarDenseNet': ('densenet_bc_100_12', 32, 50),  # 3 x 16 dense layers + 2 transitions
    'CifarResNeXt': ('resnext29_8x64d', 32, 9),  # 3 x 3 blocks
    'CifarResNet': ('resnet56', 32, 27),  # 3 x 9 blocks
    'DPN': ('dpn68', 64, 22),  # 3 + 4 + 12 + 3 blocks
    'DeepLabV3': ('deeplabv3_resnet50', 64, 16),  # ResNet-50: 3 + 4 + 6 + 3
    'DeepLabV3Plus': ('deeplabv3plus_resnet50', 64, 16),  # ResNet-50
    'DeepLabV3MobileNet': ('deeplabv3_mobilenet_v3_large', 64, 15),  # 15 bneck rows of MobileNetV3-Large
    'DenseNet': ('densenet121', 64, 61),  # 6 + 12 + 24 + 16 dense layers + 3 transitions
    'EfficientNet': ('efficientnet_b0', 64, 16),  # 16 MBConv blocks
    'FasterRCNN': ('fasterrcnn_resnet18_fpn', 64, 8),  # ResNet-18: 2 + 2 + 2 + 2
    'GoogLeNet': ('googlenet', 64, 9),  # 9 inception modules
    'InceptionV3': ('inception_v3', 299, 11),  # Mixed_5b..7c
    'InceptionV4': ('inception_v4', 299, 19),  # 3 stem mixes + 4 A + 1 + 7 B + 1 + 3 C
    'LRASPP': ('lraspp_mobilenet_v3_large', 64, 15),  # 15 bneck rows of MobileNetV3-Large
    'MaskRCNN': ('maskrcnn_resnet18_fpn', 64, 8),  # ResNet-18
    'MnasNet': ('mnasnet_a1', 64, 15),  # 2 + 3 + 4 + 2 + 3 + 1 blocks
    'MobileNetV1': ('mobilenet_v1', 64, 13),  # 13 dw-pw layers
    'MobileNetV2': ('mobilenet_v2', 64, 17),  # 17 inverted residuals
    'MobileNetV3': ('mobilenet_v3_large', 64, 15),  # 15 bneck rows
    'PSPNet': ('pspnet_resnet50', 64, 16),  # ResNet-50
    'PreActResNet': ('preact_resnet50', 64, 16),  # 3 + 4 + 6 + 3
    'PreActResNetCifar': ('preact_resnet164', 32, 54),  # 3 x 18 bottlenecks
    'ResNet': ('se_resnext50_32x4d', 64, 16),  # 3 + 4 + 6 + 3
    'RetinaNet': ('retinanet_resnet18_fpn', 64, 8),  # ResNet-18
    'ShuffleNetV1': ('shufflenet_v1_g3', 64, 16),  # 4 + 8 + 4 units
    'ShuffleNetV2': ('shufflenet_v2_x1_0', 64, 16),  # 4 + 8 + 4 units
    'SqueezeNet': ('squeezenet1_0', 64, 8),  # 8 fire modules
    'TorchvisionFCN': ('fcn_resnet50', 64, 16),  # ResNet-50
    'VGG': ('vgg11_lrn', 64, 5),  # 5 conv stages
    'WideResNet': ('wrn16_8', 32, 6),  # 3 x 2 blocks
}


def test_every_class_with_the_knob_has_a_tree_case():
    classes = _classes_with_remat()
    assert set(TREE_CASES) == set(classes)
    assert all(name in classes[cls] for cls, (name, *_) in TREE_CASES.items())


@pytest.mark.parametrize('cls', sorted(TREE_CASES))
def test_parameter_tree_is_identical_with_remat(cls):
    name, size, blocks = TREE_CASES[cls]
    (plain, n0), (remat, n1) = _abstract(name, size), _abstract(name, size, remat=True)
    assert (n0, n1) == (0, blocks)
    assert jax.tree_util.tree_structure(plain) == jax.tree_util.tree_structure(remat)
    assert _described(plain) == _described(remat)
    assert len(_described(plain)) > 10


@pytest.mark.slow
def test_parameter_tree_is_identical_with_remat_for_every_registered_name():
    """All registered models with the knob (152 names; shape-only, 4.6 min on 2 shared cores):
    ``pytest -m slow tests/test_remat.py -k every_registered``."""
    sizes = {name: size for name, size, _ in TREE_CASES.values()}
    for names in _classes_with_remat().values():
        for name in names:
            size = 299 if name.startswith('inception') else sizes.get(name, 64)
            kwargs = {'depth': 20} if name in ('resnet_cifar', 'plain_cifar') else {}
            (plain, n0), (remat, n1) = (
                _abstract(name, size, **kwargs),
                _abstract(name, size, remat=True, **kwargs),
            )
            assert _described(plain) == _described(remat) and n0 == 0 < n1, name


# --------------------------------------------------------------------------- values and gradients


def _custom_jvp_functions(jaxpr) -> list[str]:
    """Names of the functions of the custom_jvp calls in ``jaxpr`` (nested ones too), in order."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == 'custom_jvp_call':
            src = eqn.params['call_jaxpr'].jaxpr.debug_info.func_src_info
            out.append(src.split(' at ')[0])
        for sub in _subjaxprs(eqn):
            out += _custom_jvp_functions(sub)
    return out


def _case_id(case):
    name, kw, *_ = case
    return name + ''.join(
        f'-{k}={v if k != "setting" else len(v)}'
        for k, v in kw.items()
        if k
        in ('shortcut', 'block', 'ordering', 'separable', 'bottleneck', 'batch_norm', 'setting', 'multi_grid')
    )


def S(*case):
    return pytest.param(case, marks=pytest.mark.slow, id=_case_id(case))


#: (registry name, small-instance kwargs, input size, channels, blocks = remat equations expected). The
#: default suite runs 5 cases (4-10 s each on 2 shared cores: XLA:CPU's compile time); the ``slow`` ones cover
#: the other families: ``pytest -m slow tests/test_remat.py -k values_and`` (about 6 min on 2 shared cores).
SMALL = [
    ('resnet_cifar', dict(depth=8, width=4, shortcut='B'), 16, 3, 3),
    S('resnet', dict(layers=(1, 1, 1, 1), width=4, stem_width=8), 32, 3, 4),  # resnet_cifar's BasicBlock
    S(
        'resnet',
        dict(layers=(1, 2, 1, 1), block='bottleneck', width=4, stem_width=8, se_reduction=4),
        32,
        3,
        5,
    ),
    S(
        'resnet',
        dict(
            layers=(1, 1, 1, 1),
            width=4,
            stem_width=8,
            replace_stride_with_dilation=(False, True, True),
            multi_grid=(2,),
        ),
        32,
        3,
        4,
    ),
    S('preact_resnet_cifar', dict(depth=11, bottleneck=True, width=4), 16, 3, 3),
    S('preact_resnet_cifar', dict(depth=8, ordering='a', width=4), 16, 3, 3),
    S('preact_resnet', dict(layers=(1, 1, 1, 1)), 32, 3, 4),
    ('wrn', dict(depth=10, widen_factor=1, dropout_rate=0.3), 16, 3, 3),
    S('resnext_cifar', dict(depth=11, cardinality=2, base_width=4, widen=1), 16, 3, 3),
    ('densenet_cifar', dict(depth=16, growth_rate=4, dropout_rate=0.2), 16, 3, 3 * 2 + 2),
    S('densenet', dict(growth_rate=4, block_config=(1, 2, 1, 1), num_init_features=8), 32, 3, 5 + 3),
    (
        'dpn',
        dict(small=True, num_init_features=8, k_r=16, groups=2, k_sec=(1, 1, 1, 1), inc_sec=(4, 4, 4, 4)),
        16,
        3,
        4,
    ),
    S('mobilenet_v1', dict(width_multiplier=0.25), 64, 3, 13),
    S('mobilenet_v1', dict(width_multiplier=0.25, separable=False), 64, 3, 13),
    S('mobilenet_v2', dict(width_mult=0.25), 64, 3, 17),
    S('mobilenet_v3_small', dict(width_mult=0.25), 64, 3, 11),
    S('mnasnet_a1', dict(alpha=0.25), 64, 3, 2 + 3 + 4 + 2 + 3 + 1),
    (
        'efficientnet',
        dict(width_mult=0.5, setting=((1, 3, 1, 32, 16, 1), (6, 5, 2, 16, 24, 2)), drop_path_rate=0.5),
        32,
        3,
        3,
    ),
    S('efficientnet', dict(width_mult=0.25, depth_mult=0.25, drop_path_rate=0.5), 64, 3, 7),
    S('shufflenet_v1', dict(groups=2, scale=0.25, stage_repeats=(1, 2, 1)), 64, 3, 4),
    S('shufflenet_v2', dict(stages_out_channels=(8, 16, 32, 64, 64), stages_repeats=(1, 2, 1)), 64, 3, 4),
    S('googlenet', dict(aux_logits=True), 64, 3, 9),
    S('inception_v3', {}, 75, 3, 11),
    S('squeezenet1_1', {}, 64, 3, 8),
    S('airbench94_cifar', dict(widths=(8, 16, 16)), 32, 3, 3),
    S(
        'vgg',
        dict(cfg=(8, 'LRN', 'M', 16, 16, 'M', 16), batch_norm=True, classifier_width=16, pool_size=1),
        16,
        3,
        3,
    ),
    S('vgg', dict(cfg=(8, 'M', 16, 'M'), classifier_width=16, pool_size=2), 16, 1, 2),
    S('deeplabv3_resnet18', dict(width=8, stem_width=8, head_features=16), 32, 3, 8),
    S('lraspp_mobilenet_v3_large', dict(width_mult=0.25, inter_features=16), 64, 3, 15),
]


def _small(name, kwargs, remat):
    return models.create(name, num_classes=5, remat=remat, **kwargs)


def _train_step_fn(model):
    """(logits, new batch_stats), gradients of a loss on the logits, in train mode with dropout rngs."""

    def loss(params, rest, x):
        out, new = model.apply(
            {'params': params, **rest},
            x,
            train=True,
            mutable=['batch_stats', 'intermediates'],
            rngs={'dropout': jax.random.key(7)},
        )
        return jnp.sum(jnp.sin(out)), (out, new.get('batch_stats', {}))

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


def _close(a, b, what, scale=None):
    """Equal at float32 rounding: XLA fuses the recomputed forward differently, so differences are
    relative to ``scale`` (the largest value of the whole tree, e.g. of all gradients)."""
    a, b = np.asarray(a), np.asarray(b)
    scale = max(float(np.max(np.abs(a))), 1e-3) if scale is None else scale
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=what)


def _max(tree) -> float:
    return max(float(jnp.max(jnp.abs(v))) for v in jax.tree_util.tree_leaves(tree))


def _count(jaxpr, names=REMAT_PRIMITIVES) -> int:
    n = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in names:
            n += 1
        for sub in _subjaxprs(eqn):
            n += _count(sub, names)
    return n


def _subjaxprs(eqn):
    for v in eqn.params.values():
        vs = v if isinstance(v, (tuple, list)) else (v,)
        for j in vs:
            if isinstance(j, jax.extend.core.ClosedJaxpr):
                yield j.jaxpr
            elif isinstance(j, jax.extend.core.Jaxpr):
                yield j


def _init(model, x, rngs=None, **kwargs):
    """``model.init`` jitted: the eager init dispatches op by op (10-20 s per model on CPU, 1-2 s jitted)."""
    rngs = jax.random.key(0) if rngs is None else rngs
    init = jax.jit(lambda x: model.init(rngs, x, **kwargs))
    return init.lower(x).compile(compiler_options=FAST_COMPILE)(x)


def _run(model, params, rest, x):
    """The jitted train-mode step, traced once: (its result, the number of remat equations in it)."""
    traced = _train_step_fn(model).trace(params, rest, x)
    compiled = traced.lower().compile(compiler_options=FAST_COMPILE)
    return compiled(params, rest, x), _count(traced.jaxpr.jaxpr)


@pytest.mark.parametrize(
    'case', [c if hasattr(c, 'marks') else pytest.param(c, id=_case_id(c)) for c in SMALL]
)
def test_values_and_gradients_equal_and_one_remat_per_block(case):
    name, kwargs, size, channels, blocks = case
    x = jax.random.normal(jax.random.key(1), (2, size, size, channels), jnp.float32)
    plain, remat = _small(name, kwargs, False), _small(name, kwargs, True)
    variables = _init(plain, x, rngs={'params': jax.random.key(0), 'dropout': jax.random.key(0)}, train=False)
    params, rest = variables['params'], {k: v for k, v in variables.items() if k != 'params'}
    ((l0, (out0, bs0)), g0), n0 = _run(plain, params, rest, x)
    ((l1, (out1, bs1)), g1), n1 = _run(remat, params, rest, x)
    assert (n0, n1) == (0, blocks)  # the traced step: one remat equation per block with the knob
    _close(out0, out1, 'logits')
    _close(l0, l1, 'loss')
    assert jax.tree_util.tree_structure(g0) == jax.tree_util.tree_structure(g1)
    scale = _max(g0)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g0), jax.tree_util.tree_leaves(g1)):
        _close(a, b, f'gradient {jax.tree_util.keystr(path)}', scale)
    for a, b in zip(jax.tree_util.tree_leaves(bs0), jax.tree_util.tree_leaves(bs1)):
        _close(a, b, 'batch_stats')
    assert scale > 0


def test_cpu_custom_derivatives_run_inside_remat():
    """VGG's first stage under remat: a 3-channel 3x3 first conv (research/kernels/cpu.py's shift-add form,
    a custom_jvp) and a 2x2 max pool (the tiled max pool, a custom_jvp), both chosen per platform
    (``lax.platform_dependent``). They sit inside the remat equations; reverse mode (jit, lowered for CPU)
    and forward mode (``jax.jvp``) give what they give without remat."""
    kwargs = dict(cfg=(8, 'M', 16, 'M'), classifier_width=16, pool_size=1, dropout_rate=0.0)
    plain, remat = _small('vgg', kwargs, False), _small('vgg', kwargs, True)
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3), jnp.float32)
    v = _init(plain, x)

    def loss(model):
        return lambda p, x: jnp.sum(jnp.sin(model.apply({'params': p}, x, train=True)))

    jaxpr = jax.make_jaxpr(loss(remat))(v['params'], x).jaxpr
    stages = [e.params['jaxpr'] for e in jaxpr.eqns if e.primitive.name in REMAT_PRIMITIVES]
    assert [_custom_jvp_functions(j) for j in stages] == [
        ['_shift_conv', 'relu', '_max_pool_tiled_cpu'],  # conv1_1 on 3 channels, its ReLU, pool1
        ['relu', '_max_pool_tiled_cpu'],
    ]
    assert _count(stages[0], ('platform_index',)) == 2  # the CPU form or the plain op, chosen when lowered
    assert _count(jax.make_jaxpr(jax.grad(loss(remat)))(v['params'], x).jaxpr) == 2
    g0, g1 = (
        jax.jit(jax.grad(loss(m)))
        .lower(v['params'], x)
        .compile(compiler_options=FAST_COMPILE)(v['params'], x)
        for m in (plain, remat)
    )
    jax.tree.map(lambda a, b: _close(a, b, 'gradient', _max(g0)), g0, g1)
    t = jax.tree.map(lambda a: jnp.ones_like(a) * 0.01, v['params'])
    y0, dy0 = jax.jit(lambda p, t: jax.jvp(lambda p: loss(plain)(p, x), (p,), (t,)))(v['params'], t)
    y1, dy1 = jax.jit(lambda p, t: jax.jvp(lambda p: loss(remat)(p, x), (p,), (t,)))(v['params'], t)
    _close(y0, y1, 'value')
    _close(dy0, dy1, 'jvp')


def test_remat_call_keeps_names_and_counts_one_equation():
    class Net(nn.Module):
        remat: bool = False

        @nn.compact
        def __call__(self, x):
            x = nn.Dense(4)(x)
            for i in range(3):
                x = remat_call(self.remat, self, lambda h: nn.tanh(nn.Dense(4, name=f'd{i}')(h)), x)
            return nn.Dense(2)(x)

    x = jnp.ones((2, 3))
    a = Net().init(jax.random.key(0), x)
    b = Net(remat=True).init(jax.random.key(0), x)
    assert list(a['params']) == list(b['params']) == ['Dense_0', 'd0', 'd1', 'd2', 'Dense_1']
    jax.tree.map(np.testing.assert_array_equal, a, b)
    grad = jax.grad(lambda p: Net(remat=True).apply({'params': p}, x).sum())
    assert _count(jax.make_jaxpr(grad)(a['params']).jaxpr) == 3


def _temp_bytes(remat: bool, batch: int) -> int:
    model = models.create('resnet_cifar', depth=20, remat=remat)
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))

    def loss(p, bs, x):
        out, new = model.apply({'params': p, 'batch_stats': bs}, x, train=True, mutable=['batch_stats'])
        return out.mean(), new

    x = jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32)
    lowered = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(v['params'], v['batch_stats'], x)
    step = lowered.compile(compiler_options=FAST_COMPILE)
    return step.memory_analysis().temp_size_in_bytes


def test_compiled_step_needs_less_temporary_memory():
    """XLA's buffer assignment for ResNet-20's gradient at batch 32: with remat the step keeps each block's
    input instead of all its activations (benchmarks/RESULTS.md has ResNet-56 at batch 128: 904 -> 166 MiB).
    XLA:CPU needs the project's flag (research/xla_flags.py: without it the CPU pipeline drops the
    recomputation's barriers and remat costs memory instead)."""
    if jax.default_backend() == 'cpu' and 'cse_barrier_expander' not in os.environ.get('XLA_FLAGS', ''):
        pytest.skip('XLA:CPU without research.xla_flags (RESEARCH_XLA_FLAGS=0 or a GPU plugin installed)')
    plain, remat = _temp_bytes(False, 32), _temp_bytes(True, 32)
    assert remat < 0.5 * plain, (plain, remat)


# --------------------------------------------------------------------------- configs


def test_a_model_without_the_knob_refuses_it_by_name():
    from research.config import base_config, explain_override_error, with_model
    from research.tasks.checks import check_values

    err = explain_override_error(
        ['launch.py', '--config=experiments/classification/lenet5_digits.py', '--config.model.remat=True']
    )
    assert str(err).startswith(
        "model.remat='True': model 'lenet5_modern' takes no argument 'remat'; accepted: "
    )
    for name in ('lenet5', 'lenet5_modern', 'alexnet', 'unet', 'segnet'):
        c = base_config()
        with_model(c, name, remat=True)
        with pytest.raises(
            ConfigError, match=rf"^model.remat=True: model '{name}' takes no argument 'remat'"
        ):
            check_values(c)
    with pytest.raises(ValueError, match="unknown argument 'remat' for model 'alexnet'"):
        models.create('alexnet', remat=True)


def _launch_config(*args: str):
    """The config ``launch.py`` builds from these arguments (``research.cli.parse_flags``'s parsing)."""
    from tests.test_docs import parse_launch

    return parse_launch(list(args))['config'].value


def test_experiment_configs_reach_the_knob():
    from research.config import load_config_file

    spec = 'experiments/classification/resnet_imagenet.py:model=resnet50'
    assert 'remat' not in load_config_file(spec).model  # configs without the argument are as before
    assert load_config_file(spec + ',remat').model.remat is True
    assert _launch_config(f'--config={spec}', '--config.model.remat=True').model.remat is True
    classic = 'experiments/classification/imagenet_classic.py'
    assert load_config_file(f'{classic}:model=vgg16_bn,remat').model.remat is True
    with pytest.raises(ConfigError, match=r"^model.remat=True: model 'alexnet' takes no argument 'remat'"):
        from research.tasks.checks import check_values

        check_values(load_config_file(f'{classic}:model=alexnet,remat'))
    for spec in (
        'experiments/classification/mobilenet.py:model=v3_large,remat',
        'experiments/classification/efficientnet.py:variant=b3,remat',
        'experiments/classification/shufflenet.py:version=1,groups=3,remat',
        'experiments/classification/shufflenet.py:version=2,scale=1.0,remat',
    ):
        c = load_config_file(spec)
        built = models.create(c.model.name, **{k: v for k, v in c.model.items() if k != 'name'})
        assert built.remat is True, spec


def test_a_run_may_resume_with_the_knob_switched():
    from research.train import records

    saved = {'model': {'name': 'resnet50'}, 'seed': 0}
    now = {'model': {'name': 'resnet50', 'remat': True}, 'seed': 0}
    changes = records.config_changes(saved, now)
    assert changes == {'model.remat': (None, True)}
    assert records.check_config_change(changes, workdir='w') == {}
    with pytest.raises(records.ConfigChangeError, match='model.depth'):
        records.check_config_change({'model.depth': (20, 56)}, workdir='w')


@pytest.mark.slow
def test_a_run_resumes_with_the_knob_switched(tmp_path):
    """End to end through the one loop: a ResNet-8 run stopped at step 4 without remat resumes with
    ``model.remat=True`` (same checkpoint, recorded as a config change) and ends where an uninterrupted run
    without remat ends, up to float rounding (synthetic data: the same batch every step). 16-26 s on 2 shared
    cores, most of it the loop's first start: ``pytest -m slow tests/test_remat.py -k resumes``."""
    from research.config import base_config, with_model
    from research.tasks import train_and_evaluate
    from research.train.checkpoint import Checkpointer

    def cfg(remat):
        c = base_config()
        with_model(c, 'resnet_cifar', depth=8, width=4, remat=remat)
        c.data.name, c.data.data_dir, c.data.image_size, c.data.synthetic = (
            'digits',
            str(tmp_path / 'd'),
            16,
            True,
        )
        c.optimizer.name, c.optimizer.lr = 'sgd', 0.05
        c.train.duration, c.train.batch_size, c.train.eval_every = '6 steps', 8, ''
        c.train.checkpoint_every, c.train.async_checkpoints = '2 steps', False
        return c

    full = train_and_evaluate(cfg(False), tmp_path / 'full', show_progress=False)
    part = train_and_evaluate(cfg(False), tmp_path / 'run', stop_after_steps=4, show_progress=False)
    assert not part['complete']
    resumed = train_and_evaluate(cfg(True), tmp_path / 'run', show_progress=False)
    assert resumed['complete'] and full['complete']
    history = (tmp_path / 'run' / 'config_history.jsonl').read_text()
    assert 'model.remat' in history
    a, b = (Checkpointer(tmp_path / w).restore_raw() for w in ('full', 'run'))
    assert int(a['step']) == int(b['step']) == 6
    for key in ('params', 'batch_stats'):
        jax.tree.map(lambda x, y: _close(x, y, key), a[key], b[key])
