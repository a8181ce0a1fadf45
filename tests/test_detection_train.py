"""research.tasks.detection: the detection task through the one loop (train step on the loss_* terms, exact VOC/COCO
evaluation over the split, pictures, resume == uninterrupted, proposals plumbing), with a toy detector
that follows the contract (the real detectors have their own tests)."""

import json
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import tensorflow_datasets as tfds

from research import tasks
from research.config import base_config
from research.detection.postprocess import select_detections
from research.models import registry
from tests.test_detection_data import _write_digit_folder


class ToyDetector(nn.Module):
    """Learns D fixed boxes and per-image class scores from pooled features (enough to exercise the loop)."""

    num_classes: int = 11
    num_boxes: int = 3
    uses_proposals: bool = False
    with_masks: bool = False

    @nn.compact
    def __call__(self, images, targets=None, train=False, proposals=None):
        feats = nn.relu(nn.Conv(4, (3, 3), (4, 4))(images))
        feats = nn.BatchNorm(use_running_average=not train)(feats)
        logits = nn.Dense(self.num_boxes * (self.num_classes - 1))(feats.mean((1, 2)))
        logits = logits.reshape(-1, self.num_boxes, self.num_classes - 1)
        boxes = self.param(
            'boxes', lambda k: jnp.tile(jnp.asarray([[2.0, 2.0, 20.0, 20.0]]), (self.num_boxes, 1))
        )
        if self.uses_proposals:
            assert proposals is not None and proposals['boxes'].shape[1] == 5
            boxes = boxes + 0.0 * proposals['boxes'][:, :1].mean()
        if train:
            m = targets['box_mask'][:, : self.num_boxes].astype(jnp.float32)
            l1 = jnp.abs(boxes[None] - targets['boxes'][:, : self.num_boxes]).sum(-1)
            onehot = jax.nn.one_hot(targets['labels'][:, : self.num_boxes] - 1, self.num_classes - 1)
            ce = -(jax.nn.log_softmax(logits) * onehot).sum(-1)
            noise = 0.0 * jax.random.uniform(self.make_rng('sample'))
            return {
                'loss_box': (l1 * m).sum() / m.sum().clip(1) / 10 + noise,
                'loss_cls': (ce * m).sum() / m.sum().clip(1),
            }
        scores = jax.nn.softmax(logits)
        size = images.shape[1:3]
        out = jax.vmap(lambda s: select_detections(boxes, s, image_size=size, max_detections=10))(scores)
        # Mask R-CNN's 'masks' [B, D, H, W] (probabilities), here of the bright pixels in each box
        if self.with_masks:
            b = out['boxes'][:, :, None, None, :]
            ys, xs = jnp.arange(size[0])[:, None] + 0.5, jnp.arange(size[1])[None] + 0.5
            inside = (xs >= b[..., 0]) & (xs < b[..., 2]) & (ys >= b[..., 1]) & (ys < b[..., 3])
            prob = jax.nn.sigmoid(4.0 * images[:, None, :, :, 0])
            out['masks'] = jnp.where(inside & out['valid'][:, :, None, None], prob, 0.0)
        return out


class ToyProposalDetector(ToyDetector):
    needs_proposals: ClassVar[bool] = True
    uses_proposals: bool = True


class ToyMaskDetector(ToyDetector):
    needs_masks: ClassVar[bool] = True
    with_masks: bool = True


@pytest.fixture
def toy_registered():
    registry.register('toy_detector', ToyDetector, overwrite=True)
    registry.register('toy_proposal_detector', ToyProposalDetector, overwrite=True)
    registry.register('toy_mask_detector', ToyMaskDetector, overwrite=True)
    yield
    registry._REGISTRY.pop('toy_detector', None)
    registry._REGISTRY.pop('toy_proposal_detector', None)
    registry._REGISTRY.pop('toy_mask_detector', None)


def _task_config(tmp_path, model='toy_detector'):
    c = base_config()
    c.task = 'detection'
    c.data.name = 'mnist_det'
    c.data.data_dir = str(tmp_path / 'tfds')
    c.data.path = str(_write_digit_folder(tmp_path / 'digits'))
    c.det.update(
        canvas_size=32,
        num_train=8,
        num_test=7,
        min_objects=1,
        max_objects=3,
        min_scale=0.5,
        max_scale=0.8,
        latency_images=2,
        viz_examples=3,
        max_proposals=5,
        proposals='sliding_window',
    )
    c.model.name = model
    c.optimizer.name = 'adam'
    c.optimizer.lr = 1e-2
    c.train.batch_size = 4
    c.train.eval_batch_size = 4
    c.train.duration = '4 steps'
    c.train.eval_every = '2 steps'
    c.train.checkpoint_every = '1 epochs'
    c.train.log_every_steps = 1
    c.seed = 3
    return c


