"""The task registry and the one loop's services for every task (research/tasks, research/train/loop.py).

- the task x knob matrix: every optional knob either works for a task or is refused at config time,
  naming the knob and the task (no silent ignore);
- segmentation (U-Net, DeepLabv3) and detection (Faster R-CNN, RetinaNet) train in bfloat16, FSDP-sharded
  over 8 simulated CPU devices, from a pretrained backbone that stays frozen: checked on the compiled
  step (convolution dtypes), the parameter shardings and the frozen parameters (bitwise unchanged);
- gradient accumulation equals the larger batch; weight EMA; GAN / style tasks through the loop.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from research import tasks
from research.config import base_config, with_model
from research.configlib import ConfigError
from research.tasks.base import KNOBS

REPO = Path(__file__).resolve().parents[1]

#: A value that switches each optional knob on.
KNOB_ON = {
    'train.precision': 'bfloat16',
    'train.model_parallel': 2,
    'train.bn_group_size': 4,
    'train.accumulate_steps': 2,
    'train.ema_decay': 0.99,
    'train.label_smoothing': 0.1,
    'init.checkpoint': '/some/weights.msgpack',
    'optimizer.freeze': '^conv1/',
    'optimizer.lr_multipliers': ('^fc/=10',),
    'data.on_device': True,
    'data.synthetic': True,
    'data.image_size': 24,
    'data.classes': (0, 1),
    'data.eval_resize': 36,
    'data.num_threads': 2,
    'data.num_workers': 2,
    'data.augment.crop_padding': 2,
    'data.augment.flip': True,
    'data.augment.rotation': 10.0,
    'data.augment.scale': 0.1,
    'data.augment.brightness': 0.1,
    'data.augment.random_resized_crop': True,
    'data.augment.randaugment': '2,9',
    'data.augment.autoaugment': 'imagenet',
    'data.augment.mixup': 0.2,
    'data.augment.cutmix': 1.0,
}


def _valid_config(task: str):
    """A config that task ``task`` accepts at config time (its own value checks pass)."""
    c = base_config()
    c.task = task
    if task in ('gan', 'fast_style'):
        c.data.normalize = False
    if task == 'style_transfer':
        c.train.batch_size = 1
    if task == 'detection':
        c.data.name = 'mnist_det'
    if task == 'segmentation':
        c.data.name = 'shapes_seg'
    return c


def test_every_knob_has_a_switch_in_the_matrix():
    assert set(KNOB_ON) == set(KNOBS)


@pytest.mark.parametrize('knob', sorted(KNOBS))
@pytest.mark.parametrize('task', tasks.names())
def test_task_knob_matrix_supported_or_refused_by_name(task, knob):
    c = _valid_config(task)
    tasks.create(c)  # the task's defaults are accepted
    *sections, key = knob.split('.')
    node = c
    for name in sections:
        node = node[name]
    node[key] = KNOB_ON[knob]
    if knob in tasks.get(task).supports:
        tasks.create(c)
    else:
        with pytest.raises(ConfigError, match=rf"^{knob}=.* is not supported by task '{task}'"):
            tasks.create(c)


def test_unknown_task_names_the_known_ones():
    c = base_config()
    c.task = 'segmentaton'
    with pytest.raises(KeyError, match="did you mean 'segmentation'"):
        tasks.create(c)


def test_no_module_switches_on_the_task_name():
    """The task is looked up in the registry, never compared to a string elsewhere."""
    out = subprocess.run(
        ['grep', '-rnE', r"task ?(==|!=) ?['\"]", str(REPO / 'research')], capture_output=True, text=True
    )
    assert out.stdout == '', out.stdout


# -- bf16 + FSDP + frozen pretrained backbone on 8 devices --------------------------------------------
_DENSE = r"""
import os, sys, json, re
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
repo, tmp, case = sys.argv[1:4]
sys.path.insert(0, repo)
import jax, jax.numpy as jnp, numpy as np
from flax import serialization
from research import models, tasks
from research.config import base_config
from research.train.transfer import leaf_paths
from tests.test_detection_data import _write_digit_folder

