"""Neural style transfer as tasks (``research/generative/style_transfer.py``, ``config.style``).

- ``task='style_transfer'`` (Gatys et al. 2016): the "parameters" are the pixels of one image,
  optimised by ``optimizer.*`` (Adam, lr 0.02 in the experiment) for ``train.duration`` steps and
  clipped to [0, 1] after each, against the content image's features and the style image's Gram
  matrices. Writes ``result.png``, ``content.png``, ``style.png`` and ``panel.png`` (content | style |
  result) at the end; each evaluation writes ``viz/step_NNNNNN.png`` (the panel so far).
- ``task='fast_style'`` (Johnson et al. 2016): a :class:`TransformerNet` trained on ``config.data``
  (images in [0, 1]) to minimise the same losses; evaluations report the losses on the first eval
  batch; at the end ``transformer.msgpack``, ``stylized.png`` (``style.eval_image`` or
  ``style.content`` through the network, one forward pass) and ``panel.png``.

The loss network (``style.model``, ``style.weights``) is a registered model read at module paths;
offline it is randomly initialised unless ``style.weights`` names a torchvision .pth, a Flax
.msgpack or a workdir of this codebase.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from ml_collections import ConfigDict

from research import data as data_lib
from research import models, storage
from research.configlib import ConfigError
from research.generative.style_transfer import LossNetwork, StyleWeights, TransformerNet, panel
from research.tasks.base import PIPELINE_KNOBS, DataInfo, Picture, Task
from research.train.state import TrainState
from research.train.transfer import load_pretrained
from research.viz.feature_maps import used_variables
from research.viz.images import load_image, save_png

PyTree = Any


def _num_classes_of(model_name: str, source: dict[str, PyTree]) -> int | None:
    """The head size of converted weights: the last dim of the source leaf that differs from the
    default model's head (so a CIFAR-10 VGG loads as num_classes=10)."""
    model = models.create(model_name)
    default = getattr(model, 'num_classes', None)
    if default is None:
        return None
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    src = {
        jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(source.get('params', {}))
    }
    for k, leaf in jax.tree_util.tree_leaves_with_path(abstract['params']):
        key = jax.tree_util.keystr(k)
        if leaf.shape and leaf.shape[-1] == default and key in src and np.shape(src[key])[-1] != default:
            return int(np.shape(src[key])[-1])
    return default


def load_loss_network(sc: ConfigDict, seed: int = 0, input_shape=(1, 224, 224, 3)) -> tuple[LossNetwork, str]:
    """The loss network of ``config.style`` and a line saying which weights it has.

    ``style.weights``: '' = random init from ``seed``; a torchvision .pth/.pt (converted with
    ``research.interop.torchvision.from_torchvision(style.model, path)``); a Flax .msgpack of
    {'params', 'batch_stats'}; a workdir (or step directory) of this codebase. Only the modules up
    to the deepest requested layer are kept.
    """
    name = sc.model
    paths = tuple(dict.fromkeys(tuple(sc.content_layers) + tuple(sc.style_layers)))
    if sc.weights:
        source = load_pretrained(sc.weights, torchvision=name)
        nc = _num_classes_of(name, source)
        model = models.create(name, **({'num_classes': nc} if nc else {}))
        variables = {k: v for k, v in source.items() if v}
        desc = f'{name} weights from {sc.weights}'
    else:
        model = models.create(name)
        variables = model.init(jax.random.key(seed), jnp.zeros(input_shape), train=False)
        variables = jax.tree.map(np.asarray, dict(variables))
        desc = f'{name} with random weights (seed {seed}; no pretrained weights given)'
    variables = used_variables(model, variables, input_shape, paths)
    variables = jax.tree.map(jnp.asarray, variables)
    net = LossNetwork(
        model,
        variables,
        tuple(sc.content_layers),
        tuple(sc.style_layers),
        relu=bool(sc.relu),
        mean=tuple(sc.mean),
        std=tuple(sc.std),
    )
    return net, desc


