"""Multi-host evaluation: detection mAP and segmentation mIoU of 2 ``jax.distributed`` processes equal the
1-process evaluation of the same eval set, each example counted once (issue 23).

Two processes x 2 CPU devices (gloo collectives, as ``tests/test_multidevice.py``) and one process with
one device evaluate the same fixed state (the seeded initial state: no training) of a tiny segmentation
model (U-Net) and of a detector on 13 test examples (eval batch 8 = 4 rows per process: the last
batch is padded, and process 1's slice of it holds 1 real example of 4):

- segmentation: the confusion matrix of the global batches (summed on the devices, replicated), so
  every process reports the same mIoU, pixel accuracy, per-class IoU, loss, pixel and example counts;
- detection: the detections of the global batch (replicated) scored against every process's ground
  truth (``multihost_utils.process_allgather``, in global-batch order), so process 0 scores all 13
  images. The detector (:class:`InkDetector`) boxes the ink of each canvas (no training needed for a
  non-zero mAP that depends on pairing each image's detections with its own ground truth).

The final evaluation is run (``final=True``: throughput, batch-1 latency, pictures), as at the end of
a run. The 3 processes run at once; about 15 CPU-s in all (the test prints its times).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
NUM_TEST = 13
EVAL_BATCH = 8


class InkDetector(nn.Module):
    """Boxes of a few digit-like sizes (w, h) on a stride-2 grid, each scored (the same for every class)
    by its ink density relative to the densest box of its image; class-aware NMS keeps the best 100.
    A detector of the detection contract (``loss_*`` terms when training) with one parameter, the
    score's sharpness."""

    num_classes: int = 11
    sizes: tuple[tuple[int, int], ...] = ((8, 12), (10, 14), (12, 16))
    stride: int = 2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, targets=None, train=False, proposals=None):
        from research.detection.postprocess import select_detections

        sharp = self.param('sharpness', nn.initializers.constant(4.0), ())
        if train:
            return {'loss_sharpness': jnp.square(sharp - 4.0)}
        b, h, w, _ = images.shape
        ink = images[..., 0] - images[..., 0].min(axis=(1, 2), keepdims=True)
        ii = jnp.pad(ink, ((0, 0), (1, 0), (1, 0))).cumsum(1).cumsum(2)  # integral image [B, H+1, W+1]
        boxes = np.asarray(
            [
                (x, y, x + bw, y + bh)
                for bw, bh in self.sizes
                for y in range(0, h - bh + 1, self.stride)
                for x in range(0, w - bw + 1, self.stride)
            ],
            np.int32,
        )
        x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
        inside = ii[:, y2, x2] - ii[:, y1, x2] - ii[:, y2, x1] + ii[:, y1, x1]  # ink in each box [B, N]
        density = inside / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.float32)
        score = jnp.exp(sharp * (density / density.max(-1, keepdims=True).clip(1e-6) - 1.0))
        scores = jnp.broadcast_to(score[..., None], (*score.shape, self.num_classes - 1))
        select = lambda s: select_detections(  # noqa: E731
            jnp.asarray(boxes, jnp.float32), s, image_size=(h, w), score_threshold=0.3, max_detections=100
        )
        return jax.vmap(select)(scores)


def register_ink_detector() -> None:
    from research.models import registry

    registry.register('test_ink_detector', InkDetector, overwrite=True)


def eval_config(task: str, tmp: str):
    """A tiny config of ``task`` with NUM_TEST test examples, evaluated in batches of EVAL_BATCH."""
    from research.config import base_config
    from tests.test_detection_data import _write_digit_folder

    c = base_config()
    c.task = task
    c.data.data_dir = os.path.join(tmp, 'tfds')
    c.train.update(
        batch_size=8,
        eval_batch_size=EVAL_BATCH,
        duration='1 steps',
        eval_every='',
        checkpoint_every='',
        async_checkpoints=False,
        cpu_conv='xla',
    )
    if task == 'segmentation':
        c.data.name = 'shapes_seg'
        c.seg.update(canvas_size=32, num_train=16, num_test=NUM_TEST, max_objects=3, viz_examples=3)
        c.model.update(name='unet', depth=2, base_features=8, dropout_rate=0.0)
    else:
        digits = Path(tmp) / 'digits'  # written once, by the test (the processes only read it)
        c.data.update(name='mnist_det', path=str(digits if digits.exists() else _write_digit_folder(digits)))
        c.det.update(
            canvas_size=64,
            num_train=16,
            num_test=NUM_TEST,
            min_objects=1,
            max_objects=3,
            min_scale=0.8,
            max_scale=1.2,
            latency_images=2,
            viz_examples=3,
            coco_eval=True,
        )
        c.model.name = 'test_ink_detector'
    return c


