"""``task='segmentation'``: a registered segmentation model on dense labels (``config.seg``).

- Loss: per-pixel cross-entropy with ignore label 255 (+ optional Dice, + the auxiliary head's
  loss for models that return ``(logits, {'aux': ...})`` when called with ``return_aux=True``;
  ``seg.class_balance='median_frequency'`` weights, SegNet Sec. 3.1).
- Evaluation: a [K, K] confusion matrix summed exactly over the split (padded examples masked,
  ignore pixels skipped), from which pixel accuracy, per-class IoU and mIoU follow; the final
  evaluation can add dense-CRF post-processing (``seg.crf_eval``). Each evaluation writes
  ``viz/step_NNNNNN.png`` (input | ground truth | prediction).

Datasets: ``mnist_seg`` / ``shapes_seg`` (generated offline) or a TFDS segmentation dataset.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from research.configlib import ConfigError
from research.segmentation import data as seg_data
from research.segmentation import viz as seg_viz
from research.segmentation.crf import dense_crf
from research.segmentation.losses import (
    IGNORE_LABEL,
    median_frequency_weights,
    pixel_cross_entropy,
    segmentation_loss,
)
from research.segmentation.metrics import confusion_matrix, metrics_from_confusion
from research.tasks.base import DataInfo, Picture, Task, eval_totals


def has_aux(model, sample: jax.Array) -> bool:
    """Whether ``model(x, return_aux=True)`` returns ``(logits, {'aux': ...})`` (shape-only trace)."""
    if 'return_aux' not in inspect.signature(type(model).__call__).parameters:
        return False
    try:
        out = jax.eval_shape(
            lambda x: model.init_with_output(jax.random.key(0), x, train=False, return_aux=True)[0], sample
        )
    except Exception:  # pylint: disable=broad-except  # e.g. 'UNet has no auxiliary head'
        return False
    return isinstance(out, tuple) and len(out) == 2 and 'aux' in out[1]


def seg_eval_sums(
    state,
    batch: dict[str, jax.Array],
    *,
    num_classes: int,
    crf: dict[str, Any] | None = None,
    mean: tuple[float, ...] = (0.0,),
    std: tuple[float, ...] = (1.0,),
) -> dict[str, jax.Array]:
    """Sums over the real examples (``mask``) of a padded batch: confusion matrix, CE sum, pixels and
    examples. The counts are int32 (exact: a float32 sum stops counting pixels exactly past 2^24, a
    few dozen VOC images), the CE sum float32.

    ``crf`` (keyword arguments of :func:`research.segmentation.crf.dense_crf`): also the confusion
    matrix of the dense-CRF refined predictions (``crf_confusion``), the reference image being the
    un-normalised input (``x * std + mean``) in 0..255.
    """
    logits = state.apply_fn(state.variables(), batch['image'], train=False)
    weights = jnp.broadcast_to(batch['mask'][:, None, None], batch['label'].shape).astype(jnp.float32)
    ce_sum, _ = pixel_cross_entropy(logits, batch['label'], weights=weights)
    preds = jnp.argmax(logits, -1)
    out = {
        'confusion': confusion_matrix(preds, batch['label'], num_classes, weights=weights),
        'ce_sum': ce_sum,
        'pixels': jnp.sum((batch['label'] != IGNORE_LABEL) & (weights > 0), dtype=jnp.int32),
        'examples': jnp.sum(batch['mask'], dtype=jnp.int32),
    }
    if crf is not None:
        image = (batch['image'] * jnp.asarray(std) + jnp.asarray(mean)) * 255.0
        q = dense_crf(logits, image, **crf)
        out['crf_confusion'] = confusion_matrix(
            jnp.argmax(q, -1), batch['label'], num_classes, weights=weights
        )
    return out


class Segmentation(Task):
    name = 'segmentation'
    section = 'seg'
    supports = frozenset(
        {
            'train.precision',
            'train.model_parallel',
            'train.bn_group_size',
            'train.accumulate_steps',
            'train.ema_decay',
            'init.checkpoint',
            'optimizer.freeze',
            'optimizer.lr_multipliers',
            'data.augment.crop_padding',  # joint image / label pad-and-crop and flip
            'data.augment.flip',
        }
    )
    best_metric = 'miou'
    progress_keys = ('loss', 'pixel_acc')

    @classmethod
    def defaults(cls) -> ConfigDict:
        # The synthetic datasets' generation (data.name = 'mnist_seg' | 'shapes_seg'), the loss mix
        # and the eval pictures.
        return ConfigDict(
            dict(
                canvas_size=64,  # canvases are canvas_size x canvas_size
                min_objects=1,  # digits / shapes per canvas
                max_objects=4,
                min_scale=0.6,  # object size factor (digits: x 28 px; shapes: x canvas/6 radius)
                max_scale=1.4,
                num_train=8000,  # generated train / test canvases
                num_test=2000,
                data_seed=0,  # generation seed (part of the dataset's identity)
                ce_weight=1.0,  # loss = ce_weight * CE (ignore label 255) + dice_weight * soft Dice
                dice_weight=0.0,
                # CE class weights: 'none' | 'median_frequency' (SegNet Sec. 3.1; from the train split's labels)
                class_balance='none',
                aux_weight=0.4,  # weight of an auxiliary head's loss (models with return_aux)
                crf_eval=False,  # final evaluation also reports crf_miou etc. after dense-CRF post-processing
                crf_iterations=5,  # mean-field iterations (research.segmentation.crf.dense_crf)
                crf_method='approx',  # 'exact' | 'approx' (bilateral grid) | 'auto'
                viz_examples=8,  # rows of the input | truth | prediction PNG written at each eval
            )
        )

    def check(self) -> None:
        mode = str(self.config.seg.class_balance)
        if mode not in ('', 'none', 'median_frequency'):
            raise ConfigError(f"seg.class_balance must be 'none' or 'median_frequency'; got {mode!r}")

    # -- data ------------------------------------------------------------------------------------
    def setup(self) -> DataInfo:
        c = self.config
        self.seg_info = info = seg_data.get_seg_info(c.data, c.seg)
        self.class_weights = self._class_weights(str(c.seg.class_balance))
        self.info = DataInfo(
            name=info.name,
            num_train=info.num_examples[str(c.data.train_split)],
            num_examples=dict(info.num_examples),
            image_shape=tuple(info.image_shape),
            num_classes=info.num_classes,
        )
        return self.info

    def _class_weights(self, mode: str) -> tuple[float, ...] | None:
        """``seg.class_balance``: 'none' or 'median_frequency' (weights from the whole train split)."""
        if mode in ('', 'none'):
            return None
        builder = seg_data.get_seg_builder(self.config.data, self.config.seg)
        split = seg_data.get_split(builder, str(self.config.data.train_split), self.config.seg)
        labels = split.labels
        if not isinstance(labels, np.ndarray):  # a lazily read TFDS split: the first 1,000 examples
            labels = labels[np.arange(min(len(split), 1000))]
        return tuple(float(w) for w in median_frequency_weights(labels, self.seg_info.num_classes))

    def train_iterator(self, *, seed, global_batch_size, process_index, process_count):
        c = self.config
        return seg_data.make_train_iterator(
            c.data,
            c.seg,
            seed=seed,
            global_batch_size=global_batch_size,
            process_index=process_index,
            process_count=process_count,
        )

    def eval_iterator(self, split, *, global_batch_size, process_index, process_count):
        c = self.config
        return seg_data.make_eval_iterator(
            c.data,
            c.seg,
            split,
            global_batch_size=global_batch_size,
            process_index=process_index,
            process_count=process_count,
        )

    # -- model -----------------------------------------------------------------------------------
    def build_model(self, dtype=None):
        model = super().build_model(dtype)
        sample = jnp.zeros((1, *self.info.image_shape), jnp.float32)
        sc = self.config.seg
        self.aux_weight = float(sc.aux_weight) if sc.aux_weight and has_aux(model, sample) else 0.0
        return model

    def init_variables(self, model, rng):
        sample = jnp.zeros((1, *self.info.image_shape), jnp.float32)
        kw = {'return_aux': True} if self.aux_weight else {}  # create the auxiliary head too
        return model.init({'params': rng, 'dropout': rng}, sample, train=False, **kw)

    # -- steps -----------------------------------------------------------------------------------
    def loss(self, params, state, batch, rng, *, forward):
        sc = self.config.seg
        labels = batch['label']
        cw = None if self.class_weights is None else jnp.asarray(self.class_weights, jnp.float32)
        kw = {'return_aux': True} if self.aux_weight else {}
        out, new_vars = forward(state.variables(params), batch['image'], rngs={'dropout': rng}, **kw)
        logits, extras = out if self.aux_weight else (out, {})
        lw = dict(ce_weight=float(sc.ce_weight), dice_weight=float(sc.dice_weight), class_weights=cw)
        loss = segmentation_loss(logits, labels, **lw)
        if self.aux_weight:
            loss = loss + self.aux_weight * segmentation_loss(extras['aux'], labels, **lw)
        valid = (labels != IGNORE_LABEL).astype(jnp.float32)
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32) * valid
        metrics = {'pixel_acc': correct.sum() / jnp.maximum(valid.sum(), 1.0)}
        return loss, (metrics, new_vars.get('batch_stats', state.batch_stats))

    def eval_step(self, state, batch):
        return seg_eval_sums(state, batch, num_classes=self.info.num_classes)

    def eval_step_crf(self, state, batch):
        sc = self.config.seg
        crf = dict(num_iterations=int(sc.crf_iterations), method=str(sc.crf_method))
        return seg_eval_sums(
            state,
            batch,
            num_classes=self.info.num_classes,
            crf=crf,
            mean=tuple(self.seg_info.mean),
            std=tuple(self.seg_info.std),
        )

    def predict_step(self, state, batch):
        return jnp.argmax(state.apply_fn(state.variables(), batch['image'], train=False), -1)

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, state, split, batches, run, *, final):
        """Exact metrics over ``split``; at the final evaluation with ``seg.crf_eval``, also the
        metrics after dense-CRF post-processing, prefixed ``crf_``."""
        crf = final and bool(self.config.seg.crf_eval)
        first = []

        def tap(bs):
            for b in bs:
                if not first:
                    first.append(b)
                yield b

        totals = eval_totals(tap(batches), functools.partial(run, fn=self.eval_step_crf) if crf else run)
        res = metrics_from_confusion(totals['confusion'], self.seg_info.class_names)
        if 'crf_confusion' in totals:
            crf_res = metrics_from_confusion(totals['crf_confusion'], self.seg_info.class_names)
            res.update({f'crf_{k}': v for k, v in crf_res.items() if k in ('miou', 'pixel_acc', 'mean_acc')})
        res['loss'] = float(totals['ce_sum']) / max(float(totals['pixels']), 1.0)
        res['count'] = int(totals['examples'])  # real examples evaluated (every host's, once each)
        expected = self.info.num_examples.get(split)
        if expected is not None and res['count'] != expected:
            raise RuntimeError(
                f"segmentation evaluation on '{split}' counted {res['count']} examples, the split has {expected}"
            )
        if int(res['pixels']) != int(totals['pixels']):
            raise RuntimeError('confusion matrix and loss counted different pixels')
        picture = None
        if first and self.config.seg.viz_examples:
            batch = first[0]
            preds = np.asarray(run(batch, fn=self.predict_step))
            picture = Picture(lambda path: self.save_picture(batch, preds, path))
        return res, picture

    def save_picture(self, batch: dict, preds, path):
        n = min(int(self.config.seg.viz_examples), int(np.asarray(batch['mask']).sum()))
        mean = np.asarray(self.seg_info.mean, np.float32)
        std = np.asarray(self.seg_info.std, np.float32)
        x = np.asarray(batch['image'][:n])
        return seg_viz.save_result_grid(
            path, x * std + mean, np.asarray(batch['label'][:n]), np.asarray(preds)[:n], self.info.num_classes
        )

    def eval_message(self, res: dict) -> str:
        return (
            f'mIoU {100 * res["miou"]:.2f}% pixel acc {100 * res["pixel_acc"]:.2f}% loss {res["loss"]:.4f}'
            + (f' | with dense CRF: mIoU {100 * res["crf_miou"]:.2f}%' if 'crf_miou' in res else '')
        )

    def done_message(self, res: dict) -> str:
        return f'{self.config.data.eval_split} mIoU {100 * res["miou"]:.2f}% pixel acc {100 * res["pixel_acc"]:.2f}%'