def test_detection_task_end_to_end_and_resume(tmp_path, toy_registered):
    c = _task_config(tmp_path)
    full = tasks.train_and_evaluate(c, tmp_path / 'full', show_progress=False)
    assert full['complete'] and full['step'] == 4 and full['task'] == 'detection'
    rows = [json.loads(line) for line in (tmp_path / 'full' / 'metrics.jsonl').read_text().splitlines()]
    train = [r for r in rows if r['split'] == 'train']
    assert all(r['loss'] == pytest.approx(r['loss_box'] + r['loss_cls'], rel=1e-5) for r in train)
    evals = [r for r in rows if r['split'] == 'test']
    assert [r['step'] for r in evals] == [2, 4]
    assert all(0.0 <= r['map50'] <= 1.0 and r['count'] == 7 for r in evals)
    final = full['final']['test']
    assert {'coco_ap', 'coco_ap50', 'map50_11pt', 'latency_ms', 'eval_images_per_sec'} <= set(final)
    assert (
        final['latency_ms'] > 0 and final['proposal_ms'] == 0.0 and final['total_ms'] == final['latency_ms']
    )
    png = tmp_path / 'full' / 'viz' / 'step_000004.png'
    assert png.exists()
    w, h = Image.open(png).size
    # 3 rows of truth | prediction, scale 3, under a 16 px band of column titles
    assert (w, h) == (2 * 32 * 3 + 4, 16 + 3 * 32 * 3 + 2 * 4)
    # Preempted after 2 steps, then relaunched: the same final state and metrics.
    part = tasks.train_and_evaluate(c, tmp_path / 'resumed', stop_after_steps=2, show_progress=False)
    assert not part['complete']
    resumed = tasks.train_and_evaluate(c, tmp_path / 'resumed', show_progress=False)
    for k in ('map50', 'coco_ap', 'detections_per_image'):
        assert resumed['final']['test'][k] == pytest.approx(final[k], abs=1e-9), k
    a = [r for r in rows if r['split'] == 'train' and r['step'] == 4][0]
    rr = [json.loads(line) for line in (tmp_path / 'resumed' / 'metrics.jsonl').read_text().splitlines()]
    b = [r for r in rr if r['split'] == 'train' and r['step'] == 4][-1]
    assert a['loss'] == pytest.approx(b['loss'], rel=1e-6)


@pytest.mark.parametrize('model', ['toy_detector', 'toy_mask_detector'])
def test_detection_eval_is_exact_voc(tmp_path, toy_registered, model):
    """The loop's mAP equals VOC AP computed directly from the same detections, unpadded; a model with
    masks also gets COCO mask AP (pycocotools 'segm' on the masks thresholded at 0.5), exactly."""
    from research.detection import data as det_data
    from research.detection.metrics import coco_evaluate, voc_evaluate
    from research.tasks.detection import det_eval_step

    c = _task_config(tmp_path, model)
    tr = tasks.trainer(c)
    state = tr.init_state()
    res, _ = tr.evaluate(state)
    with_masks = model == 'toy_mask_detector'
    split = det_data.get_split(tr.task.builder, 'test', with_masks=with_masks)
    preds, gts = [], []
    it = det_data.make_eval_iterator(c.data, c.det, 'test', global_batch_size=1)
    predict_one = jax.jit(det_eval_step)
    for batch in it:
        out = jax.device_get(predict_one(state, batch))
        v = out['valid'][0]
        preds.append(
            {'boxes': out['boxes'][0][v], 'scores': out['scores'][0][v], 'labels': out['labels'][0][v]}
        )
        n = int(split.num_objects[len(gts)])
        gts.append({'boxes': split.boxes[len(gts)][:n], 'labels': split.labels[len(gts)][:n]})
        if with_masks:
            preds[-1]['masks'] = out['masks'][0][v] > 0.5
            gts[-1]['masks'] = split.masks[len(gts) - 1][:n]
    direct = voc_evaluate(preds, gts, 0.5, class_ids=range(1, 11))
    assert res['map50'] == pytest.approx(direct['map'], abs=1e-6)
    mask_keys = {'mask_ap', 'mask_ap50', 'mask_ap75', 'mask_ar100'}
    if not with_masks:
        assert not mask_keys & set(res) and 'coco_ap' in res
        return
    assert mask_keys <= set(res) and 'mask AP' in tr.task.eval_message(res)
    segm = coco_evaluate(preds, gts, class_ids=range(1, 11), iou_type='segm')
    assert segm['AP50'] > 0  # some masks match (0.035 measured): not a trivial 0 == 0
    for k in ('AP', 'AP50', 'AP75', 'AR100'):
        assert res[f'mask_{k.lower()}'] == pytest.approx(segm[k], abs=1e-9), k


