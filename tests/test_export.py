"""Cross-platform export: the classification train and eval steps as GPU and TPU run them, proven on CPU.

Each step is exported with ``jax.export`` for ``platforms=('cuda', 'tpu')`` from abstract inputs
(``jax.ShapeDtypeStruct`` with shardings over an 8-device data-parallel mesh, or the FSDP mesh
``('data', 'model')`` = (2, 4) for ResNet-50), in float32 and bfloat16, and the StableHLO is read by
:mod:`research.train.export`: no CPU-only or unstable custom call and no host callback; convolutions
and dot products in the asked dtype; BatchNorm statistics (flax's ``_compute_stats``) and the loss
(``cross_entropy``) reduced in float32; and, for some, the module compiled by XLA:CPU's SPMD
partitioner for the 8 devices shows the gradient all-reduce (all-gather of the FSDP-sharded
parameters). One model per classification family in CI; every registered classification model with
``pytest -m slow tests/test_export.py`` (536 exports, about 17 min of CPU).

The 8-device cases run in a subprocess (``XLA_FLAGS=--xla_force_host_platform_device_count=8``,
``JAX_PLATFORMS=cpu``): this file is also that subprocess's script (``python tests/test_export.py
CASES.json OUT.json``). Segmentation and detection steps get the same checks once their task
steps exist (issue 22).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: One model per classification family (research/models/__init__.py's _FAMILIES), the smallest variant.
FAMILY_MODELS = {
    'lenet': 'lenet5_modern',
    'resnet_cifar': 'resnet20',
    'resnet': 'resnet18',
    'preact_resnet': 'preact_resnet18',
    'wide_resnet': 'wrn16_1',
    'resnext': 'resnext29_8x64d',
    'alexnet': 'alexnet',
    'vgg': 'vgg11_bn',
    'googlenet': 'googlenet',
    'inception': 'inception_v3',
    'squeezenet': 'squeezenet1_1',
    'densenet': 'densenet_40_12',
    'dpn': 'dpn68',
    'shufflenet': 'shufflenet_v2_x0_5',
    'mobilenet': 'mobilenet_v2',
    'efficientnet': 'efficientnet_b0',
    'mnasnet': 'mnasnet0_5',
    'airbench': 'airbench94_cifar',
}
#: Families whose models are not classifiers (their steps come with the segmentation/detection tasks).
NON_CLASSIFICATION = {
    'fcn',
    'segnet',
    'unet',
    'pspnet',
    'deeplab',
    'context',
    'yolo',
    'ssd',
    'retinanet',
    'faster_rcnn',
    'rcnn',
}
#: The FSDP case: a big model, train.model_parallel = 4 on 8 devices.
FSDP_MODEL, FSDP_MP = 'resnet50', 4
#: Cases whose exported module is also compiled by XLA:CPU's partitioner (seconds each) in CI.
PARTITIONED = {
    ('lenet5_modern', 'float32', 'train'),
    ('resnet20', 'bfloat16', 'train'),
    ('resnet20', 'bfloat16', 'eval'),
}
GLOBAL_BATCH = 16


# -- the subprocess: export the cases -----------------------------------------------------------
def _run_case(name: str, precision: str, step: str, model_parallel: int, partition: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from research import models
    from research.models import catalog
    from research.train import export
    from research.train import mesh as mesh_lib
    from research.train.state import create_train_state, eval_step, train_step

    dtype = jnp.bfloat16 if precision == 'bfloat16' else jnp.float32
    model = models.create(name, num_classes=10, dtype=dtype)
    mesh = mesh_lib.with_model_axis(mesh_lib.make_mesh(), model_parallel)
    shape = catalog.input_shape(name)
    tx = optax.sgd(0.1, momentum=0.9)
    init = functools.partial(create_train_state, model, tx, sample_input=jnp.zeros((1, *shape)))
    abstract_state = jax.eval_shape(init, jax.random.key_data(jax.random.key(0)))
    state_sharding = mesh_lib.state_sharding(abstract_state, mesh)
    state = export.abstract(abstract_state, state_sharding)
    b = GLOBAL_BATCH
    batch = dict(
        image=jax.ShapeDtypeStruct((b, *shape), jnp.float32), label=jax.ShapeDtypeStruct((b,), jnp.int32)
    )
    if step == 'eval':
        batch['mask'] = jax.ShapeDtypeStruct((b,), jnp.bool_)
    batch = export.abstract(batch, mesh_lib.batch_sharding(mesh))
    repl = mesh_lib.replicated(mesh)
    if step == 'train':
        fn = jax.jit(train_step, out_shardings=(state_sharding, repl))
    else:
        fn = jax.jit(eval_step, out_shardings=repl)
    t = time.perf_counter()
    r = export.check(
        fn,
        state,
        batch,
        platforms=('cuda', 'tpu'),
        partition_on=list(mesh.devices.flat) if partition else None,
    )
    # the parameters' shardings on the way in and out (the state's leaves come first, in tree order)
    n_params = len(jax.tree.leaves(abstract_state.params))
    first_param = len(jax.tree.leaves(abstract_state.step))
    param_out = r.out_shardings[first_param : first_param + n_params] if step == 'train' else ()
    return dict(
        seconds=round(time.perf_counter() - t, 2),
        summary=r.summary(),
        problems=r.problems(),
        conv=sorted(r.element_types('stablehlo.convolution')),
        dot=sorted(r.element_types('stablehlo.dot_general')),
        n_conv=len(r.select('stablehlo.convolution')),
        bn_stats=sorted(r.element_types('stablehlo.reduce', where='_compute_stats')),
        n_bn_stats=len(r.select('stablehlo.reduce', where='_compute_stats')),
        has_bn=bool(abstract_state.batch_stats),
        loss=sorted(r.element_types('stablehlo.reduce', where='cross_entropy')),
        n_loss=len(r.select('stablehlo.reduce', where='cross_entropy')),
        collectives=r.collectives,
        partitioned=r.partitioned,
        partitioned_types={k: sorted(v) for k, v in (r.partitioned_types or {}).items()},
        param_out_shardings=sorted(set(param_out)),
        nr_devices=r.nr_devices,
    )


def _worker(cases_path: str, out_path: str) -> None:
    import jax

    assert jax.device_count() == 8 and jax.default_backend() == 'cpu', jax.devices()
    results = {}
    for case in json.loads(Path(cases_path).read_text()):
        key = '/'.join(str(c) for c in case[:4])
        try:
            results[key] = _run_case(*case)
        except Exception as e:  # report per case: one failure does not hide the others
            results[key] = dict(error=f'{type(e).__name__}: {str(e)[:2000]}')
        print(key, results[key].get('summary', results[key].get('error')), flush=True)
    Path(out_path).write_text(json.dumps(results))


def export_cases(cases: list[tuple], tmp_path: Path, timeout: int = 1800) -> dict:
    """Runs the cases ``(model, precision, step, model_parallel, partition)`` in an 8-CPU-device
    subprocess; returns ``{'model/precision/step/model_parallel': result}``."""
    cases_path, out_path = tmp_path / 'cases.json', tmp_path / 'out.json'
    cases_path.write_text(json.dumps(cases))
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')])
    r = subprocess.run(
        [sys.executable, __file__, str(cases_path), str(out_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return json.loads(out_path.read_text())


# -- the checks ---------------------------------------------------------------------------------
def _check(res: dict, precision: str, step: str) -> None:
    assert 'error' not in res, res['error']
    assert res['problems'] == [], res['problems']
    want = 'bf16' if precision == 'bfloat16' else 'f32'
    assert res['n_conv'] > 0 and res['conv'] == [want], res['summary']
    assert res['dot'] in ([want], []), res['summary']  # a model may end without a dense layer
    assert res['n_loss'] > 0 and res['loss'] == ['f32'], res  # log-softmax reductions in float32
    assert res['nr_devices'] == 8
    if step == 'train':
        assert res['has_bn'] == (res['n_bn_stats'] > 0), res  # every BN layer's statistics are found
        if res['has_bn']:
            assert res['bn_stats'] == ['f32'], res
    else:
        assert res['n_bn_stats'] == 0  # eval uses the running statistics
    if res['partitioned'] is not None:
        # data parallel: the gradients (train) or the metric sums (eval) are reduced across devices
        assert res['partitioned']['all-reduce'] > 0, res['partitioned']


def _cases(models, partitioned=PARTITIONED):
    return [
        (m, p, s, 1, (m, p, s) in partitioned)
        for m in models
        for p in ('float32', 'bfloat16')
        for s in ('train', 'eval')
    ]


@pytest.fixture(scope='module')
def family_results(tmp_path_factory):
    cases = _cases(FAMILY_MODELS.values()) + [(FSDP_MODEL, 'bfloat16', 'train', FSDP_MP, True)]
    return export_cases(cases, tmp_path_factory.mktemp('export'))


def test_family_table_covers_every_classification_family():
    import research.models as models

    families = {f.__name__.rsplit('.', 1)[-1] for f in models._FAMILIES}
    assert set(FAMILY_MODELS) == families - NON_CLASSIFICATION
    for family, name in FAMILY_MODELS.items():
        assert name in getattr(models, family).REGISTRY_ENTRIES


@pytest.mark.parametrize('precision', ['float32', 'bfloat16'])
@pytest.mark.parametrize('step', ['train', 'eval'])
@pytest.mark.parametrize('family', sorted(FAMILY_MODELS))
def test_step_exports_for_gpu_and_tpu(family_results, family, step, precision):
    res = family_results[f'{FAMILY_MODELS[family]}/{precision}/{step}/1']
    print(res.get('summary'), res.get('seconds'))
    _check(res, precision, step)


def test_partitioned_steps_reduce_gradients_and_metrics(family_results):
    """The cases compiled by the partitioner: gradients (train) and metric sums (eval) all-reduced,
    in float32 even when the step computes in bfloat16."""
    for model, precision, step in PARTITIONED:
        res = family_results[f'{model}/{precision}/{step}/1']
        assert res['partitioned']['all-reduce'] > 0, res
        assert res['partitioned_types']['all-reduce'] == ['f32'], res


def test_fsdp_step_exports_sharded(family_results):
    """ResNet-50 in bfloat16 on the (data 2, model 4) mesh: the large parameters enter and leave sharded
    on ``model``; the partitioned program all-gathers them for the forward pass and reduces the
    gradients (all-reduce here; GPU/TPU pipelines may rewrite all-reduce + slice as reduce-scatter)."""
    res = family_results[f'{FSDP_MODEL}/bfloat16/train/{FSDP_MP}']
    _check(res, 'bfloat16', 'train')
    sharded = [s for s in res['param_out_shardings'] if '"model"' in s]
    assert sharded, res['param_out_shardings']  # some parameters stay sharded across the model axis
    p = res['partitioned']
    assert p['all-gather'] > 0 and p['all-reduce'] + p['reduce-scatter'] > 0, p


# -- the harness itself, in this process (1 device) ---------------------------------------------
def test_harness_finds_cpu_only_custom_calls():
    """A oneDNN convolution (an FFI target registered for the host only) exported for cuda/tpu is
    reported as CPU-only; the same program with XLA's convolution is clean."""
    import jax
    import jax.numpy as jnp

    from research.kernels import onednn
    from research.train import export

    if not onednn.available():
        pytest.skip(f'oneDNN unavailable: {onednn.unavailable_reason()}')
    x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 3, 4), jnp.float32)

    def loss(x, w, conv):
        return jnp.sum(conv(x, w) ** 2)

    def onednn_conv(x, w):
        return onednn.conv2d(x, w, (1, 1), ((1, 1), (1, 1)), (1, 1))

    def xla_conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
        )

    bad = export.check(jax.grad(functools.partial(loss, conv=onednn_conv), argnums=(0, 1)), x, w)
    assert bad.cpu_only_custom_calls == sorted(name for name, _ in onednn.TARGETS.values())
    assert bad.custom_calls == {name: 1 for name, _ in onednn.TARGETS.values()}
    assert any("CPU-only custom call 'research_onednn_conv_fwd'" in p for p in bad.problems())
    good = export.check(jax.grad(functools.partial(loss, conv=xla_conv), argnums=(0, 1)), x, w)
    assert good.problems() == [] and good.custom_calls == {}
    # forward, input and filter gradients (JAX lowers a convolution per platform: one copy per branch)
    assert good.element_types('stablehlo.convolution') == {'f32'} and len(
        good.select('stablehlo.convolution')
    ) in (3, 6)
    # exported for the CPU only, the same targets are not "CPU-only" (they run there)
    assert (
        export.check(
            jax.grad(functools.partial(loss, conv=onednn_conv), argnums=(0, 1)), x, w, platforms=('cpu',)
        ).cpu_only_custom_calls
        == []
    )


