"""Cross-platform export of every task's steps, built by the one loop, proven on CPU (issue 23).

For each task the steps are built as a run builds them: ``tr = research.tasks.trainer(config)``, then
``tr.step_fn()`` (the train step with the loop's wrappers, or the task's own) and ``tr.eval_fn()``
(the eval step over the mesh), with ``tr.abstract_state()`` / ``tr.abstract_batch(split)`` as the
arguments (``jax.ShapeDtypeStruct`` with the run's shardings; nothing is allocated but one batch of
the tiny data set read for its shapes). Each program is exported with ``jax.export`` for
``platforms=('cuda', 'tpu')`` and read by :mod:`research.train.export`:

- no CPU-only or unstable custom call and no host callback;
- convolutions and dot products in the asked dtype (bfloat16 for ``train.precision='bfloat16'``, for
  the tasks that take it: classification, segmentation, detection; the others in float32);
- the loss reductions (the task's loss functions, :data:`LOSS_WHERE`) and BatchNorm statistics
  (flax's ``_compute_stats``) in float32 only; the eval steps compute no batch statistics;
- compiled by XLA:CPU's SPMD partitioner for the mesh's devices: the data-parallel train step
  all-reduces its gradients in float32; under FSDP (``train.model_parallel``) it all-gathers the
  sharded parameters and reduces the gradients, and the large parameters leave the step sharded.

Meshes: 8 simulated CPU devices (``('data',)``), the ``('data', 'model')`` = (2, 4) FSDP mesh for
DeepLabv3-ResNet-50, and the single device of the single-device tasks (style_transfer, speedrun).
Programs whose evaluation is not the eval step: ``gan`` evaluates with the generator
(``generate``), ``style_transfer`` with its loss network on the image (``losses``), ``speedrun``
adds the test-time-augmented eval step (``eval_tta``). The speed run is exported with
``speedrun.unroll=1``, its setting on GPU/TPU (on CPU ``0`` unrolls the scan).

CI: one model per task (one per family for segmentation and detection): 59 programs, about 1.8
CPU-min (99 to 108 CPU-s measured; docs/accelerators.md). Every registered segmentation and detection model:
``pytest -m slow tests/test_export_tasks.py``. The 8-device cases run in a subprocess
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``, ``JAX_PLATFORMS=cpu``): this file is its
script (``python tests/test_export_tasks.py CASES.json OUT.json TMP``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: The loss functions' reductions, by the function names in their locations (the task's own ``loss``
#: method is excluded: every op of the forward pass is called from it). Detection: the innermost frame
#: only, since a detector's loss method may run a head (Mask R-CNN's ``_mask_loss`` runs the mask head).
LOSS_WHERE = {
    'classification': r'"cross_entropy"\(',
    'segmentation': r'"(pixel_cross_entropy|dice_loss)"\(',
    'detection': r'^loc\((?:"[^"]*"\()?callsite\("(?!Detection\.)[\w.]*(\.loss|_loss)"\(',
    'gan': r'"bce_(real|fake)"\(',
    'style_transfer': r'"(content_loss|style_loss|tv_loss)"\(',
    'fast_style': r'"(content_loss|style_loss|tv_loss)"\(',
    'speedrun': r'"cross_entropy"\(',
}
#: BatchNorm's statistics (flax's ``_compute_stats`` called from a ``BatchNorm``; innermost frame first);
#: ``_compute_stats`` alone also finds the instance norms of the style transformer.
BN_WHERE = r'"_compute_stats"\(.*"BatchNorm\.__call__"\('
#: Resampling by bilinear weights (a dot) of float32 data that is not the network's activations: R-CNN
#: warping the input image's regions, Mask R-CNN projecting the ground-truth masks (loss) and pasting the
#: predicted masks into the image (eval). These dots stay float32 under bfloat16 and are excluded from the
#: dot dtype check (``geometry_dot`` lists them).
GEOMETRY_WHERE = r'"(RCNN\.warp|project_masks|paste_masks)"\('
SMALL = dict(width=8, stem_width=8)
#: One model per segmentation / detection family (tiny widths), and the model of each other task.
MODELS = {
    'classification': {'lenet5_modern': {}},
    'segmentation': {
        'fcn8s': dict(base_features=4, fc_features=16, dropout_rate=0.0),
        'segnet': dict(base_features=4),
        'unet': dict(depth=2, base_features=8, dropout_rate=0.0),
        'pspnet_resnet18': dict(aux=True, head_features=16, aux_features=16, bins=(1, 2), **SMALL),
        'deeplabv3_resnet18': dict(head_features=16, output_stride=8, aux=False, **SMALL),
        'dilated_vgg16_context': dict(base_features=4, fc_features=16, dropout_rate=0.0),
    },
    'detection': {
        'yolov1_mnist': dict(),
        'ssd_mnist': dict(),
        'retinanet_resnet18_fpn': dict(
            fpn_width=16, head_width=16, head_convs=1, backbone_norm='batch', topk_candidates=32, **SMALL
        ),
        'maskrcnn_resnet18_fpn': dict(
            fpn_channels=16,
            representation_size=32,
            rpn_pre_nms_top_n_train=64,
            rpn_post_nms_top_n_train=32,
            rpn_pre_nms_top_n_test=64,
            rpn_post_nms_top_n_test=32,
            box_batch_size_per_image=16,
            rpn_batch_size_per_image=32,
            freeze_bn=False,
            **SMALL,
        ),
        'fast_rcnn_mnist': dict(),
    },
    'gan': {'dcgan': {}},
    'style_transfer': {'image': {}},
    'fast_style': {'transformer_net': {}},
    'speedrun': {'airbench94_cifar': dict(widths=(4, 8, 8))},
}
#: Tasks that take train.precision (the others run in float32 only).
PRECISION_TASKS = ('classification', 'segmentation', 'detection', 'speedrun')
#: The FSDP case: a big model, train.model_parallel = 4 on 8 devices.
FSDP_CASE = ('segmentation', 'deeplabv3_resnet50', dict(head_features=64, output_stride=8, aux=False))
FSDP_MP = 4
#: Cases whose train step is also compiled by the partitioner in CI (seconds each): one per task.
PARTITIONED = {
    ('classification', 'lenet5_modern', 'bfloat16'),
    ('segmentation', 'unet', 'bfloat16'),
    ('detection', 'yolov1_mnist', 'bfloat16'),
    ('gan', 'dcgan', 'float32'),
    ('style_transfer', 'image', 'float32'),
    ('fast_style', 'transformer_net', 'float32'),
    ('speedrun', 'airbench94_cifar', 'float32'),
}
SINGLE_DEVICE = ('style_transfer', 'speedrun')


# -- the subprocess: build each trainer, export its programs ---------------------------------------
def _register_tiny_vgg():
    import functools

    from research import models

    vgg = models.get_constructor('vgg')
    models.register(
        'test_tiny_vgg',
        functools.partial(vgg, cfg=(4, 'M', 8, 8, 'M'), num_classes=3, classifier_width=8, pool_size=1),
        overwrite=True,
    )


def _image_folder(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (('train', 16), ('test', 16)):
        for i in range(n):
            d = root / split / ('a' if i % 2 else 'b')
            d.mkdir(parents=True, exist_ok=True)
            if not (d / f'{i}.png').exists():
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / f'{i}.png')
    return root


def task_config(task: str, model: str, kwargs: dict, precision: str, model_parallel: int, tmp: Path):
    """A tiny config of ``task`` training ``model`` (global batch 16) on a small offline data set."""
    from research.config import base_config
    from tests.test_detection_data import _write_digit_folder

    kwargs = dict(kwargs)
    canvas = kwargs.pop('_canvas', None)  # a model that needs larger inputs than the default canvas
    c = base_config()
    c.task = task
    c.data.data_dir = str(tmp / 'tfds')
    c.train.update(
        batch_size=16,
        eval_batch_size=16,
        duration='2 steps',
        eval_every='',
        checkpoint_every='',
        async_checkpoints=False,
        precision=precision,
        model_parallel=model_parallel,
    )
    c.optimizer.update(name='adam', lr=1e-3)
    if task in ('classification', 'gan', 'speedrun'):
        c.data.update(name='digits', image_size=32)
    if task == 'classification':
        c.model.name = model
        c.train.update(accumulate_steps=2, ema_decay=0.9)  # the loop's step wrappers, exported too
    elif task == 'segmentation':
        c.data.name = 'shapes_seg'
        c.seg.update(canvas_size=canvas or 32, num_train=16, num_test=16, max_objects=2, viz_examples=0)
        c.model.update(name=model, **kwargs)
    elif task == 'detection':
        c.data.update(name='mnist_det', path=str(_write_digit_folder(tmp / 'digits')))
        c.det.update(
            canvas_size=canvas or 64,
            num_train=16,
            num_test=16,
            min_objects=1,
            max_objects=3,
            min_scale=0.8,
            max_scale=1.2,
            latency_images=0,
            viz_examples=0,
            coco_eval=False,
            proposals='sliding_window',
            max_proposals=64,
        )
        c.model.update(name=model, num_classes=11, **kwargs)
    elif task == 'gan':
        c.data.normalize = False
        c.gan.update(base_size=4, g_width=8, d_width=8, latent_dim=8, grid_samples=16, score_samples=0)
    elif task in ('style_transfer', 'fast_style'):
        _register_tiny_vgg()
        c.style.update(
            model='test_tiny_vgg',
            content_layers=('conv2_1',),
            style_layers=('conv1_1', 'conv2_1'),
            image_size=16,
            style_weight=100.0,
            transformer_width=2,
            transformer_blocks=1,
        )
        if task == 'style_transfer':
            c.train.update(batch_size=1, eval_batch_size=1)
        else:
            c.data.update(name='image_folder', path=str(_image_folder(tmp / 'imgs')), normalize=False)
    elif task == 'speedrun':
        c.model.update(name=model, **kwargs)
        c.optimizer.update(name='nesterov', momentum=0.85, lr=0.2, weight_decay=0.01)
        c.speedrun.update(steps_per_call=2, unroll=1, whiten_samples=64, tta_level=2)
    return c


def _programs(tr) -> dict:
    """``{name: (jitted function, abstract arguments)}``: the train step and the evaluation program(s)
    of ``tr``'s task, as the loop (or the task's ``evaluate``) runs them."""
    import jax

    from research.generative.dcgan import generate

    task, state = tr.task, tr.abstract_state()
    steps = tr.task.steps_per_call
    out = {'train': (tr.step_fn(steps), (state, tr.abstract_batch()))}
    split = str(tr.config.data.eval_split)
    if task.name == 'gan':  # its evaluation draws G(z) (Gan.evaluate); the eval step only counts rows
        z = jax.ShapeDtypeStruct(task.z_grid.shape, task.z_grid.dtype)
        out['eval'] = (jax.jit(generate, static_argnames='train'), (state, z))
    elif task.name == 'style_transfer':  # its evaluation: the losses of the image (StyleTransfer.evaluate)
        out['eval'] = (jax.jit(lambda x: task._losses(x)[1]), (state.params,))
    else:
        out['eval'] = (tr.eval_fn(), (tr.eval_state(state), tr.abstract_batch(split)))
    if task.name == 'speedrun':
        out['eval_tta'] = (tr.eval_fn(task.eval_step_tta), (state, tr.abstract_batch(split)))
    return out


def _run_group(task: str, model: str, kwargs: dict, precision: str, mp: int, partition: bool, tmp: Path):
    import jax

    from research import tasks
    from research.kernels import onednn
    from research.train import export

    t0 = time.perf_counter()
    tr = tasks.trainer(task_config(task, model, kwargs, precision, mp, tmp), show_progress=False)
    has_bn = any(
        'batch_stats' in jax.tree_util.keystr(p) or '_stats' in jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_leaves_with_path(tr.abstract)
    )
    # BatchNorm with frozen statistics (RetinaNet's backbone_norm='frozen', Faster R-CNN's freeze_bn):
    # running statistics in the state, none computed by the step
    model = tr.model
    frozen_bn = getattr(model, 'backbone_norm', None) == 'frozen' or bool(getattr(model, 'freeze_bn', False))
    setup = time.perf_counter() - t0
    results = {}
    for name, (fn, args) in _programs(tr).items():
        t = time.perf_counter()
        # the trainer's jitted functions trace within its CPU-convolution setting (oneDNN on one CPU
        # device): export the jitted function inside the same setting
        with onednn.use_onednn(tr.cpu_conv == 'onednn'):
            r = export.check(
                getattr(fn, '__wrapped__', fn),
                *args,
                platforms=('cuda', 'tpu'),
                partition_on=list(tr.mesh.devices.flat) if partition and name == 'train' else None,
            )
        param_out = ()
        if name == 'train' and hasattr(tr.abstract, 'params') and task != 'speedrun':
            first = len(jax.tree.leaves(tr.abstract.step))
            param_out = r.out_shardings[first : first + len(jax.tree.leaves(tr.abstract.params))]
        where = LOSS_WHERE[task]
        dots = r.select('stablehlo.dot_general')
        results[name] = dict(
            seconds=round(time.perf_counter() - t, 2),
            setup_seconds=round(setup, 2),
            summary=r.summary(),
            problems=r.problems(),
            conv=sorted(r.element_types('stablehlo.convolution')),
            n_conv=len(r.select('stablehlo.convolution')),
            dot=sorted(
                {t for op in dots if not re.search(GEOMETRY_WHERE, op.location) for t in op.element_types}
            ),
            geometry_dot=sorted(
                {t for op in dots if re.search(GEOMETRY_WHERE, op.location) for t in op.element_types}
            ),
            bn_stats=sorted(r.element_types('stablehlo.reduce', where=BN_WHERE)),
            n_bn_stats=len(r.select('stablehlo.reduce', where=BN_WHERE)),
            norm_stats=sorted(r.element_types('stablehlo.reduce', where='_compute_stats')),
            has_bn=has_bn,
            frozen_bn=frozen_bn,
            loss=sorted(r.element_types('stablehlo.reduce', where=where)),
            n_loss=len(r.select('stablehlo.reduce', where=where)),
            partitioned=r.partitioned,
            partitioned_types={k: sorted(v) for k, v in (r.partitioned_types or {}).items()},
            param_out_shardings=sorted(set(param_out)),
            nr_devices=r.nr_devices,
            mesh=dict(tr.mesh.shape),
            cpu_conv=tr.cpu_conv,
        )
    return results


def _worker(cases_path: str, out_path: str, tmp: str) -> None:
    import jax

    assert jax.device_count() == 8 and jax.default_backend() == 'cpu', jax.devices()
    results = {}
    for case in json.loads(Path(cases_path).read_text()):
        task, model, _, precision, mp, _ = case
        key = f'{task}/{model}/{precision}/{mp}'
        try:
            for name, res in _run_group(*case, tmp=Path(tmp)).items():
                results[f'{key}/{name}'] = res
                print(key, name, res['seconds'], res['summary'], flush=True)
        except Exception as e:  # report per case: one failure does not hide the others
            results[f'{key}/error'] = dict(error=f'{type(e).__name__}: {str(e)[:3000]}')
            print(key, 'ERROR', results[f'{key}/error']['error'], flush=True)
    Path(out_path).write_text(json.dumps(results))


def export_cases(cases: list, tmp_path: Path, timeout: int = 1800) -> tuple[dict, float]:
    """Runs ``(task, model, kwargs, precision, model_parallel, partition)`` cases in an 8-CPU-device
    subprocess; returns ``({'task/model/precision/mp/program': result}, CPU seconds)``."""
    cases_path, out_path = tmp_path / 'cases.json', tmp_path / 'out.json'
    cases_path.write_text(json.dumps(cases))
    # XLA:CPU's optimisations off: exporting compiles nothing, but the tasks' setups compile a few small
    # programs (style targets, GAN noise), and the partitioner's compile sets its own options
    flags = '--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0'
    env = dict(os.environ, XLA_FLAGS=flags + ' --xla_llvm_disable_expensive_passes=true', JAX_PLATFORMS='cpu')
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')])
    before = os.times()
    r = subprocess.run(
        [sys.executable, __file__, str(cases_path), str(out_path), str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return json.loads(out_path.read_text()), cpu


# -- the checks ---------------------------------------------------------------------------------
def check_program(res: dict, task: str, precision: str, program: str) -> None:
    assert 'error' not in res, res['error']
    assert res['problems'] == [], res['problems']
    want = 'bf16' if precision == 'bfloat16' else 'f32'
    assert res['nr_devices'] == (1 if task in SINGLE_DEVICE else 8), res
    assert res['n_conv'] > 0 and res['conv'] == [want], res['summary']
    assert res['dot'] in ([want], []), res['summary']  # a model may have no dense layer
    if program == 'train' or task not in ('detection', 'gan'):  # (their evaluations compute no loss)
        # the loss reductions in float32, none in a 16-bit type (integer ones count or match boxes)
        assert res['n_loss'] > 0 and 'f32' in res['loss'] and not {'bf16', 'f16'} & set(res['loss']), res
    assert res['norm_stats'] in ([], ['f32']), res  # every normalisation's statistics in float32
    if program == 'train':
        # every BN layer's statistics are found (frozen BatchNorm computes none)
        assert (res['has_bn'] and not res['frozen_bn']) == (res['n_bn_stats'] > 0), res
        if res['n_bn_stats']:
            assert res['bn_stats'] == ['f32'], res
    else:
        assert res['n_bn_stats'] == 0, res  # evaluation uses the running statistics
    p = res['partitioned']
    if p is not None and program == 'train' and res['nr_devices'] > 1:
        # data parallel: the gradients are reduced across the devices, in float32
        assert p['all-reduce'] + p['reduce-scatter'] > 0, p
        assert 'f32' in res['partitioned_types']['all-reduce'] + res['partitioned_types']['reduce-scatter']


def _cases(models_of: dict, partitioned=PARTITIONED) -> list:
    out = []
    for task, models_ in models_of.items():
        for model, kwargs in models_.items():
            for precision in ('float32', 'bfloat16') if task in PRECISION_TASKS else ('float32',):
                out.append([task, model, kwargs, precision, 1, (task, model, precision) in partitioned])
    return out


def _programs_of(task: str) -> tuple[str, ...]:
    return ('train', 'eval', 'eval_tta') if task == 'speedrun' else ('train', 'eval')


@pytest.fixture(scope='module')
def task_results(tmp_path_factory):
    task, model, kwargs = FSDP_CASE
    cases = _cases(MODELS) + [[task, model, kwargs, 'bfloat16', FSDP_MP, True]]
    t0 = time.perf_counter()
    results, cpu = export_cases(cases, tmp_path_factory.mktemp('export_tasks'))
    print(f'{len(results)} programs exported in {time.perf_counter() - t0:.0f} s wall, {cpu:.0f} s CPU')
    return results


def test_every_task_is_covered():
    from research import tasks

    assert set(MODELS) == set(tasks.names()) == set(LOSS_WHERE)
    assert set(PRECISION_TASKS) == {t for t in tasks.names() if 'train.precision' in tasks.get(t).supports}
    assert set(SINGLE_DEVICE) == {t for t in tasks.names() if tasks.get(t).single_device}


def test_family_table_covers_every_dense_family():
    import research.models as models

    fam = {f.__name__.rsplit('.', 1)[-1]: set(f.REGISTRY_ENTRIES) for f in models._FAMILIES}
    seg = {'fcn', 'segnet', 'unet', 'pspnet', 'deeplab', 'context'}
    det = {'yolo', 'ssd', 'retinanet', 'faster_rcnn', 'rcnn'}
    for task, families in (('segmentation', seg), ('detection', det)):
        covered = {f for f in families if fam[f] & set(MODELS[task])}
        assert covered == families, (task, families - covered)


@pytest.mark.parametrize(
    'task,model,precision',
    [(c[0], c[1], c[3]) for c in _cases(MODELS)],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_task_steps_export_for_gpu_and_tpu(task_results, task, model, precision):
    key = f'{task}/{model}/{precision}/1'
    assert f'{key}/error' not in task_results, task_results.get(f'{key}/error')
    for program in _programs_of(task):
        res = task_results[f'{key}/{program}']
        print(key, program, res['summary'], res['seconds'])
        check_program(res, task, precision, program)
        assert (res['partitioned'] is not None) == (
            program == 'train' and (task, model, precision) in PARTITIONED
        )


def test_partitioned_steps_reduce_gradients(task_results):
    """Every task with a multi-device mesh all-reduces its gradients; single-device tasks have no
    collective at all."""
    for task, model, precision in sorted(PARTITIONED):
        res = task_results[f'{task}/{model}/{precision}/1/train']
        p = res['partitioned']
        if task in SINGLE_DEVICE:
            assert res['mesh'] == {'data': 1} and sum(p.values()) == 0, (task, p)
        else:
            assert res['mesh'] == {'data': 8} and p['all-reduce'] > 0, (task, p)


def test_single_device_tasks_export_their_onednn_trace_cleanly(task_results):
    """speedrun and style_transfer run on one CPU device with oneDNN convolutions (when the extra is
    installed): the trace that holds them exports for cuda/tpu with XLA's convolutions only."""
    from research.kernels import onednn

    if not onednn.available():
        pytest.skip(f'oneDNN unavailable: {onednn.unavailable_reason()}')
    for task in SINGLE_DEVICE:
        model = next(iter(MODELS[task]))
        res = task_results[f'{task}/{model}/float32/1/train']
        assert res['cpu_conv'] == 'onednn' and res['problems'] == [], res


