"""``task='gan'``: DCGAN (``research/generative/dcgan.py``) on ``config.data``, ``config.gan``.

The task's own step (:func:`research.generative.dcgan.gan_train_step`: a discriminator step, then a
generator step, each with its own optax Adam) goes through the loop's services: checkpoints and
exact resume, metrics, progress, NaN stops. Each evaluation (``train.eval_every``, one epoch by
default) writes ``samples/step_NNNNNN.png`` (a grid of G(z) for fixed z) and scores
``gan.score_samples`` samples with a classifier trained by this codebase (``gan.classifier_workdir``,
trained first, through the same loop, when it holds no finished run): ``score`` =
exp(E KL(p(y|x) || p(y))) (1..10) and the mean max-probability ``confidence``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from research import data as data_lib
from research import storage
from research.configlib import ConfigError, with_model
from research.generative.dcgan import (
    build_gan,
    classifier_scores,
    create_gan_state,
    dcgan_adam,
    gan_train_step,
    generate,
)
from research.tasks.base import PIPELINE_KNOBS, DataInfo, Picture, Task
from research.tasks.classification import Classification
from research.train import loop
from research.train.checkpoint import Checkpointer
from research.viz.images import make_grid, save_png


def _to_unit(x):
    return (np.asarray(x, np.float32) + 1.0) * 0.5


class ClassifierScorer:
    """Softmax of a classifier trained by this codebase (a workdir), on images in [0, 1].

    The images are normalised as that run's dataset was (its config.json), so a LeNet trained on
    the MNIST folder scores generated 28x28 digits exactly as it saw test digits.
    """

    def __init__(self, workdir: str | os.PathLike):
        workdir = storage.as_path(workdir)
        saved = json.loads((workdir / 'config.json').read_text())
        resolved = saved.pop('_resolved', {})
        self.config = ConfigDict(saved)
        info = data_lib.get_dataset_info(self.config.data)
        self.mean = np.asarray(info.mean, np.float32)
        self.std = np.asarray(info.std, np.float32)
        self.model = loop.build_model(self.config, int(resolved.get('num_classes', info.num_classes)))
        ckpt = Checkpointer(workdir, async_save=False)
        state = ckpt.restore_raw()
        ckpt.close()
        self.variables = {'params': state['params']}
        if state.get('batch_stats'):
            self.variables['batch_stats'] = state['batch_stats']
        self.variables.update(state.get('constants') or {})
        self._probs = jax.jit(lambda v, x: jax.nn.softmax(self.model.apply(v, x, train=False), axis=-1))

    def probs(self, images01, batch_size: int = 500) -> np.ndarray:
        out = []
        for i in range(0, len(images01), batch_size):
            x = (np.asarray(images01[i : i + batch_size], np.float32) - self.mean) / self.std
            out.append(np.asarray(self._probs(self.variables, x)))
        return np.concatenate(out)

    def scores(self, images01) -> dict[str, float]:
        return classifier_scores(self.probs(images01))


def score_classifier_config(gc: ConfigDict, data_cfg: ConfigDict, base: ConfigDict) -> ConfigDict:
    """The scoring classifier's run: ``gan.classifier_model`` for ``gan.classifier_epochs`` on the GAN's
    dataset (normalised), Adam 2e-3, batch 64; ``base`` = the default config to start from."""
    c = base
    with_model(c, gc.classifier_model)
    c.data = ConfigDict(data_cfg.to_dict())
    c.data.normalize = True
    c.optimizer.name = 'adam'
    c.optimizer.lr = 2e-3
    c.train.duration = f'{gc.classifier_epochs} epochs'
    c.train.batch_size = 64
    c.train.eval_batch_size = 500
    c.train.log_every_steps = 100
    c.train.eval_every = ''
    c.train.checkpoint_every = ''
    return c


def ensure_score_classifier(config: ConfigDict, *, show_progress: bool = True) -> storage.AnyPath:
    """The scoring classifier's workdir (local or remote, e.g. ``gs://...``); trains it first (through
    the same loop) when it holds no finished run."""
    gc = config.gan
    workdir = storage.as_path(gc.classifier_workdir)
    summary = workdir / 'summary.json'
    if summary.exists() and json.loads(summary.read_text()).get('complete'):
        return workdir
    base = ConfigDict(config.to_dict())  # every section, at this config's values; reset what the run reads
    base.task = 'classification'
    c = score_classifier_config(gc, config.data, base)
    c.seed = 0
    c.schedule.name, c.schedule.warmup = 'cosine', '0 steps'
    c.train.label_smoothing, c.train.precision, c.train.model_parallel = 0.0, 'float32', 1
    c.init.checkpoint = ''
    print(
        f'training the scoring classifier {gc.classifier_model} into {workdir} ({gc.classifier_epochs} epochs)'
    )
    loop.run(loop.Trainer(Classification(c), show_progress=show_progress), workdir)
    return workdir


class Gan(Task):
    name = 'gan'
    section = 'gan'
    supports = PIPELINE_KNOBS | frozenset({'train.model_parallel'})
    custom_step = True
    best_metric = 'score'
    progress_keys = ('d_loss', 'g_loss', 'd_real')

    @classmethod
    def defaults(cls) -> ConfigDict:
        return ConfigDict(
            dict(
                latent_dim=100,
                base_size=7,  # first generator map (image size = base_size * 2^n): 7 for 28x28, 4 for 32/64
                g_width=64,  # channels of the generator's last hidden layer (doubling towards z)
                d_width=64,  # channels of the discriminator's first layer (doubling with depth)
                batch_norm=True,
                leak=0.2,
                g_lr=2e-4,
                d_lr=2e-4,
                b1=0.5,
                b2=0.999,
                grid_samples=64,  # fixed z, one PNG grid per evaluation
                score_samples=1000,  # samples scored per evaluation by the classifier (0 = no score)
                classifier_workdir='runs/dcgan_score_lenet5',  # trained first if it holds no finished run
                classifier_model='lenet5_modern',
                classifier_epochs=5,
            )
        )

    def check(self) -> None:
        if self.config.data.normalize:
            raise ConfigError(
                "task 'gan' reads images in [0, 1] (mapped to [-1, 1]): set data.normalize=False "
                f'(now data.normalize={self.config.data.normalize!r})'
            )

    def setup(self) -> DataInfo:
        c = self.config
        info = data_lib.get_dataset_info(c.data)
        gc = c.gan
        self.scorer = None
        if gc.score_samples and jax.process_index() == 0:
            self.scorer = ClassifierScorer(ensure_score_classifier(c))
        self.z_grid = jax.random.normal(jax.random.key(c.seed + 1), (gc.grid_samples, gc.latent_dim))
        self.z_score = jax.random.normal(jax.random.key(c.seed + 2), (gc.score_samples, gc.latent_dim))
        self.real_scores = None
        self.info = DataInfo(
            name=info.name,
            num_train=info.num_examples[str(c.data.train_split)],
            num_examples=dict(info.num_examples),
            image_shape=tuple(info.image_shape),
            num_classes=info.num_classes,
        )
        return self.info

    def train_iterator(self, *, seed, global_batch_size, process_index, process_count):
        return data_lib.make_train_iterator(
            self.config.data,
            seed=seed,
            global_batch_size=global_batch_size,
            process_index=process_index,
            process_count=process_count,
        )

    def eval_iterator(self, split, *, global_batch_size, process_index, process_count):
        return data_lib.make_eval_iterator(
            self.config.data,
            split,
            global_batch_size=global_batch_size,
            process_index=process_index,
            process_count=process_count,
        )

    @property
    def model_name(self) -> str:
        return 'dcgan'

    def build_model(self, dtype=None):
        return build_gan(self.config, self.info.image_shape)

    def make_tx(self, schedule):
        gc = self.config.gan
        return dcgan_adam(gc.g_lr, gc.b1, gc.b2), dcgan_adam(gc.d_lr, gc.b1, gc.b2)

    def create_state(self, model, tx, rng):
        (generator, discriminator), (g_tx, d_tx) = model, tx
        return create_gan_state(
            generator, discriminator, rng, latent_dim=self.config.gan.latent_dim, g_tx=g_tx, d_tx=d_tx
        )

    def train_step(self, state, batch, num_steps: int = 1):
        return gan_train_step(state, {'image': batch['image'] * 2.0 - 1.0})

    def eval_step(self, state, batch):
        return {'count': jnp.sum(batch['mask'].astype(jnp.float32))}

    def evaluate(self, state, split, batches, run, *, final):
        """A grid of G(z) for fixed z and the classifier scores of ``gan.score_samples`` samples; at the
        end, also the scores of the real images of ``split`` (the reference)."""
        gen = self.jit(generate, static_argnames='train')
        grid = _to_unit(gen(state, self.z_grid))
        res: dict[str, Any] = {}
        if self.scorer is not None:
            samples = np.concatenate(
                [_to_unit(gen(state, self.z_score[i : i + 500])) for i in range(0, len(self.z_score), 500)]
            )
            res.update(self.scorer.scores(samples))
            if final:
                real = np.concatenate([b['image'][b['mask']] for b in batches])
                self.real_scores = self.scorer.scores(real)
                res['real_score'] = self.real_scores['score']
        return res, Picture(lambda path: save_png(make_grid(grid, padding=2), path, scale=2), name='samples')

    def eval_message(self, res):
        if 'score' not in res:
            return 'samples written'
        return f'score {res["score"]:.2f} confidence {res["confidence"]:.3f}'

    def done_message(self, res):
        msg = self.eval_message(res)
        if 'real_score' in res:
            msg += f' (real test images {res["real_score"]:.2f})'
        return msg

    def summary(self, state, summary) -> dict[str, Any]:
        count = lambda tree: sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))  # noqa: E731
        out = {'g_params': count(state.g_params), 'd_params': count(state.d_params)}
        if self.real_scores is not None:
            out['real_test_scores'] = self.real_scores
        return out