#: XLA:CPU's optimisations off: the init and eval programs compile in ~1/8 of the CPU time (12.6 -> 1.6
#: CPU-s for the U-Net's init); the same flags in every process, so the evaluations stay comparable.
FAST_COMPILE = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
#: Entries that measure time (different in every run); every other entry is compared exactly.
TIMINGS = ('eval_images_per_sec', 'latency_ms', 'proposal_ms', 'total_ms')

_HOST = r"""
import os, sys, json, time
t0 = time.perf_counter()
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=" + os.environ["NDEV"] + " " + FAST_COMPILE
os.environ["JAX_PLATFORMS"] = "cpu"  # CPU devices and gloo collectives, also on a GPU/TPU host
repo, tmp, name = sys.argv[1:4]
sys.path.insert(0, repo)
from research.train import distributed
multi = distributed.initialize()  # from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
import jax
from research import tasks
from tests.test_multihost_eval import eval_config, register_ink_detector
register_ink_detector()
out = dict(multi=multi, processes=jax.process_count(), devices=jax.device_count(), index=jax.process_index())
for task in ("segmentation", "detection"):
    tr = tasks.trainer(eval_config(task, tmp), show_progress=False)
    res, picture = tr.evaluate(tr.init_state(), final=True)
    if jax.process_index() == 0 and picture is not None:
        picture.write(os.path.join(tmp, f"{name}_{task}.png"))
    out[task] = res
    out[task + "_batch"] = [list(tr.abstract_batch().get("image").shape), list(tr.abstract_batch("test")["image"].shape)]
    out[task + "_seconds"] = round(time.perf_counter() - t0, 1)
out["seconds"] = round(time.perf_counter() - t0, 1)
print(json.dumps(out))
""".replace('FAST_COMPILE', repr(FAST_COMPILE))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_two_process_evaluation_equals_one_process(tmp_path):
    from research import tasks

    register_ink_detector()
    for task in ('segmentation', 'detection'):  # build the data sets once, before the processes start
        tasks.create(eval_config(task, str(tmp_path))).setup()
    script = tmp_path / 'host.py'
    script.write_text(_HOST)
    env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_')}
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')])
    port = _free_port()
    t0, before = time.perf_counter(), os.times()
    procs = []
    for name, ndev, extra in (
        ('multi0', '2', dict(JAX_PROCESS_ID='0')),
        ('multi1', '2', dict(JAX_PROCESS_ID='1')),
        ('single', '1', {}),
    ):
        e = dict(env, NDEV=ndev, **extra)
        if extra:
            e.update(JAX_COORDINATOR_ADDRESS=f'localhost:{port}', JAX_NUM_PROCESSES='2')
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(REPO), str(tmp_path), name],
                cwd=REPO,
                env=e,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-4000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    print(
        f'3 processes: {time.perf_counter() - t0:.1f} s wall, {cpu:.1f} s CPU; each:',
        [(o['segmentation_seconds'], o['detection_seconds'], o['seconds']) for o in outs],
    )
    *multi, single = outs
    assert [o['index'] for o in multi] == [0, 1] and not single['multi'] and single['processes'] == 1
    assert all(o['multi'] and o['processes'] == 2 and o['devices'] == 4 for o in multi)
    seg, det = single['segmentation'], single['detection']
    # the reference evaluation counts every test example once and is not degenerate
    assert seg['count'] == det['count'] == NUM_TEST
    assert seg['pixels'] == NUM_TEST * 32 * 32 and 0.0 < seg['miou'] < 1.0
    assert det['map50'] > 0.05 and det['coco_ap50'] > 0.0, det
    for o in multi:  # every process reports the 1-process evaluation
        for task, ref in (('segmentation', seg), ('detection', det)):
            got = o[task]
            assert set(got) == set(ref), (task, set(got) ^ set(ref))
            diff = {
                k: (got[k], ref[k])
                for k in ref
                if k not in TIMINGS
                and not _same(got[k], ref[k])
                and not (k == 'loss' and abs(got[k] - ref[k]) < 1e-5)
            }  # exact but the loss: a float32 sum over the devices in another order (relative 2e-7)
            assert not diff, (task, o['index'], diff)
            assert all(got[k] > 0 for k in ('eval_images_per_sec', 'latency_ms') if k in ref)
    for (
        o
    ) in outs:  # the abstract global batches (export, lowering) have the global batch size on every process
        assert [b[0] for b in o['segmentation_batch'] + o['detection_batch']] == [8, EVAL_BATCH] * 2
    for name in ('multi0', 'single'):
        for task in ('segmentation', 'detection'):
            assert (tmp_path / f'{name}_{task}.png').stat().st_size > 0