def test_fsdp_task_step_exports_sharded(task_results):
    """DeepLabv3-ResNet-50 in bfloat16 on the (data 2, model 4) mesh: the large parameters leave the
    step sharded on ``model``; the partitioned program all-gathers them and reduces the gradients."""
    task, model, _ = FSDP_CASE
    res = task_results[f'{task}/{model}/bfloat16/{FSDP_MP}/train']
    check_program(res, task, 'bfloat16', 'train')
    assert res['mesh'] == {'data': 8 // FSDP_MP, 'model': FSDP_MP}
    assert [s for s in res['param_out_shardings'] if '"model"' in s], res['param_out_shardings']
    p = res['partitioned']
    assert p['all-gather'] > 0 and p['all-reduce'] + p['reduce-scatter'] > 0, p
    check_program(task_results[f'{task}/{model}/bfloat16/{FSDP_MP}/eval'], task, 'bfloat16', 'eval')


def test_loss_selection_finds_only_loss_functions():
    """The :data:`LOSS_WHERE` patterns select the loss functions' frames, not the task's ``loss`` method
    (every op of the forward pass is called from it) nor the loop's ``loss_step``."""
    frames = {
        '"RetinaNet.loss"(': True,
        '"sigmoid_focal_loss"(': True,
        '"fastrcnn_loss"(': True,
        '"rpn_loss"(': True,
        '"yolo_loss"(': True,
        '"SSD.loss"(': True,
        '"FasterRCNN._mask_loss"(': True,
        '"Detection.loss"(': False,
        '"loss_step"(': False,
        '"_Conv.__call__"(': False,
    }
    for frame, selected in frames.items():  # the innermost frame of an op's location
        loc = f'loc("jit(loss_step)/jvp(M)/reduce_sum"(callsite({frame}"/x.py":1:2 to :3) at callsite("f"(...'
        assert bool(re.search(LOSS_WHERE['detection'], loc)) == selected, frame
    # an outer frame does not select: the mask head's ops run from inside Mask R-CNN's _mask_loss
    head = 'loc("jit(loss_step)/M/mask_head/reduce_sum"(callsite("_Conv.__call__"(..) at callsite("FasterRCNN._mask_loss"('
    assert not re.search(LOSS_WHERE['detection'], head)
    assert re.search(LOSS_WHERE['detection'], 'loc(callsite("rpn_loss"("/x.py":1:2 to :3) at callsite("f"(')
    assert re.search(LOSS_WHERE['segmentation'], '"pixel_cross_entropy"(')
    assert not re.search(LOSS_WHERE['segmentation'], '"Segmentation.loss"(')


# -- every registered segmentation and detection model (slow) -------------------------------------
#: Registered models that need other inputs than the tiny default (their own canvas: ``_canvas``).
SLOW_KWARGS = {
    'deconvnet': dict(_canvas=224),  # fc6 is a 7x7 conv on pool5 (224 px in the paper)
    'unet_valid': dict(overlap_tile=True),  # valid convs: the overlap-tile input (as its configs)
    'yolov1_mnist_conv': dict(_canvas=128),  # the conv head needs the 8x8 grid of 128 px canvases
}
#: Registered segmentation "models" that do not take images: the context module refines a front end's
#: class scores (exported inside dilated_vgg16_context).
NOT_IMAGE_MODELS = {'context_module'}


def _all_dense_models() -> dict:
    import research.models as models

    fam = {f.__name__.rsplit('.', 1)[-1]: f for f in models._FAMILIES}
    seg = ('fcn', 'segnet', 'unet', 'pspnet', 'deeplab', 'context')
    det = ('yolo', 'ssd', 'retinanet', 'faster_rcnn', 'rcnn')
    known = {**MODELS['segmentation'], **MODELS['detection'], **SLOW_KWARGS}
    return {
        task: {
            name: known.get(name, {})
            for f in families
            for name in fam[f].REGISTRY_ENTRIES
            if name not in NOT_IMAGE_MODELS
        }
        for task, families in (('segmentation', seg), ('detection', det))
    }


@pytest.mark.slow  # 43 models, 172 programs, ~5 CPU-min: pytest -m slow tests/test_export_tasks.py
def test_every_dense_model_exports(tmp_path):
    results, cpu = export_cases(_cases(_all_dense_models(), partitioned=set()), tmp_path, timeout=7200)
    print(f'{len(results)} programs, {cpu:.0f} s CPU')
    failures = {}
    for key, res in results.items():
        task, model, precision, _, program = key.split('/')
        try:
            check_program(res, task, precision, program)
        except AssertionError as e:
            failures[key] = str(e)[:300]
    assert not failures, failures


if __name__ == '__main__':
    sys.path.insert(0, str(REPO))
    _worker(*sys.argv[1:4])
