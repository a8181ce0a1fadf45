"""``task='detection'``: a registered detector on ``mnist_det`` (or a TFDS detection dataset by name:
``voc/2007``, ``coco/2017``, ...), ``config.det``.

- The loss is the sum of the detector's ``loss_*`` terms (the detector contract in
  ``research.detection.postprocess``); each term is logged.
- Evaluation runs the jitted detector over the split (padded batches masked) and scores the
  detections on the host: VOC mAP@0.5 all-point (``map50``) and 11-point (``map50_11pt``), per-class
  AP, and COCO AP@[.5:.95] / AP50 / AP75 with pycocotools (``det.coco_eval``), plus, for models that
  predict instance masks (Mask R-CNN), COCO mask AP (the pasted mask probabilities thresholded at
  0.5). Across hosts, every host's ground truth is gathered with the (replicated) detections, so
  process 0 scores the whole split; the count of scored images is checked against the split. The
  final evaluation also measures throughput (``eval_images_per_sec``), batch-1 latency of the jitted
  network (``latency_ms``), the host proposal time of proposal-based models (``proposal_ms``) and
  their sum (``total_ms``).
- Each evaluation writes ``viz/step_NNNNNN.png`` (ground truth | predictions).
- Models with ``needs_proposals`` (R-CNN, SPPNet, Fast R-CNN) get host proposals per example
  (``research.detection.proposals.get_proposals``, cached next to the dataset), looked up by the
  batch's ``index``; models with ``needs_masks`` (Mask R-CNN) get the instance masks.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from research.configlib import ConfigError
from research.detection import data as det_data
from research.detection import proposals as det_proposals
from research.detection import viz as det_viz
from research.detection.metrics import DetectionEvaluator
from research.tasks.base import DataInfo, Picture, Task

_GT_KEYS = ('boxes', 'labels', 'box_mask', 'mask', 'masks', 'index')


def _targets(batch: dict) -> dict:
    out = {k: batch[k] for k in ('boxes', 'labels', 'box_mask')}
    if 'masks' in batch:
        out['masks'] = batch['masks']
    return out


def _proposals(batch: dict) -> dict | None:
    if 'proposals' not in batch:
        return None
    return {'boxes': batch['proposals'], 'valid': batch['proposal_valid']}


def det_eval_step(state, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The detector's eval output (``boxes``, ``scores``, ``labels``, ``valid`` [+ ``masks``])."""
    kw = {} if 'proposals' not in batch else {'proposals': _proposals(batch)}
    return state.apply_fn(state.variables(), batch['image'], train=False, **kw)