def style_defaults() -> ConfigDict:
    return ConfigDict(
        dict(
            model='vgg19',  # any registered model; layers are picked by module path
            weights='',  # '' = random init (seed); a torchvision .pth, a Flax .msgpack, or a workdir
            content='sklearn:china.jpg',  # image file, or sklearn:china.jpg / sklearn:flower.jpg
            style='sklearn:flower.jpg',
            image_size=128,  # longer side of the content (and style) image
            content_layers=('conv4_2',),
            style_layers=('conv1_1', 'conv2_1', 'conv3_1', 'conv4_1', 'conv5_1'),
            relu=True,  # use ReLU(layer output): Gatys' relu4_2 etc. from the conv modules
            content_weight=1.0,
            style_weight=1e5,
            tv_weight=0.0,
            init='content',  # style_transfer: the image starts as the content image | noise
            mean=(0.485, 0.456, 0.406),  # input normalisation of the loss network (ImageNet's)
            std=(0.229, 0.224, 0.225),
            # fast_style (Johnson et al. 2016): the transformer network, trained with
            # optimizer.lr / train.duration / train.batch_size on the data.* folder
            transformer_width=32,
            transformer_blocks=5,
            eval_image='',  # content image stylised after training ('' = style.content)
        )
    )


class _Constant:
    """An iterator of one empty batch (the image optimisation reads no data); resumable."""

    STATE = {'constant': True}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return {}

    def get_state(self) -> dict:
        return dict(self.STATE)

    def set_state(self, state) -> None:
        if state != self.STATE:
            raise ValueError(f"task 'style_transfer' cannot resume the data-iterator state {state!r}")


class StyleTransfer(Task):
    """Gatys et al.: optimise the pixels of one image (see the module docstring)."""

    name = 'style_transfer'
    section = 'style'
    supports = frozenset()
    custom_step = True
    single_device = True
    best_metric = 'neg_total'
    progress_keys = ('loss', 'content', 'style')

    @classmethod
    def defaults(cls) -> ConfigDict:
        return style_defaults()

    @property
    def model_name(self) -> str:
        return f'image (loss network {self.config.style.model})'

    def check(self) -> None:
        if int(self.config.train.batch_size) != 1:
            raise ConfigError(
                f"task 'style_transfer' optimises one image: set train.batch_size=1 (now {self.config.train.batch_size})"
            )
        if self.config.style.init not in ('content', 'noise'):
            raise ConfigError(f"style.init must be 'content' or 'noise', got {self.config.style.init!r}")

    def setup(self) -> DataInfo:
        sc = self.config.style
        self.content = load_image(sc.content, sc.image_size)
        self.style = load_image(sc.style, sc.image_size)
        self.net, self.net_desc = load_loss_network(sc, int(self.config.seed), (1, *self.content.shape))
        self.weights = StyleWeights(sc.content_weight, sc.style_weight, sc.tv_weight)
        self.c_t = self.jit(self.net.content_targets)(jnp.asarray(self.content)[None])
        self.s_t = self.jit(self.net.style_targets)(jnp.asarray(self.style)[None])
        self.info = DataInfo(
            name=f'content {sc.content}, style {sc.style}',
            num_train=1,
            num_examples={},
            image_shape=tuple(self.content.shape),
            extra={'loss_network': self.net_desc},
        )
        return self.info

    def train_iterator(self, **kwargs):
        return _Constant()

    def eval_iterator(self, split, **kwargs):
        return iter(())

    def build_model(self, dtype=None):
        return None

    def create_state(self, model, tx, rng):
        x = jnp.asarray(self.content, jnp.float32)[None]
        if self.config.style.init == 'noise':
            x = jax.random.uniform(jax.random.fold_in(rng, 1), x.shape, jnp.float32)
        return TrainState(
            step=jnp.asarray(0, jnp.int32),
            params=x,
            batch_stats={},
            constants={},
            opt_state=tx.init(x),
            rng=rng,
            apply_fn=None,
            tx=tx,
        )

    def _losses(self, image):
        return self.net.losses(image, self.c_t, self.s_t, self.weights)

    def train_step(self, state, batch, num_steps: int = 1):
        """One Adam step on the pixels, clipped to [0, 1]; the losses are those of the image before it."""
        (_, parts), g = jax.value_and_grad(self._losses, has_aux=True)(state.params)
        updates, opt_state = state.tx.update(g, state.opt_state, state.params)
        image = jnp.clip(optax.apply_updates(state.params, updates), 0.0, 1.0)
        new = state.replace(step=state.step + 1, params=image, opt_state=opt_state)
        return new, {'loss': parts['total'], **parts}

    def eval_step(self, state, batch):
        return {}

    def evaluate(self, state, split, batches, run, *, final):
        parts = jax.device_get(self.jit(lambda x: self._losses(x)[1])(state.params))
        res = {k: float(v) for k, v in parts.items()}
        res['neg_total'] = -res['total']
        image = np.asarray(state.params[0])
        return res, Picture(lambda path: save_png(panel([self.content, self.style, image]), path))

    def eval_message(self, res):
        return f'total {res["total"]:.4g} content {res["content"]:.4g} style {res["style"]:.4g}'

    def done_message(self, res):
        return f'{self.eval_message(res)} | loss network {self.net_desc}'

    def finish(self, state, workdir) -> None:
        workdir = storage.as_path(workdir)
        image = np.asarray(state.params[0])
        save_png(image, workdir / 'result.png')
        save_png(self.content, workdir / 'content.png')
        save_png(self.style, workdir / 'style.png')
        save_png(panel([self.content, self.style, image]), workdir / 'panel.png')