c = base_config()
c.data.data_dir = os.path.join(tmp, "tfds")
c.train.update(batch_size=8, eval_batch_size=8, duration="2 steps", eval_every="", checkpoint_every="",
               precision="bfloat16", model_parallel=2, async_checkpoints=False)
c.optimizer.update(name="adam", lr=1e-2, freeze="pretrained")
if case in ("unet", "deeplabv3"):
    c.task = "segmentation"
    c.data.name = "shapes_seg"
    c.seg.update(canvas_size=32, num_train=16, num_test=8, max_objects=2, aux_weight=0.0, viz_examples=0)
    shape = (1, 32, 32, 3)
else:
    c.task = "detection"
    c.data.name = "mnist_det"
    c.data.path = str(_write_digit_folder(__import__("pathlib").Path(tmp) / "digits"))
    c.det.update(canvas_size=64, num_train=16, num_test=8, min_objects=1, max_objects=3, min_scale=0.8,
                 max_scale=1.2, latency_images=0, viz_examples=0, coco_eval=False)
    shape = (1, 64, 64, 1)
small = dict(width=8, stem_width=8)
if case == "unet":
    c.model.update(name="unet", depth=2, base_features=8)
    source = models.create("unet", num_classes=4, depth=2, base_features=8)
    c.init.exclude = "^classifier/"  # the new head; the rest (encoder and decoder) is pretrained
    frozen_prefix = ""
elif case == "deeplabv3":
    c.model.update(name="deeplabv3_resnet18", head_features=16, output_stride=8, aux=False, **small)
    source = models.create("resnet18", num_classes=10, **small)  # a classifier's weights as the backbone
    c.init.into = "backbone"
    frozen_prefix = "backbone/"
elif case == "faster_rcnn":
    c.model.update(name="fasterrcnn_resnet18_fpn", num_classes=11, fpn_channels=16, representation_size=32,
                   rpn_pre_nms_top_n_train=64, rpn_post_nms_top_n_train=32, rpn_pre_nms_top_n_test=64,
                   rpn_post_nms_top_n_test=32, box_batch_size_per_image=16, rpn_batch_size_per_image=32,
                   freeze_bn=False, **small)
    source = models.create("resnet18", num_classes=10, **small)
    c.init.into = "backbone"
    frozen_prefix = "backbone/"
else:
    c.model.update(name="retinanet_resnet18_fpn", num_classes=11, fpn_width=16, head_width=16, head_convs=1,
                   backbone_norm="batch", topk_candidates=32, **small)
    source = models.create("resnet18", num_classes=10, **small)
    c.init.into = "backbone"
    frozen_prefix = "backbone/"
src_vars = jax.jit(source.init)(jax.random.key(123), jnp.zeros(shape))
src_path = os.path.join(tmp, "pretrained.msgpack")
open(src_path, "wb").write(serialization.msgpack_serialize(jax.tree.map(np.asarray, dict(src_vars))))
c.init.checkpoint = src_path

tr = tasks.trainer(c, show_progress=False)
state = tr.init_state()
state, msg = tr.load_pretrained(state)
res = {"msg": msg, "mesh": dict(tr.mesh.shape), "num_frozen": tr.num_frozen}
paths = leaf_paths(state.params)
leaves = jax.tree.leaves(state.params)
frozen = [p.startswith(frozen_prefix) and not (c.init.exclude and re.search(c.init.exclude, p)) for p in paths]
res["frozen_leaves"] = sum(frozen)
res["sharded"] = [p for p, x in zip(paths, leaves) if "model" in str(x.sharding.spec)]
res["param_dtypes"] = sorted({str(x.dtype) for x in leaves})
before = [np.asarray(x) for x in jax.device_get(leaves)]
stats_before = {p: np.asarray(x) for p, x in zip(leaf_paths(state.batch_stats), jax.device_get(jax.tree.leaves(state.batch_stats)))}
# pretrained values really loaded (the backbone of the source, not the random init)
src_flat = dict(zip(leaf_paths(src_vars["params"]), jax.tree.leaves(src_vars["params"])))
loaded_ok = [
    np.array_equal(b, np.asarray(src_flat[p[len(frozen_prefix):]]))
    for p, b, f in zip(paths, before, frozen) if f and frozen_prefix
]
res["loaded_equal"] = all(loaded_ok) if loaded_ok else None
it = tr.train_iterator()
batch = tr.to_global(tr.task.host_batch(next(it), "train"))
text = tr.step_fn().lower(state, batch).as_text()
convs = re.findall(r"stablehlo\.convolution.*?:\s*\((.*?)\)\s*->\s*(tensor<[^>]*>)", text)
res["convs"] = len(convs)
res["conv_operand_types"] = sorted({t.split("x")[-1].rstrip(">") for ops, out in convs for t in re.findall(r"tensor<[^>]*>", ops)})
for _ in range(2):
    state, metrics = tr.train_step(state, next(it))