def test_segmentation_eval_counts_pixels_exactly_past_2_24():
    """Two batches of 8,410,000 and 8,409,999 labelled pixels: 16,819,999 in all, past float32's exact
    integers (2^24 = 16,777,216). The pixel count (the loss's denominator, checked against the confusion
    matrix's total at every evaluation) is summed in int32; a float32 count gives 16,820,000 and the
    evaluation of a VOC-sized split stops on 'confusion matrix and loss counted different pixels'."""
    from types import SimpleNamespace

    from research.tasks.base import eval_totals
    from research.tasks.segmentation import seg_eval_sums

    state = SimpleNamespace(apply_fn=lambda v, x, train: jnp.concatenate([x, -x], -1), variables=dict)
    run = jax.jit(lambda batch: seg_eval_sums(state, batch, num_classes=2))
    side = 2900
    batches = []
    for ignored in (0, 1):
        label = np.zeros((1, side, side), np.int32)
        label[0, 0, :ignored] = 255
        batches.append(
            dict(image=np.zeros((1, side, side, 1), np.float32), label=label, mask=np.ones(1, bool))
        )
    totals = eval_totals(batches, run)
    want = 2 * side * side - 1
    assert want > 2**24 and int(np.float32(want)) != want
    assert np.issubdtype(totals['pixels'].dtype, np.integer) and int(totals['pixels']) == want
    assert int(totals['confusion'].sum()) == want and int(totals['examples']) == 2


def test_segmentation_eval_count_is_counted_and_checked(tmp_path):
    """``count`` is the number of real examples the eval steps saw (the masks' sum over every host's
    rows), checked against the split: an evaluation that misses a batch stops with the two numbers
    (before, ``count`` was copied from the split's size and nothing was checked)."""
    import itertools
    from types import SimpleNamespace

    import pytest

    from research import tasks
    from research.tasks.segmentation import seg_eval_sums

    c = eval_config('segmentation', str(tmp_path))
    c.seg.viz_examples = 0
    task = tasks.create(c)
    task.setup()
    k = task.info.num_classes
    state = SimpleNamespace(
        apply_fn=lambda v, x, train: jnp.tile(x[..., :1], (1, 1, 1, k)) * jnp.arange(k), variables=dict
    )
    run = jax.jit(lambda batch: seg_eval_sums(state, batch, num_classes=k))

    def batches():
        return task.eval_iterator('test', global_batch_size=EVAL_BATCH, process_index=0, process_count=1)

    res, _ = task.evaluate(None, 'test', batches(), run, final=False)
    assert res['count'] == NUM_TEST and res['pixels'] == NUM_TEST * 32 * 32
    with pytest.raises(RuntimeError, match=f'counted {EVAL_BATCH} examples, the split has {NUM_TEST}'):
        task.evaluate(None, 'test', itertools.islice(batches(), 1), run, final=False)