def test_detection_proposals_plumbing(tmp_path, toy_registered, monkeypatch):
    """Models with needs_proposals get each example's proposals, looked up by its index."""
    from research.tasks import detection as det_task

    calls = []

    def fake(builder, split, *, method, max_proposals):
        calls.append((split, method, max_proposals))
        n = int(builder.info.splits[split].num_examples)
        boxes = np.arange(n, dtype=np.float32)[:, None, None] + np.zeros((n, max_proposals, 4), np.float32)
        return boxes, np.ones((n, max_proposals), bool)

    monkeypatch.setattr(
        det_task.Detection,
        '_get_proposals',
        lambda self, split: fake(
            self.builder,
            split,
            method=str(self.config.det.proposals),
            max_proposals=int(self.config.det.max_proposals),
        ),
    )
    c = _task_config(tmp_path, 'toy_proposal_detector')
    tr = tasks.trainer(c)
    assert sorted(calls) == [('test', 'sliding_window', 5), ('train', 'sliding_window', 5)]
    batch = {'index': np.asarray([3, -1, 0]), 'image': np.zeros((3, 32, 32, 1))}
    out = tr.task.host_batch(batch, 'test')
    assert out['proposals'].shape == (3, 5, 4)
    np.testing.assert_array_equal(out['proposals'][:, 0, 0], [3.0, 0.0, 0.0])
    np.testing.assert_array_equal(out['proposal_valid'].all(1), [True, False, True])
    summary = tasks.train_and_evaluate(c, tmp_path / 'run', show_progress=False)
    assert summary['complete']


def test_detection_bad_inputs(tmp_path, toy_registered):
    c = _task_config(tmp_path)
    c.data.name = 'mnist_seg'
    with pytest.raises(ValueError, match="data.name='mnist_seg'"):
        tasks.trainer(c)
    c = _task_config(tmp_path)
    c.model.num_classes = 5
    with pytest.raises(ValueError, match='num_classes=5'):
        tasks.trainer(c)
    c = _task_config(tmp_path)
    with pytest.raises(KeyError, match="det.max_proposal'"):
        c.det.max_proposal = 3
        tasks.trainer(c)