res["loss"] = float(metrics["loss"])
after = [np.asarray(x) for x in jax.device_get(jax.tree.leaves(state.params))]
res["frozen_unchanged"] = all(np.array_equal(a, b) for a, b, f in zip(after, before, frozen) if f)
res["trained_changed"] = sum(not np.array_equal(a, b) for a, b, f in zip(after, before, frozen) if not f)
res["trained_total"] = sum(not f for f in frozen)
stats_after = dict(zip(leaf_paths(state.batch_stats), jax.device_get(jax.tree.leaves(state.batch_stats))))
res["frozen_stats_unchanged"] = all(
    np.array_equal(stats_before[p], np.asarray(stats_after[p])) for p in stats_before if p.startswith(frozen_prefix)
) if frozen_prefix else None
res["stats_dtypes"] = sorted({str(np.asarray(x).dtype) for x in stats_after.values()})
print(json.dumps(res))
"""


@pytest.mark.parametrize('case', ['unet', 'deeplabv3', 'faster_rcnn', 'retinanet'])
def test_dense_task_bf16_fsdp_frozen_pretrained_backbone(case, tmp_path):
    script = tmp_path / 'run.py'
    script.write_text(_DENSE)
    r = subprocess.run(
        [sys.executable, str(script), str(REPO), str(tmp_path), case],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res['mesh'] == {'data': 4, 'model': 2}
    assert res['sharded'], "no parameter is FSDP-sharded over 'model'"
    assert res['param_dtypes'] == ['float32'] and res['stats_dtypes'] in ([], ['float32'])
    assert res['convs'] > 0 and res['conv_operand_types'] == ['bf16'], res['conv_operand_types']
    assert res['frozen_leaves'] > 0 and res['num_frozen'] > 0
    assert res['frozen_unchanged'], 'a frozen pretrained parameter moved'
    assert res['trained_changed'] > 0.5 * res['trained_total'], res
    assert res['loaded_equal'] in (True, None)
    assert res['frozen_stats_unchanged'] in (True, None)
    assert np.isfinite(res['loss'])
    assert 'initialised' in res['msg'] and 'frozen' in res['msg']


# -- loop services on a small classifier ----------------------------------------------------------
@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('tfds'))


def _digits(data_dir, *, model='lenet5', steps=3, **train):
    c = base_config()
    with_model(c, model)
    c.data.name = 'digits'
    c.data.data_dir = data_dir
    c.data.image_size = 32
    c.optimizer.update(name='sgd', lr=0.05, momentum=0.9)
    c.train.update(
        batch_size=32,
        eval_batch_size=120,
        duration=f'{steps} steps',
        log_every_steps=1,
        eval_every='',
        checkpoint_every='',
        async_checkpoints=False,
    )
    c.train.update(train)
    return c


def _state_arrays(workdir):
    from research.train.checkpoint import Checkpointer

    ckpt = Checkpointer(workdir, async_save=False)
    state = ckpt.restore_raw()
    ckpt.close()
    return state


def test_gradient_accumulation_equals_the_larger_batch(data_dir, tmp_path):
    """``train.accumulate_steps=4``: each batch of 32 as 4 micro-batches of 8, gradients averaged, one
    update: the same parameters and losses as the batch of 32 in one piece (LeNet-5 has no BatchNorm,
    so the equality is exact up to float summation order)."""
    whole = tasks.train_and_evaluate(_digits(data_dir), tmp_path / 'whole', show_progress=False)
    acc = tasks.train_and_evaluate(
        _digits(data_dir, accumulate_steps=4), tmp_path / 'acc', show_progress=False
    )
    a, b = _state_arrays(tmp_path / 'whole'), _state_arrays(tmp_path / 'acc')
    assert int(a['step']) == int(b['step']) == 3  # optimizer steps, not micro-steps
    moved = False
    for x, y, x0 in zip(
        jax.tree.leaves(a['params']), jax.tree.leaves(b['params']), jax.tree.leaves(a['params'])
    ):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-6)
    for x, y in zip(jax.tree.leaves(a['opt_state']), jax.tree.leaves(b['opt_state'])):
        moved = moved or bool(np.any(np.asarray(x) != 0))
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-6)
    assert moved
    assert whole['final']['test']['loss'] == pytest.approx(acc['final']['test']['loss'], rel=1e-5)
    with pytest.raises(ConfigError, match='train.accumulate_steps=5 must divide the per-device batch 32'):
        tasks.trainer(_digits(data_dir, accumulate_steps=5))


def test_weight_ema_is_the_running_average_and_is_what_evaluation_uses(data_dir, tmp_path):
    """``train.ema_decay=d``: after each step ema = d * ema + (1 - d) * weights (params and BatchNorm
    statistics), starting from the initial weights; evaluations use the averaged weights; the average is
    checkpointed, so a resumed run ends with the same average."""
    d = 0.7
    c = _digits(data_dir, model='lenet5_modern', steps=4, ema_decay=d)
    tr = tasks.trainer(c, show_progress=False)
    state = tr.init_state()
    expect = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
    it = tr.train_iterator()
    for _ in range(4):
        state, _ = tr.train_step(state, next(it))
        now = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
        expect = jax.tree.map(lambda e, w: d * e + (1 - d) * w, expect, now)
    jax.tree.map(
        lambda e, g: np.testing.assert_allclose(e, np.asarray(g), rtol=1e-5, atol=1e-6), expect, state.ema
    )
    ema_res, _ = tr.evaluate(state)
    raw = state.replace(ema={'params': state.params, 'batch_stats': state.batch_stats})
    raw_res, _ = tr.evaluate(raw)
    assert ema_res['loss'] != raw_res['loss']
    c_off = _digits(data_dir, model='lenet5_modern', steps=4)
    off = tasks.trainer(c_off, show_progress=False)
    off_res, _ = off.evaluate(off.init_state().replace(params=state.params, batch_stats=state.batch_stats))
    assert raw_res['loss'] == pytest.approx(off_res['loss'], rel=1e-6)
    # resumed == uninterrupted, EMA included
    full = tasks.train_and_evaluate(c, tmp_path / 'full', show_progress=False)
    tasks.train_and_evaluate(c, tmp_path / 'res', stop_after_steps=2, show_progress=False)
    resumed = tasks.train_and_evaluate(c, tmp_path / 'res', show_progress=False)
    a, b = _state_arrays(tmp_path / 'full'), _state_arrays(tmp_path / 'res')
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a['ema'], b['ema'])
    assert full['final']['test']['loss'] == resumed['final']['test']['loss']


# -- the generative tasks through the loop ----------------------------------------------------------
def test_gan_task_trains_writes_samples_and_resumes_exactly(data_dir, tmp_path):
    c = base_config()
    c.task = 'gan'
    c.data.name, c.data.data_dir, c.data.normalize = 'digits', data_dir, False
    c.gan.update(base_size=4, g_width=4, d_width=4, latent_dim=8, grid_samples=4, score_samples=0)
    c.train.update(
        batch_size=16,
        duration='4 steps',
        eval_every='2 steps',
        checkpoint_every='2 steps',
        log_every_steps=1,
        async_checkpoints=False,
    )
    full = tasks.train_and_evaluate(c, tmp_path / 'full', show_progress=False)
    assert full['complete'] and full['task'] == 'gan' and full['g_params'] > 0 and full['d_params'] > 0
    assert (tmp_path / 'full' / 'samples' / 'step_000002.png').exists()
    assert (tmp_path / 'full' / 'samples' / 'step_000004.png').exists()
    rows = [json.loads(line) for line in (tmp_path / 'full' / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in rows if r['split'] == 'train'] == [1, 2, 3, 4]
    assert all(np.isfinite(r['d_loss']) and np.isfinite(r['g_loss']) for r in rows if r['split'] == 'train')
    tasks.train_and_evaluate(c, tmp_path / 'res', stop_after_steps=2, show_progress=False)
    tasks.train_and_evaluate(c, tmp_path / 'res', show_progress=False)
    a, b = _state_arrays(tmp_path / 'full'), _state_arrays(tmp_path / 'res')
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _register_tiny_vgg():
    import functools

    from research import models

    vgg = models.get_constructor('vgg')
    models.register(
        'test_tiny_vgg',
        functools.partial(vgg, cfg=(4, 'M', 8, 8, 'M'), num_classes=3, classifier_width=8, pool_size=1),
        overwrite=True,
    )


def _style(c):
    c.style.update(
        model='test_tiny_vgg',
        content_layers=('conv2_1',),
        style_layers=('conv1_1', 'conv2_1'),
        image_size=16,
        style_weight=100.0,
    )
    return c


def test_style_transfer_task_lowers_the_loss_and_writes_the_result(tmp_path):
    _register_tiny_vgg()
    c = _style(base_config())
    c.task = 'style_transfer'
    c.optimizer.update(name='adam', lr=0.05)
    c.schedule.name = 'constant'
    c.train.update(
        batch_size=1,
        duration='12 steps',
        log_every_steps=1,
        eval_every='6 steps',
        checkpoint_every='',
        async_checkpoints=False,
    )
    s = tasks.train_and_evaluate(c, tmp_path, show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    train = [r for r in rows if r['split'] == 'train']
    assert train[0]['content'] == 0.0  # starts at the content image
    assert s['final']['test']['total'] < 0.8 * train[0]['total']
    for name in ('result.png', 'content.png', 'style.png', 'panel.png', 'viz/step_000006.png'):
        assert (tmp_path / name).exists(), name


def test_fast_style_task_trains_the_transformer_and_stylises(tmp_path):
    from PIL import Image

    _register_tiny_vgg()
    rng = np.random.default_rng(0)
    for split, n in (('train', 8), ('test', 4)):
        for i in range(n):
            d = tmp_path / 'imgs' / split / ('a' if i % 2 else 'b')
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / f'{i}.png')
    c = _style(base_config())
    c.task = 'fast_style'
    c.data.update(
        name='image_folder', path=str(tmp_path / 'imgs'), data_dir=str(tmp_path / 'tfds'), normalize=False
    )
    c.style.update(transformer_width=2, transformer_blocks=1)
    c.optimizer.update(name='adam', lr=1e-3)
    c.train.update(
        batch_size=2,
        eval_batch_size=2,
        duration='3 steps',
        log_every_steps=1,
        eval_every='',
        checkpoint_every='',
        async_checkpoints=False,
    )
    s = tasks.train_and_evaluate(c, tmp_path / 'run', show_progress=False)
    assert s['complete'] and s['model'] == 'transformer_net' and np.isfinite(s['final']['test']['total'])
    for name in ('transformer.msgpack', 'stylized.png', 'panel.png'):
        assert (tmp_path / 'run' / name).exists(), name


def test_docs_knob_table_is_current():
    """docs/tasks.md holds research.tasks.knob_table() between its markers."""
    text = (REPO / 'docs' / 'tasks.md').read_text()
    table = text.split('<!-- knob-table -->\n', 1)[1].split('<!-- /knob-table -->', 1)[0].strip()
    assert table == tasks.knob_table(), (
        'regenerate the table in docs/tasks.md from research.tasks.knob_table()'
    )


def test_dependency_contracts_hold():
    """lint-imports: the layer order and no cycles between sibling modules (pyproject.toml)."""
    import shutil

    exe = shutil.which('lint-imports') or str(Path(sys.executable).with_name('lint-imports'))
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (pip install -e '.[docs]')")
    r = subprocess.run([exe], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]
