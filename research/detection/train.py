"""``config.task == 'detection'``: train a registered detector on ``mnist_det`` (or a TFDS detection
dataset by name: ``voc/2007``, ``coco/2017``, ...), resumable from ``workdir``.

Same machinery as classification and segmentation (``research.train``): ``TrainState``, optax
optimizers and schedules, the ``('data',)`` mesh with the batch sharded and the state replicated and
donated, orbax checkpoints of the state and the grain iterator (a relaunch continues bit for bit),
``metrics.jsonl`` / TensorBoard / progress bar. What differs:

- the train step optimises the sum of the detector's ``loss_*`` terms (the detector contract in
  ``research.detection.postprocess``) and logs each term;
- evaluation runs the jitted detector over the split (padded batches masked), and scores the
  detections on the host: VOC mAP@0.5 all-point (``map50``) and 11-point (``map50_11pt``), per-class AP,
  and COCO AP@[.5:.95] / AP50 / AP75 with pycocotools (``det.coco_eval``), plus, for models that
  predict instance masks (Mask R-CNN), COCO mask AP (``mask_ap``, ``mask_ap50``, ``mask_ap75``,
  ``mask_ar100``: pycocotools ``segm``, the pasted mask probabilities thresholded at 0.5); the final
  evaluation also measures throughput (``eval_images_per_sec``), batch-1 latency of the jitted network
  (``latency_ms``), the host proposal time of proposal-based models (``proposal_ms``: selective
  search, per image, median) and their sum (``total_ms``);
- each evaluation writes ``viz/step_NNNNNN.png`` (ground truth | predictions);
- models with ``needs_proposals`` (R-CNN, SPPNet, Fast R-CNN) get host proposals per example
  (``research.detection.proposals.get_proposals``, cached next to the dataset), looked up by the
  batch's ``index``; models with ``needs_masks`` (Mask R-CNN) get the instance masks.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import models
from research.config import to_dict, validate_config
from research.detection import data as det_data
from research.detection import viz as det_viz
from research.detection.metrics import DetectionEvaluator
from research.kernels import onednn
from research.train import mesh as mesh_lib
from research.train.state import TrainState, create_train_state
from research.train.task_loop import resolve_schedule, run_task_loop

__all__ = ['DetTrainer', 'det_eval_step', 'det_train_step', 'train_detection']


def _targets(batch: dict) -> dict:
    out = {k: batch[k] for k in ('boxes', 'labels', 'box_mask')}
    if 'masks' in batch:
        out['masks'] = batch['masks']
    return out


def _proposals(batch: dict) -> dict | None:
    if 'proposals' not in batch:
        return None
    return {'boxes': batch['proposals'], 'valid': batch['proposal_valid']}


def det_train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on the sum of the detector's ``loss_*`` terms; returns each term, the total
    (``loss``) and the gradient norm."""
    step_rng = jax.random.fold_in(state.rng, state.step)
    sample_rng, dropout_rng = jax.random.split(step_rng)
    kw = {} if 'proposals' not in batch else {'proposals': _proposals(batch)}

    def loss_fn(params):
        losses, new_vars = state.apply_fn(
            state.variables(params), batch['image'], _targets(batch), train=True, mutable=['batch_stats'],
            rngs={'sample': sample_rng, 'dropout': dropout_rng}, **kw,
        )  # fmt: skip
        losses = {k: jnp.asarray(v, jnp.float32) for k, v in losses.items()}
        return sum(losses.values()), (losses, new_vars)

    (loss, (losses, new_vars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
        batch_stats=new_vars.get('batch_stats', state.batch_stats),
    )
    return new_state, {'loss': loss, **losses, 'grad_norm': optax.tree.norm(grads)}


def det_eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The detector's eval output (``boxes``, ``scores``, ``labels``, ``valid`` [+ ``masks``])."""
    kw = {} if 'proposals' not in batch else {'proposals': _proposals(batch)}
    return state.apply_fn(state.variables(), batch['image'], train=False, **kw)


class _InitWithTargets:
    """``model`` whose ``init`` runs the training path (so every loss-side parameter is created)."""

    def __init__(self, model, targets, proposals):
        self.model, self.apply, self.targets, self.proposals = model, model.apply, targets, proposals

    def init(self, rngs, x, train: bool = False):
        if not isinstance(rngs, dict):
            k1, k2, k3 = jax.random.split(rngs, 3)
            rngs = {'params': k1, 'sample': k2, 'dropout': k3}
        kw = {} if self.proposals is None else {'proposals': self.proposals}
        return self.model.init(rngs, x, self.targets, train=True, **kw)


class DetTrainer:
    """What a detection run resolves once: data, model, mesh, compiled steps, proposals."""

    def __init__(self, config):
        validate_config(config)
        self.config = config
        if config.data.name in ('mnist_seg', 'shapes_seg', 'digits', 'image_folder'):
            raise ValueError(
                f"task 'detection' reads 'mnist_det' or a TFDS detection dataset (voc/2007, coco/2017, ...); "
                f"got data.name={config.data.name!r}"
            )
        self.is_main = jax.process_index() == 0
        dc = config.det
        self.params = det_data.params_from_config(dc)
        self.builder = det_data.get_det_builder(config.data, dc)
        self.dataset = self.builder.info.name
        self.offline = isinstance(self.builder, det_data.MnistDet)
        self.class_names = det_data.class_names(self.builder)
        self.num_classes = len(self.class_names)
        train_data = det_data.get_split(self.builder, str(config.data.train_split), det_cfg=dc)
        self.channels = 1 if self.offline else train_data.channels
        kwargs = {k: v for k, v in to_dict(config.model).items() if k != 'name'}
        kwargs.setdefault('num_classes', self.num_classes)
        self.model = models.create(config.model.name, **kwargs)
        if getattr(self.model, 'num_classes', self.num_classes) != self.num_classes:
            raise ValueError(
                f'model.num_classes={self.model.num_classes} but {self.dataset} has {self.num_classes} classes '
                f'(background + {self.num_classes - 1})'
            )
        self.needs_masks = bool(getattr(type(self.model), 'needs_masks', False))
        self.needs_proposals = bool(getattr(type(self.model), 'needs_proposals', False))
        self.mesh = mesh_lib.make_mesh()
        if not self.offline and (self.needs_masks or self.needs_proposals):
            raise ValueError(
                f'{config.model.name} needs instance masks or proposals: available for mnist_det only, '
                f'not {self.dataset}'
            )
        resolve_schedule(self, config, len(train_data))
        self.proposals = {}
        if self.needs_proposals:
            for split in (str(config.data.train_split), str(config.data.eval_split)):
                self.proposals[split] = self._get_proposals(split)
        repl = mesh_lib.replicated(self.mesh)
        s, m = self.params.canvas_size, self.params.max_objects
        sample = jnp.zeros((1, s, s, self.channels), jnp.float32)
        targets = {
            'boxes': jnp.tile(jnp.asarray([[[4.0, 4.0, 40.0, 40.0]]]), (1, m, 1)),
            'labels': jnp.ones((1, m), jnp.int32),
            'box_mask': jnp.arange(m)[None] < 1,
        }
        if self.needs_masks:
            targets['masks'] = jnp.zeros((1, m, s, s), jnp.uint8).at[:, 0, 4:40, 4:40].set(1)
        proposals = None
        if self.needs_proposals:
            p = int(config.det.max_proposals)
            proposals = {
                'boxes': jnp.tile(targets['boxes'][:, :1], (1, p, 1)),
                'valid': jnp.ones((1, p), bool),
            }
        init_model = _InitWithTargets(self.model, targets, proposals)
        init = functools.partial(create_train_state, init_model, self.tx, sample_input=sample)
        abstract = jax.eval_shape(init, jax.random.key_data(jax.random.key(0)))
        self.state_sharding = jax.tree.map(lambda _: repl, abstract)
        on = self.cpu_conv == 'onednn'  # the steps are traced with the convolutions resolved here
        self._init = onednn.scoped(jax.jit(init, out_shardings=self.state_sharding), on)
        self.num_params = models.count_params(abstract.params, collection=None)
        batch_sh = mesh_lib.batch_sharding(self.mesh)
        self.train_step = onednn.scoped(jax.jit(
            det_train_step, in_shardings=(self.state_sharding, batch_sh), out_shardings=(self.state_sharding, repl),
            donate_argnums=(0,),
        ), on)  # fmt: skip
        self.eval_step = onednn.scoped(jax.jit(
            det_eval_step, in_shardings=(self.state_sharding, batch_sh), out_shardings=repl
        ), on)
        self._predict_one = onednn.scoped(jax.jit(det_eval_step), on)

    def _get_proposals(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        from research.detection.proposals import get_proposals

        dc = self.config.det
        return get_proposals(
            self.builder, split, method=str(dc.proposals), max_proposals=int(dc.max_proposals)
        )

    def with_proposals(self, batch: dict, split: str) -> dict:
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

    task = 'detection'
    best_metric = 'map50'

    def next_batch(self, it) -> dict:
        return self.with_proposals(next(it), str(self.config.data.train_split))

    def resolved(self) -> dict[str, Any]:
        s = self.params.canvas_size
        return dict(dataset=self.dataset, num_classes=self.num_classes, image_shape=[s, s, self.channels])

    def describe(self, workdir) -> str:
        splits = {k: int(v.num_examples) for k, v in self.builder.info.splits.items()}
        return (
            f'model {self.config.model.name}: {self.num_params:,} params | data {self.dataset} {splits} | '
            f'{self.steps_per_epoch} steps/epoch, {self.total_steps} steps | workdir {workdir}'
        )

    def evaluate_at(self, state: TrainState, step: int, final: bool):
        res, first = self.evaluate(state, timing=final)
        picture = None
        if first is not None and self.config.det.viz_examples:
            picture = lambda path: self.save_picture(*first, path)  # noqa: E731
        return res, picture

    def eval_message(self, res: dict) -> str:
        coco = f' COCO AP {100 * res["coco_ap"]:.2f}%' if 'coco_ap' in res else ''
        coco += f' mask AP {100 * res["mask_ap"]:.2f}%' if 'mask_ap' in res else ''
        return f'mAP@0.5 {100 * res["map50"]:.2f}%{coco}'

    def done_message(self, res: dict) -> str:
        msg = f'{self.config.data.eval_split} {self.eval_message(res)}'
        return msg + (f' | {res["total_ms"]:.1f} ms/image (batch 1)' if 'total_ms' in res else '')

    def train_iterator(self):
        c = self.config
        return det_data.make_train_iterator(
            c.data, c.det, seed=c.seed, global_batch_size=self.batch_size, process_index=jax.process_index(),
            process_count=jax.process_count(), with_masks=self.needs_masks,
        )  # fmt: skip

    def init_state(self) -> TrainState:
        return self._init(jax.random.key_data(jax.random.key(self.config.seed)))

    def evaluate(self, state: TrainState, split: str | None = None, *, timing: bool = False):
        """Metrics over ``split`` (VOC mAP, per-class AP, COCO AP; COCO mask AP when the model
        predicts masks) and the first batch with its detections (for the picture). ``timing``: also
        throughput and batch-1 latency."""
        c = self.config
        split = split or str(c.data.eval_split)
        it = det_data.make_eval_iterator(
            c.data, c.det, split, global_batch_size=self.eval_batch_size, process_index=jax.process_index(),
            process_count=jax.process_count(), with_masks=self.needs_masks,
        )  # fmt: skip
        sharding = mesh_lib.batch_sharding(self.mesh)
        ev = DetectionEvaluator(class_ids=range(1, self.num_classes))
        first, timed, t_total, n_batches = None, 0, 0.0, 0
        for batch in it:
            batch = self.with_proposals(batch, split)
            t0 = time.perf_counter()
            out = jax.device_get(self.eval_step(state, mesh_lib.to_global(batch, sharding)))
            if n_batches:  # the first batch compiles
                t_total += time.perf_counter() - t0
                timed += int(np.asarray(batch['mask']).sum())
            n_batches += 1
            masks = {}
            if c.det.coco_eval and 'masks' in out and 'masks' in batch:
                # mask AP: binarised at 0.5 as Mask R-CNN's inference (He et al. 2017, Sec. 3.1)
                masks = {'pred_masks': np.asarray(out['masks']) > 0.5, 'gt_masks': batch['masks']}
            ev.add(out['boxes'], out['scores'], out['labels'], out['valid'], batch['boxes'], batch['labels'],
                   batch['box_mask'], batch['mask'], **masks)  # fmt: skip
            if first is None:
                first = (batch, out)
        voc = ev.voc(0.5)
        res: dict[str, Any] = {'map50': voc['map'], 'map50_11pt': ev.voc(0.5, use_07_metric=True)['map']}
        for k in range(1, self.num_classes):
            res[f'ap50/{self.class_names[k]}'] = voc[f'ap/{k}']
        if c.det.coco_eval:
            coco = ev.coco()
            res.update({'coco_ap': coco['AP'], 'coco_ap50': coco['AP50'], 'coco_ap75': coco['AP75'],
                        'coco_ar100': coco['AR100']})  # fmt: skip
            if ev.has_masks:
                segm = ev.coco(iou_type='segm')
                res.update({'mask_ap': segm['AP'], 'mask_ap50': segm['AP50'], 'mask_ap75': segm['AP75'],
                            'mask_ar100': segm['AR100']})  # fmt: skip
        res['count'] = len(ev.ground_truth)
        res['detections_per_image'] = float(np.mean([len(p['scores']) for p in ev.predictions]))
        if timing:
            res['eval_images_per_sec'] = timed / t_total if t_total > 0 else float('nan')
            res['latency_ms'] = self.latency_ms(state, first[0], int(c.det.latency_images))
            res['proposal_ms'] = 0.0
            if self.needs_proposals:
                from research.detection.proposals import time_per_image

                res['proposal_ms'] = time_per_image(
                    self.builder, split, method=str(c.det.proposals), max_proposals=int(c.det.max_proposals),
                    n=int(c.det.latency_images),
                )  # fmt: skip
            res['total_ms'] = res['latency_ms'] + res['proposal_ms']
        return res, first

    def latency_ms(self, state: TrainState, batch: dict, n: int) -> float:
        """Median wall time (ms) of the jitted detector on one image (after a compile run), over ``n``
        images of ``batch`` (repeated if fewer)."""
        if n <= 0:
            return float('nan')
        rows = int(np.asarray(batch['mask']).sum())
        times = []
        for i in range(n + 1):
            j = i % max(rows, 1)
            one = {k: np.asarray(v)[j : j + 1] for k, v in batch.items()}
            t0 = time.perf_counter()
            jax.block_until_ready(self._predict_one(state, one))
            if i:
                times.append(time.perf_counter() - t0)
        return 1000.0 * float(np.median(times))

    def save_picture(self, batch: dict, out: dict, path: Path) -> Path:
        dc = self.config.det
        n = min(int(dc.viz_examples), int(np.asarray(batch['mask']).sum()))
        mean, std = det_data.normalization(self.config.data, dc)
        x = np.asarray(batch['image'][:n]) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
        return det_viz.save_detection_grid(
            path, x, batch['boxes'][:n], batch['labels'][:n], batch['box_mask'][:n], out['boxes'][:n],
            out['scores'][:n], out['labels'][:n], out['valid'][:n], class_names=self.class_names,
            score_threshold=float(dc.viz_score_threshold), pred_masks=None if 'masks' not in out else out['masks'][:n],
        )  # fmt: skip


def train_detection(
    config, workdir: str | Path, *, stop_after_steps: int | None = None, show_progress: bool = True
) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming from its newest checkpoint) and returns the summary."""
    return run_task_loop(DetTrainer(config), config, workdir, stop_after_steps=stop_after_steps,
                         show_progress=show_progress)  # fmt: skip