def test_ledger_detection_metrics(tmp_path):
    from research.experiments import ledger

    final = {
        'map50': 0.5,
        'map50_11pt': 0.48,
        'coco_ap': 0.3,
        'coco_ap50': 0.55,
        'latency_ms': 12.5,
        'eval_images_per_sec': 80.0,
        'mask_ap': 0.25,
        'mask_ap50': 0.5,
    }
    (tmp_path / 'summary.json').write_text(json.dumps({'task': 'detection', 'final': {'test': final}}))
    rows = [
        {'split': 'train', 'step': 1, 'loss': 1.5, 'loss_cls': 1.0, 'loss_box': 0.5},
        {'split': 'test', 'step': 1, 'map50': 0.6},
        {'split': 'test', 'step': 2, 'map50': 0.5},
    ]
    (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    m = ledger.run_metrics(tmp_path)
    assert m['test_map50'] == pytest.approx(50.0) and m['test_coco_ap'] == pytest.approx(30.0)
    assert m['test_map50_11pt'] == pytest.approx(48.0) and m['test_coco_ap50'] == pytest.approx(55.0)
    assert m['best_test_map50'] == pytest.approx(60.0) and m['best_step'] == 1
    assert m['latency_ms'] == 12.5 and m['train_loss'] == 1.5 and 'test_error' not in m
    assert m['test_mask_ap'] == pytest.approx(25.0) and m['test_mask_ap50'] == pytest.approx(50.0)
    # A model without masks: no mask columns.
    del final['mask_ap'], final['mask_ap50']
    (tmp_path / 'summary.json').write_text(json.dumps({'task': 'detection', 'final': {'test': final}}))
    assert not {'test_mask_ap', 'test_mask_ap50'} & set(ledger.run_metrics(tmp_path))


def _fake_voc_builder():
    """Defines (and so registers with TFDS) the fake builder once per process: this module may be
    imported twice (as a test file and as ``tests.<name>`` by a sweep config), and TFDS refuses a
    second registration of the name."""
    if _fake_voc_builder.cls is not None:
        return _fake_voc_builder.cls

    class FakeVocDet(tfds.core.GeneratorBasedBuilder):
        """VOC-like features (image, objects: bbox / label / is_crowd) from Tensors, for tests."""

        VERSION = tfds.core.Version('1.0.0')

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        'image': tfds.features.Tensor(shape=(48, 40, 3), dtype=np.uint8),
                        'objects': tfds.features.Sequence(
                            {
                                'bbox': tfds.features.BBoxFeature(),
                                'label': tfds.features.ClassLabel(names=['cat', 'dog', 'car']),
                                'is_crowd': tfds.features.Tensor(shape=(), dtype=np.bool_),
                            }
                        ),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {'train': self._generate_examples(12, 0), 'test': self._generate_examples(6, 1)}

        def _generate_examples(self, n, seed):
            rng = np.random.default_rng(seed)
            for i in range(n):
                k = 1 + i % 3
                y0 = rng.uniform(0, 0.5, k)
                x0 = rng.uniform(0, 0.5, k)
                bbox = np.stack([y0, x0, y0 + 0.3, x0 + 0.4], -1).astype(np.float32)
                yield (
                    i,
                    {
                        'image': rng.integers(0, 255, (48, 40, 3), dtype=np.uint8),
                        'objects': {
                            'bbox': bbox,
                            'label': (np.arange(k) + i) % 3,
                            'is_crowd': np.arange(k) == 2,
                        },
                    },
                )

    _fake_voc_builder.cls = FakeVocDet
    return FakeVocDet


_fake_voc_builder.cls = None


def test_detection_on_a_tfds_dataset_by_name(tmp_path, toy_registered):
    """A TFDS detection dataset by name (VOC / COCO layout: image, objects.bbox normalised (ymin, xmin,
    ymax, xmax), objects.label, objects.is_crowd): classes from its ClassLabel, boxes resized to
    det.canvas_size in xyxy pixels, labels 1..K, crowd boxes dropped; the task trains on it."""
    from research.detection import data as det_data

    _fake_voc_builder()
    c = _task_config(tmp_path)
    c.data.name = 'fake_voc_det'
    c.det.canvas_size, c.det.max_objects = 32, 3
    builder = det_data.get_det_builder(c.data, c.det)
    assert det_data.class_names(builder) == ('background', 'cat', 'dog', 'car')
    split = det_data.get_split(builder, 'train', det_cfg=c.det)
    rec = builder.as_data_source('train')[5]  # 3 objects, the third is a crowd box
    ex = split.example(5)
    assert ex['image'].shape == (32, 32, 3) and int(ex['num_objects']) == 2
    bb = np.asarray(rec['objects']['bbox'])[:2]
    np.testing.assert_allclose(
        ex['boxes'][:2], np.stack([bb[:, 1], bb[:, 0], bb[:, 3], bb[:, 2]], -1) * 32, rtol=1e-6
    )
    lab = np.asarray(rec['objects']['label'])
    np.testing.assert_array_equal(ex['labels'], [lab[0] + 1, lab[1] + 1, 0])
    batch = next(det_data.make_eval_iterator(c.data, c.det, 'test', global_batch_size=4))
    assert batch['image'].shape == (4, 32, 32, 3) and batch['boxes'].shape == (4, 3, 4)
    c.model.num_classes = 4
    summary = tasks.train_and_evaluate(c, tmp_path / 'run', show_progress=False)
    assert summary['complete'] and summary['dataset'] == 'fake_voc_det'
    assert summary['final']['test']['count'] == 6
    c.data.name = 'no_such_detection_set'
    with pytest.raises(ValueError, match='no_such_detection_set'):
        det_data.get_det_builder(c.data, c.det)