class FastStyle(Task):
    """Johnson et al.: train a feed-forward transformer network (see the module docstring)."""

    name = 'fast_style'
    section = 'style'
    supports = PIPELINE_KNOBS | frozenset(
        {'train.model_parallel', 'train.accumulate_steps', 'train.ema_decay'}
    )
    best_metric = 'neg_total'
    progress_keys = ('loss', 'content', 'style')

    @classmethod
    def defaults(cls) -> ConfigDict:
        return style_defaults()

    @property
    def model_name(self) -> str:
        return 'transformer_net'

    def check(self) -> None:
        if self.config.data.normalize:
            raise ConfigError(
                f"task 'fast_style' reads images in [0, 1]: set data.normalize=False (now {self.config.data.normalize!r})"
            )

    def setup(self) -> DataInfo:
        c = self.config
        sc = c.style
        info = data_lib.get_dataset_info(c.data)
        h, w, ch = info.image_shape
        if ch != 3 or h % 4 or w % 4:
            raise ConfigError(
                f"task 'fast_style' needs RGB images with sides divisible by 4 (data.image_size), got {info.image_shape}"
            )
        self.net, self.net_desc = load_loss_network(sc, int(c.seed), (1, h, w, 3))
        self.weights = StyleWeights(sc.content_weight, sc.style_weight, sc.tv_weight)
        self.style = load_image(sc.style, max(h, w))
        self.s_t = self.jit(self.net.style_targets)(jnp.asarray(self.style)[None])
        self.info = DataInfo(
            name=info.name,
            num_train=info.num_examples[str(c.data.train_split)],
            num_examples=dict(info.num_examples),
            image_shape=(h, w, 3),
            extra={'loss_network': self.net_desc},
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

    def build_model(self, dtype=None):
        sc = self.config.style
        return TransformerNet(width=sc.transformer_width, blocks=sc.transformer_blocks)

    def loss(self, params, state, batch, rng, *, forward):
        images01 = batch['image']
        c_t = self.net.content_targets(images01)
        y, new_vars = forward(state.variables(params), images01)
        total, parts = self.net.losses(y, c_t, self.s_t, self.weights)
        return total, (parts, new_vars.get('batch_stats', state.batch_stats))

    def eval_step(self, state, batch):
        images01 = batch['image']
        y = state.apply_fn(state.variables(), images01)
        return self.net.losses(y, self.net.content_targets(images01), self.s_t, self.weights)[1]

    def evaluate(self, state, split, batches, run, *, final):
        """The losses on the first eval batch (a full pass of the loss network over the split is far
        costlier than training steps on CPU), and the panel of the stylised eval image."""
        batch = next(iter(batches))
        res = {k: float(v) for k, v in jax.device_get(run(batch)).items()}
        res['neg_total'] = -res['total']
        content, out = self._stylize(state)
        return res, Picture(lambda path: save_png(panel([content, self.style, out]), path))

    def _stylize(self, state):
        sc = self.config.style
        content = load_image(sc.eval_image or sc.content, sc.image_size)
        ch, cw = (content.shape[0] // 4) * 4, (content.shape[1] // 4) * 4
        content = content[:ch, :cw]
        out = np.asarray(self.jit(state.apply_fn)(state.variables(), jnp.asarray(content)[None])[0])
        return content, out

    def eval_message(self, res):
        return f'total {res["total"]:.4g} content {res["content"]:.4g} style {res["style"]:.4g}'

    def done_message(self, res):
        return f'{self.eval_message(res)} | loss network {self.net_desc}'

    def finish(self, state, workdir) -> None:
        workdir = storage.as_path(workdir)
        (workdir / 'transformer.msgpack').write_bytes(
            serialization.to_bytes({'params': jax.device_get(state.params)})
        )
        content, out = self._stylize(state)
        save_png(out, workdir / 'stylized.png')
        save_png(panel([content, self.style, out]), workdir / 'panel.png')