def test_harness_finds_host_callbacks():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from research.train import export

    def step(x):
        jax.debug.print('sum {}', x.sum())
        y = jax.pure_callback(lambda a: np.asarray(a) * 2, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
        return y + 1

    r = export.check(step, jax.ShapeDtypeStruct((4,), jnp.float32))
    assert r.text is None and r.error
    assert [c.split(' at ')[0] for c in r.host_callbacks] == ['debug_print', 'pure_callback']
    assert all('test_export.py' in c for c in r.host_callbacks)  # the source line of each
    assert len(r.problems()) == 2
    assert export.check(lambda x: x * 2, jax.ShapeDtypeStruct((4,), jnp.float32)).problems() == []


def test_harness_reads_types_and_locations():
    """bfloat16 matmul with a float32 reduction: types per op, selection by name-stack location."""
    import jax
    import jax.numpy as jnp

    from research.train import export

    def f(a, b):
        with jax.named_scope('head'):
            y = (a.astype(jnp.bfloat16) @ b.astype(jnp.bfloat16)).astype(jnp.float32)
        with jax.named_scope('loss'):
            return jnp.mean(y**2)

    r = export.check(f, jax.ShapeDtypeStruct((4, 8), jnp.float32), jax.ShapeDtypeStruct((8, 2), jnp.float32))
    assert r.element_types('stablehlo.dot_general') == {'bf16'}
    assert r.element_types('stablehlo.reduce', where='loss') == {'f32'}
    assert r.select('stablehlo.dot_general', where='loss') == [] and len(
        r.select('stablehlo.dot_general', where='head')
    ) in (1, 2)
    assert r.platforms == ('cuda', 'tpu') and r.collectives['stablehlo.all_reduce'] == 0


def test_onednn_traced_step_exports_without_cpu_only_calls():
    """A train step traced with oneDNN convolutions on (as the CPU trainers do) still exports for
    cuda/tpu with XLA's convolutions: oneDNN is in the CPU branch of each convolution
    (research/kernels/cpu.py, lax.platform_dependent), which a cuda/tpu lowering drops."""
    import jax
    import jax.numpy as jnp
    import optax

    from research import models
    from research.kernels import onednn
    from research.train import export
    from research.train.state import create_train_state, train_step

    if not onednn.available():
        pytest.skip(f'oneDNN unavailable: {onednn.unavailable_reason()}')
    model = models.create('lenet5_modern', num_classes=10)
    init = functools.partial(
        create_train_state, model, optax.sgd(0.1), sample_input=jnp.zeros((1, 32, 32, 1))
    )
    state = jax.eval_shape(init, jax.random.key_data(jax.random.key(0)))
    batch = dict(
        image=jax.ShapeDtypeStruct((4, 32, 32, 1), jnp.float32), label=jax.ShapeDtypeStruct((4,), jnp.int32)
    )
    with onednn.use_onednn(True):
        r = export.check(jax.jit(train_step), state, batch)
    assert r.cpu_only_custom_calls == [], r.problems()


# -- every registered classification model (slow) -----------------------------------------------
def _all_classification_models() -> list[str]:
    import research.models as models

    families = [f for f in models._FAMILIES if f.__name__.rsplit('.', 1)[-1] not in NON_CLASSIFICATION]
    return [name for f in families for name in f.REGISTRY_ENTRIES]


@pytest.mark.slow  # 536 exports, ~17 CPU-min: pytest -m slow tests/test_export.py
def test_every_classification_model_exports(tmp_path):
    names = _all_classification_models()
    results = export_cases(_cases(names, partitioned=set()), tmp_path, timeout=3600)
    failures = {}
    for key, res in results.items():
        name, precision, step, _ = key.split('/')
        try:
            _check(res, precision, step)
        except AssertionError as e:
            failures[key] = str(e)[:300]
    assert not failures, failures
    assert len(results) == 4 * len(names)


if __name__ == '__main__':
    sys.path.insert(0, str(REPO))
    _worker(*sys.argv[1:3])