class Detection(Task):
    name = 'detection'
    section = 'det'
    supports = frozenset(
        {
            'train.precision',
            'train.model_parallel',
            'train.accumulate_steps',
            'train.ema_decay',
            'init.checkpoint',
            'optimizer.freeze',
            'optimizer.lr_multipliers',
            'data.augment.flip',  # images and boxes
        }
    )
    best_metric = 'map50'
    progress_keys = ('loss',)

    @classmethod
    def defaults(cls) -> ConfigDict:
        # mnist_det generation, proposals for the R-CNN lineage (models with needs_proposals),
        # evaluation and pictures.
        return ConfigDict(
            dict(
                canvas_size=128,  # canvases are canvas_size x canvas_size, 1 channel
                min_objects=2,  # digits per canvas
                max_objects=6,  # also the padded ground-truth count M
                min_scale=0.8,  # digit size factor (x 28 px)
                max_scale=2.0,
                max_iou=0.3,  # paste windows overlap earlier ones by at most this IoU
                num_train=8000,  # generated train / test canvases
                num_test=2000,
                data_seed=0,  # generation seed (part of the dataset's identity)
                proposals='selective_search',  # R-CNN / SPPNet / Fast R-CNN: 'selective_search' | 'sliding_window'
                max_proposals=300,  # proposals kept per image
                coco_eval=True,  # evaluations also report COCO AP@[.5:.95] (pycocotools)
                latency_images=20,  # final eval: batch-1 latency measured on this many test images (0 = off)
                viz_examples=6,  # rows of the truth | prediction PNG written at each eval
                viz_score_threshold=0.3,  # predictions drawn at or above this score
            )
        )

    def check(self) -> None:
        name = str(self.config.data.name)
        if name in ('mnist_seg', 'shapes_seg', 'digits', 'image_folder'):
            raise ConfigError(
                f"task 'detection' reads 'mnist_det' or a TFDS detection dataset (voc/2007, coco/2017, ...); "
                f'got data.name={name!r}'
            )

    # -- data ------------------------------------------------------------------------------------
    def setup(self) -> DataInfo:
        c = self.config
        dc = c.det
        self.params = det_data.params_from_config(dc)
        self.builder = det_data.get_det_builder(c.data, dc)
        self.offline = isinstance(self.builder, det_data.MnistDet)
        self.class_names = det_data.class_names(self.builder)
        train = det_data.get_split(self.builder, str(c.data.train_split), det_cfg=dc)
        channels = 1 if self.offline else train.channels
        s = self.params.canvas_size
        self.info = DataInfo(
            name=self.builder.info.name,
            num_train=len(train),
            num_examples={k: int(v.num_examples) for k, v in self.builder.info.splits.items()},
            image_shape=(s, s, channels),
            num_classes=len(self.class_names),
        )
        self.proposals: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        return self.info

    def build_model(self, dtype=None):
        model = super().build_model(dtype)
        c = self.config
        if getattr(model, 'num_classes', self.info.num_classes) != self.info.num_classes:
            raise ConfigError(
                f'model.num_classes={model.num_classes} but {self.info.name} has {self.info.num_classes} classes '
                f'(background + {self.info.num_classes - 1})'
            )
        self.needs_masks = bool(getattr(type(model), 'needs_masks', False))
        self.needs_proposals = bool(getattr(type(model), 'needs_proposals', False))
        if not self.offline and (self.needs_masks or self.needs_proposals):
            raise ConfigError(
                f'model.name={c.model.name!r} needs instance masks or proposals: available for mnist_det only, '
                f'not {self.info.name}'
            )
        if self.needs_proposals:
            for split in (str(c.data.train_split), str(c.data.eval_split)):
                self.proposals[split] = self._get_proposals(split)
        return model

    def _get_proposals(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        dc = self.config.det
        return det_proposals.get_proposals(
            self.builder, split, method=str(dc.proposals), max_proposals=int(dc.max_proposals)
        )

    def host_batch(self, batch: dict, split: str) -> dict:
        """Adds ``proposals`` / ``proposal_valid`` of the batch's examples (zeros for padding rows)."""
        if not self.needs_proposals:
            return batch
        boxes, valid = self.proposals[split]
        idx = np.asarray(batch['index'])
        safe = np.maximum(idx, 0)
        return {
            **batch,
            'proposals': np.where((idx >= 0)[:, None, None], boxes[safe], 0.0).astype(np.float32),
            'proposal_valid': valid[safe] & (idx >= 0)[:, None],
        }

    def train_iterator(self, *, seed, global_batch_size, process_index, process_count):
        c = self.config
        return det_data.make_train_iterator(
            c.data,
            c.det,
            seed=seed,
            global_batch_size=global_batch_size,
            process_index=process_index,
            process_count=process_count,
            with_masks=self.needs_masks,
        )

    def eval_iterator(self, split, *, global_batch_size, process_index, process_count):
        c = self.config
        return det_data.make_eval_iterator(
            c.data,
            c.det,
            split,
            global_batch_size=global_batch_size,
            process_index=process_index,
            process_count=process_count,
            with_masks=self.needs_masks,
        )

    # -- model and steps -------------------------------------------------------------------------
    def _sample_targets(self):
        s, m = self.params.canvas_size, self.params.max_objects
        targets = {
            'boxes': jnp.tile(jnp.asarray([[[4.0, 4.0, 40.0, 40.0]]]), (1, m, 1)),
            'labels': jnp.ones((1, m), jnp.int32),
            'box_mask': jnp.arange(m)[None] < 1,
        }
        if self.needs_masks:
            targets['masks'] = jnp.zeros((1, m, s, s), jnp.uint8).at[:, 0, 4:40, 4:40].set(1)
        proposals = None
        if self.needs_proposals:
            p = int(self.config.det.max_proposals)
            proposals = {
                'boxes': jnp.tile(targets['boxes'][:, :1], (1, p, 1)),
                'valid': jnp.ones((1, p), bool),
            }
        return targets, proposals

    def init_variables(self, model, rng):
        """Runs the training path, so every loss-side parameter is created."""
        k1, k2, k3 = jax.random.split(rng, 3)
        targets, proposals = self._sample_targets()
        kw = {} if proposals is None else {'proposals': proposals}
        sample = jnp.zeros((1, *self.info.image_shape), jnp.float32)
        return model.init({'params': k1, 'sample': k2, 'dropout': k3}, sample, targets, train=True, **kw)

    def loss(self, params, state, batch, rng, *, forward):
        sample_rng, dropout_rng = jax.random.split(rng)
        kw = {} if 'proposals' not in batch else {'proposals': _proposals(batch)}
        losses, new_vars = forward(
            state.variables(params),
            batch['image'],
            _targets(batch),
            rngs={'sample': sample_rng, 'dropout': dropout_rng},
            **kw,
        )
        losses = {k: jnp.asarray(v, jnp.float32) for k, v in losses.items()}
        return sum(losses.values()), (losses, new_vars.get('batch_stats', state.batch_stats))

    def eval_step(self, state, batch):
        return det_eval_step(state, batch)

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, state, split, batches, run, *, final):
        """Metrics over ``split`` (VOC mAP, per-class AP, COCO AP; COCO mask AP when the model
        predicts masks) and a picture of the first batch with its detections. ``final``: also
        throughput and batch-1 latency."""
        dc = self.config.det
        ev = DetectionEvaluator(class_ids=range(1, self.info.num_classes))
        first, timed, t_total, n_batches = None, 0, 0.0, 0
        multi = jax.process_count() > 1
        for batch in batches:
            t0 = time.perf_counter()
            out = jax.device_get(run(batch))  # replicated: the detections of the global batch
            dt = time.perf_counter() - t0
            local = batch
            if multi:  # every host's ground truth, in global-batch order (process-contiguous slices)
                gt = {k: np.asarray(batch[k]) for k in _GT_KEYS if k in batch}
                batch = {**batch, **multihost_utils.process_allgather(gt, tiled=True)}
            if n_batches:  # the first batch compiles
                t_total += dt
                timed += int(np.asarray(batch['mask']).sum())  # the global batch's images
            n_batches += 1
            masks = {}
            if dc.coco_eval and 'masks' in out and 'masks' in batch:
                # mask AP: binarised at 0.5 as Mask R-CNN's inference (He et al. 2017, Sec. 3.1)
                masks = {'pred_masks': np.asarray(out['masks']) > 0.5, 'gt_masks': batch['masks']}
            ev.add(
                out['boxes'],
                out['scores'],
                out['labels'],
                out['valid'],
                batch['boxes'],
                batch['labels'],
                batch['box_mask'],
                batch['mask'],
                **masks,
            )
            if first is None:
                first = (local, out)
        expected = self.info.num_examples.get(split)
        if expected is not None and len(ev.ground_truth) != expected:
            raise RuntimeError(
                f"detection evaluation on '{split}' scored {len(ev.ground_truth)} images, the split has {expected}"
            )
        voc = ev.voc(0.5)
        res: dict[str, Any] = {'map50': voc['map'], 'map50_11pt': ev.voc(0.5, use_07_metric=True)['map']}
        for k in range(1, self.info.num_classes):
            res[f'ap50/{self.class_names[k]}'] = voc[f'ap/{k}']
        if dc.coco_eval:
            coco = ev.coco()
            res.update(
                {
                    'coco_ap': coco['AP'],
                    'coco_ap50': coco['AP50'],
                    'coco_ap75': coco['AP75'],
                    'coco_ar100': coco['AR100'],
                }
            )
            if ev.has_masks:
                segm = ev.coco(iou_type='segm')
                res.update(
                    {
                        'mask_ap': segm['AP'],
                        'mask_ap50': segm['AP50'],
                        'mask_ap75': segm['AP75'],
                        'mask_ar100': segm['AR100'],
                    }
                )
        res['count'] = len(ev.ground_truth)
        res['detections_per_image'] = float(np.mean([len(p['scores']) for p in ev.predictions]))
        if final and first is not None:
            res['eval_images_per_sec'] = timed / t_total if t_total > 0 else float('nan')
            res['latency_ms'] = self.latency_ms(state, first[0], int(dc.latency_images))
            res['proposal_ms'] = 0.0
            if self.needs_proposals:
                res['proposal_ms'] = det_proposals.time_per_image(
                    self.builder,
                    split,
                    method=str(dc.proposals),
                    max_proposals=int(dc.max_proposals),
                    n=int(dc.latency_images),
                )
            res['total_ms'] = res['latency_ms'] + res['proposal_ms']
        picture = None
        if first is not None and dc.viz_examples:
            picture = Picture(lambda path: self.save_picture(*first, path))
        return res, picture

    def latency_ms(self, state, batch: dict, n: int) -> float:
        """Median wall time (ms) of the jitted detector on one image (after a compile run), over ``n``
        images of ``batch`` (repeated if fewer)."""
        if n <= 0:
            return float('nan')
        predict_one = self.jit(det_eval_step)
        rows = int(np.asarray(batch['mask']).sum())
        times = []
        for i in range(n + 1):
            j = i % max(rows, 1)
            one = {k: np.asarray(v)[j : j + 1] for k, v in batch.items()}
            t0 = time.perf_counter()
            jax.block_until_ready(predict_one(state, one))
            if i:
                times.append(time.perf_counter() - t0)
        return 1000.0 * float(np.median(times))

    def save_picture(self, batch: dict, out: dict, path):
        dc = self.config.det
        n = min(int(dc.viz_examples), int(np.asarray(batch['mask']).sum()))
        mean, std = det_data.normalization(self.config.data, dc)
        x = np.asarray(batch['image'][:n]) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
        return det_viz.save_detection_grid(
            path,
            x,
            batch['boxes'][:n],
            batch['labels'][:n],
            batch['box_mask'][:n],
            out['boxes'][:n],
            out['scores'][:n],
            out['labels'][:n],
            out['valid'][:n],
            class_names=self.class_names,
            score_threshold=float(dc.viz_score_threshold),
            pred_masks=None if 'masks' not in out else out['masks'][:n],
        )

    def eval_message(self, res: dict) -> str:
        coco = f' COCO AP {100 * res["coco_ap"]:.2f}%' if 'coco_ap' in res else ''
        coco += f' mask AP {100 * res["mask_ap"]:.2f}%' if 'mask_ap' in res else ''
        return f'mAP@0.5 {100 * res["map50"]:.2f}%{coco}'

    def done_message(self, res: dict) -> str:
        msg = f'{self.config.data.eval_split} {self.eval_message(res)}'
        return msg + (f' | {res["total_ms"]:.1f} ms/image (batch 1)' if 'total_ms' in res else '')

    def describe(self) -> str:
        splits = {k: int(v.num_examples) for k, v in self.builder.info.splits.items()}
        return f'data {self.info.name} {splits}'
