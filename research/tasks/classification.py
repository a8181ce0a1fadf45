"""``task='classification'``: a registered classifier on any dataset of ``research.data``.

Loss: mean softmax cross-entropy (``train.label_smoothing``) with top-1 / top-5 as train metrics
(:func:`research.train.state.classifier_loss`). Evaluation: exact loss / top-1 / top-5 over the whole
split (padded final batch masked), checked against the split's size. ``data.on_device``: the
pipeline ships uint8 images and the augmentation draws, augmented and normalised inside the jitted
steps (``research/data/device_augment.py``). ``data.synthetic``: one random batch kept on the devices
(the throughput baseline of ``benchmarks/input_pipeline.py``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from research import data as data_lib
from research.data import device_augment
from research.data import datasets
from research.data.mix import MixSettings, mix_batch
from research.tasks.base import PIPELINE_KNOBS, DataInfo, Task, eval_totals
from research.train.losses import soft_target_cross_entropy
from research.train import mesh as mesh_lib
from research.train.state import classifier_loss, eval_step, topk_correct


class SyntheticBatches:
    """``data.synthetic``: one random global batch (standard-normal images, uniform labels) made on the
    devices once, sharded as the pipeline's batches, and yielded at every step: the trainer's step
    without any input pipeline or host-to-device copy, the baseline ``benchmarks/input_pipeline.py``
    measures the real pipeline against. Same iterator protocol as the grain iterator (its state is a
    marker, so a synthetic run resumes as one)."""

    STATE = {'synthetic': True}

    def __init__(self, image_shape, num_classes: int, global_batch_size: int, sharding, seed: int):
        shape = (int(global_batch_size), *image_shape)

        def make(key):
            ki, kl = jax.random.split(key)
            return {
                'image': jax.random.normal(ki, shape, jnp.float32),
                'label': jax.random.randint(kl, shape[:1], 0, num_classes, jnp.int32),
            }

        self._batch = jax.jit(make, out_shardings=sharding)(jax.random.key(seed))

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, jax.Array]:
        return self._batch

    def get_state(self) -> dict[str, bool]:
        return dict(self.STATE)

    def set_state(self, state: dict[str, Any]) -> None:
        if state != self.STATE:
            raise ValueError(
                f'data.synthetic=True cannot resume the data-iterator state {state!r} of a real run'
            )


class Classification(Task):
    name = 'classification'
    supports = PIPELINE_KNOBS | frozenset(
        {
            'train.precision',
            'train.model_parallel',
            'train.bn_group_size',
            'train.accumulate_steps',
            'train.ema_decay',
            'train.label_smoothing',
            'init.checkpoint',
            'optimizer.freeze',
            'optimizer.lr_multipliers',
            'data.on_device',
            'data.synthetic',
            'data.augment.mixup',
            'data.augment.cutmix',
        }
    )
    best_metric = 'top1'
    progress_keys = ('loss', 'top1')
    classifier = True

    def setup(self) -> DataInfo:
        # data.normalize='auto' resolved against the whole config (ImageNet's constants for torchvision weights)
        self.data_cfg = d = datasets.resolved_data_config(self.config)
        self.dataset = info = data_lib.get_dataset_info(d)
        self.mix = MixSettings.from_config(d)
        self.synthetic = bool(d.get('synthetic', False))
        self.on_device = bool(d.get('on_device', False)) and not self.synthetic
        self.aug = (
            device_augment.DeviceAugment.from_config(d, info.image_shape[-1]) if self.on_device else None
        )
        self.info = DataInfo(
            name=info.name,
            num_train=info.num_examples[str(d.train_split)],
            num_examples=dict(info.num_examples),
            image_shape=tuple(info.image_shape),
            num_classes=info.num_classes,
        )
        return self.info

    def train_iterator(self, *, seed, global_batch_size, process_index, process_count):
        if self.synthetic:
            sharding = mesh_lib.batch_sharding(self.mesh)
            return SyntheticBatches(
                self.info.image_shape, self.info.num_classes, global_batch_size, sharding, seed
            )
        return data_lib.make_train_iterator(
            self.data_cfg,
            seed=seed,
            global_batch_size=global_batch_size,
            process_index=process_index,
            process_count=process_count,
            step_mixes=True,  # data.augment.mixup / cutmix: in the loss below
        )

    def eval_iterator(self, split, *, global_batch_size, process_index, process_count):
        return data_lib.make_eval_iterator(
            self.data_cfg,
            split,
            global_batch_size=global_batch_size,
            process_index=process_index,
            process_count=process_count,
        )

    def _prepare(self, batch):
        return device_augment.prepare_batch(batch, self.aug) if self.on_device else batch

    def loss(self, params, state, batch, rng, *, forward):
        batch = self._prepare(batch)
        smoothing = float(self.config.train.label_smoothing)
        if not self.mix.enabled:
            return classifier_loss(params, state, batch, rng, forward=forward, label_smoothing=smoothing)
        # mixup / CutMix (research.data.mix): soft targets of the mixed batch; accuracy on the labels
        images, targets = mix_batch(
            jax.random.fold_in(rng, 1), batch['image'], batch['label'], self.info.num_classes, self.mix
        )
        logits, new_vars = forward(state.variables(params), images, rngs={'dropout': rng})
        loss = soft_target_cross_entropy(logits, targets, smoothing).mean()
        metrics = {
            'top1': topk_correct(logits, batch['label'], 1).mean(),
            'top5': topk_correct(logits, batch['label'], 5).mean(),
        }
        return loss, (metrics, new_vars.get('batch_stats', state.batch_stats))

    def eval_step(self, state, batch):
        return eval_step(state, self._prepare(batch))

    def evaluate(self, state, split, batches, run, *, final):
        totals = eval_totals(batches, run)
        n = float(totals['count'])
        expected = self.info.num_examples.get(split)
        if expected is not None and int(n) != expected:
            raise RuntimeError(f"evaluation on '{split}' counted {int(n)} examples, the split has {expected}")
        res = {k: float(totals[k]) / n for k in ('loss', 'top1', 'top5')}
        res['count'] = int(n)
        return res, None

    def eval_message(self, res):
        return f'loss {res["loss"]:.4f} top1 {100 * res["top1"]:.2f}% top5 {100 * res["top5"]:.2f}%'

    def done_message(self, res):
        return (
            f'{self.config.data.eval_split} top1 {100 * res["top1"]:.2f}% top5 {100 * res["top5"]:.2f}% '
            f'loss {res["loss"]:.4f}'
        )

    def describe(self) -> str:
        msg = f'data {self.info.name} {self.info.num_examples}'
        if self.synthetic:
            msg += ' (data.synthetic: one random batch kept on the devices, no input pipeline)'
        elif self.on_device:
            msg += ' (data.on_device: augmentation and normalisation inside the jitted step)'
        return msg

    def summary(self, state, summary) -> dict[str, Any]:
        return {'synthetic_data': self.synthetic, 'on_device_augment': self.on_device}


__all__ = ['Classification', 'SyntheticBatches']
