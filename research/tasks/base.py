"""The ``Task`` interface: what one kind of run supplies to the one loop (``research/train/loop.py``).

The loop owns everything common: the mesh and shardings (data parallel, FSDP through
``train.model_parallel``, ghost BatchNorm as a forward wrapper), precision, transfer init and
freeze, gradient accumulation, weight EMA, the CPU convolution switch, the metric read one step
late, resume and same-run checks, ``config.json`` / ``summary.json``, progress, checkpoints and NaN
stops. A task supplies only what differs:

- ``name``, its config ``section`` and :meth:`defaults` (merged into ``research.config.base_config``);
- ``supports``: which optional knobs of :data:`KNOBS` it implements; the others are refused at
  config time with a message naming the knob and the task (:func:`check_knobs`);
- :meth:`setup` (resolve the data: ``self.info``), the train/eval iterators;
- :meth:`build_model`, :meth:`init_variables` (the state is built from them by the loop);
- :meth:`loss` (the loss and metrics of one batch: the loop builds the train step around it) or,
  for tasks with their own update rule (GAN's two optimizers, the speed run's K-step scan),
  :meth:`train_step` itself;
- :meth:`eval_step` and :meth:`evaluate` (how a split is evaluated, its messages), ``best_metric``;
- its pictures (returned by :meth:`evaluate`) and :meth:`finish` (outputs written at the end).

Register a task with :func:`research.tasks.register` (done once, in ``research/tasks/__init__.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Iterable, Iterator

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from research import models
from research.configlib import ConfigError
from research.kernels import onednn
from research.train.optim import make_optimizer
from research.train.state import TrainState

PyTree = Any

#: The optional knobs: config key -> its value when set away from "off" (None = off). A task lists
#: the ones it implements in ``Task.supports``; any other one that is set is refused by name.
KNOBS: dict[str, Callable[[ConfigDict], Any]] = {
    'train.precision': lambda c: None if c.train.precision == 'float32' else c.train.precision,
    'train.model_parallel': lambda c: None if c.train.model_parallel == 1 else c.train.model_parallel,
    'train.bn_group_size': lambda c: c.train.bn_group_size or None,
    'train.accumulate_steps': lambda c: None if c.train.accumulate_steps == 1 else c.train.accumulate_steps,
    'train.ema_decay': lambda c: c.train.ema_decay or None,
    'train.label_smoothing': lambda c: c.train.label_smoothing or None,
    'init.checkpoint': lambda c: c.init.checkpoint or None,
    'optimizer.freeze': lambda c: c.optimizer.freeze or None,
    'optimizer.lr_multipliers': lambda c: tuple(c.optimizer.lr_multipliers) or None,
    'data.on_device': lambda c: c.data.get('on_device', False) or None,
    'data.synthetic': lambda c: c.data.get('synthetic', False) or None,
    # The input pipeline's knobs (research/data): which pipeline a task reads decides what it takes.
    'data.image_size': lambda c: c.data.image_size or None,
    'data.classes': lambda c: tuple(c.data.classes) or None,
    'data.eval_resize': lambda c: c.data.eval_resize or None,
    'data.num_threads': lambda c: c.data.num_threads or None,
    'data.num_workers': lambda c: c.data.num_workers or None,
    'data.augment.crop_padding': lambda c: c.data.augment.crop_padding or None,
    'data.augment.flip': lambda c: c.data.augment.flip or None,
    'data.augment.rotation': lambda c: c.data.augment.rotation or None,
    'data.augment.scale': lambda c: c.data.augment.scale or None,
    'data.augment.brightness': lambda c: c.data.augment.brightness or None,
    'data.augment.random_resized_crop': lambda c: c.data.augment.random_resized_crop or None,
    'data.augment.randaugment': lambda c: c.data.augment.randaugment or None,
    'data.augment.autoaugment': lambda c: c.data.augment.autoaugment or None,
    'data.augment.mixup': lambda c: c.data.augment.mixup or None,
    'data.augment.cutmix': lambda c: c.data.augment.cutmix or None,
}

#: The knobs of the classification input pipeline (``research.data.pipeline``): the tasks that read it
#: (classification, gan, fast_style) take them all but the label mixing.
PIPELINE_KNOBS = frozenset(
    {
        'data.image_size',
        'data.classes',
        'data.eval_resize',
        'data.num_threads',
        'data.num_workers',
        'data.augment.crop_padding',
        'data.augment.flip',
        'data.augment.rotation',
        'data.augment.scale',
        'data.augment.brightness',
        'data.augment.random_resized_crop',
        'data.augment.randaugment',
        'data.augment.autoaugment',
    }
)

#: Knobs every task takes: the loop implements them the same way for all.
UNIVERSAL = frozenset({'train.cpu_conv'})


def check_knobs(task: 'Task', config: ConfigDict) -> None:
    """Raises :class:`ConfigError` naming the first knob that is set but not supported by ``task``."""
    for key, value_of in KNOBS.items():
        value = value_of(config)
        if value is not None and key not in task.supports:
            ok = sorted(task.supports & KNOBS.keys())
            raise ConfigError(
                f"{key}={value!r} is not supported by task '{task.name}' "
                f'(it takes: {", ".join(ok) if ok else "none of the optional knobs"}); unset it'
            )


@dataclasses.dataclass
class DataInfo:
    """What the loop needs to know of a task's data."""

    name: str  # shown in logs and summary.json
    num_train: int  # examples per epoch of the train stream
    num_examples: dict[str, int]  # split -> examples (evaluation checks its count against it)
    image_shape: tuple[int, ...]  # one example's input (H, W, C)
    num_classes: int = 0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # task-specific, into config.json


@dataclasses.dataclass
class Picture:
    """A picture an evaluation asks the loop to write: ``write(path)`` saves it (main process)."""

    write: Callable[[Any], Any]
    name: str = 'viz'  # subdirectory of the workdir


class Task:
    """Base class; see the module docstring. One instance per run, built from the config."""

    name: ClassVar[str] = ''
    section: ClassVar[str | None] = None
    supports: ClassVar[frozenset[str]] = frozenset()
    best_metric: ClassVar[str] = 'top1'
    progress_keys: ClassVar[tuple[str, ...]] = ('loss',)
    #: Whether the run continues from checkpoints (every task here does; False = starts over).
    checkpoints: ClassVar[bool] = True
    #: Train on the first device only (the speed run).
    single_device: ClassVar[bool] = False
    #: The run trains a classifier of ``config.model`` (``launch.py --viz`` can draw it).
    classifier: ClassVar[bool] = False

    def __init__(self, config: ConfigDict):
        self.config = config
        self.info: DataInfo | None = None
        self.steps_per_call = 1  # train steps per jitted call (the speed run's lax.scan)

    #: Set by the loop: 'onednn' or 'xla' (``train.cpu_conv`` resolved), and the run's mesh.
    cpu_conv: str = 'xla'
    mesh = None

    def jit(self, fn, **kwargs):
        """``jax.jit`` with this run's CPU convolutions (for a task's own extra programs)."""
        return onednn.scoped(jax.jit(fn, **kwargs), self.cpu_conv == 'onednn')

    # -- config ----------------------------------------------------------------------------------
    @classmethod
    def defaults(cls) -> ConfigDict | None:
        """The task's own config section (``config.<section>``), or None."""
        return None

    def check(self) -> None:
        """Task-specific checks of config values (raise :class:`ConfigError` naming the key)."""

    # -- data ------------------------------------------------------------------------------------
    def setup(self) -> DataInfo:
        """Resolves the data (builds offline datasets) and returns ``self.info``."""
        raise NotImplementedError

    def train_iterator(self, *, seed: int, global_batch_size: int, process_index: int, process_count: int):
        """This process's slice of the train stream: ``next()`` gives a host batch; ``get_state()`` /
        ``set_state()`` make it resumable (checkpointed with the state)."""
        raise NotImplementedError

    def eval_iterator(self, split: str, *, global_batch_size: int, process_index: int, process_count: int):
        """This process's slice of the padded eval batches of ``split`` (``mask`` marks real rows)."""
        raise NotImplementedError

    def host_batch(self, batch: dict, split: str) -> dict:
        """Host-side additions to a batch before it is sharded (e.g. proposals); default: as is."""
        return batch

    # -- model and state -------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The model's name in logs and ``summary.json``."""
        return str(self.config.model.name)

    def build_model(self, dtype=None):
        """The model of ``config.model`` for this task's data; ``dtype`` = ``train.precision``'s."""
        kwargs = {k: v for k, v in self.config.model.items() if k != 'name'}
        kwargs.setdefault('num_classes', self.info.num_classes)
        if dtype is not None:
            kwargs['dtype'] = dtype
        return models.create(self.config.model.name, **kwargs)

    def init_variables(self, model, rng: jax.Array) -> PyTree:
        """The model's variables from ``rng`` (on a sample input; pure: the loop jits it)."""
        sample = jnp.zeros((1, *self.info.image_shape), jnp.float32)
        return model.init({'params': rng, 'dropout': rng}, sample, train=False)

    def make_tx(self, schedule):
        """The optimizer of ``config.optimizer`` on ``schedule`` (with ``optimizer.freeze`` /
        ``lr_multipliers``: one optimizer per parameter group)."""
        ic = self.config.init
        return make_optimizer(self.config.optimizer, schedule, init_exclude=ic.exclude, init_into=ic.into)

    def create_state(self, model, tx, rng: jax.Array) -> PyTree:
        """The initial train state (pure; the loop jits it onto the state shardings)."""
        init_rng, state_rng = jax.random.split(rng)
        variables = dict(self.init_variables(model, init_rng))
        params = variables.pop('params')
        batch_stats = variables.pop('batch_stats', {})
        return TrainState(
            step=jnp.asarray(0, jnp.int32),
            params=params,
            batch_stats=batch_stats,
            constants=variables,
            opt_state=tx.init(params),
            rng=state_rng,
            apply_fn=model.apply,
            tx=tx,
        )

    # -- training --------------------------------------------------------------------------------
    def loss(
        self, params, state, batch: dict, rng: jax.Array, *, forward
    ) -> tuple[jax.Array, tuple[dict, PyTree]]:
        """``(loss, (metrics, new_batch_stats))`` of one batch, differentiable in ``params``; ``rng`` is
        the step's key (folded with the micro-batch under ``train.accumulate_steps``).

        ``forward(variables, *args, rngs=..., **kwargs) -> (outputs, new_vars)`` is the train-mode
        ``model.apply`` (``mutable=['batch_stats']``) as the loop wraps it (ghost BatchNorm...)."""
        raise NotImplementedError

    #: Set by tasks whose own ``train_step`` replaces the loop's (their knobs are then limited).
    custom_step: ClassVar[bool] = False

    def train_step(self, state, batch: dict, num_steps: int = 1):
        """Only for ``custom_step`` tasks: ``(state, metrics)`` after ``num_steps`` steps."""
        raise NotImplementedError

    # -- evaluation ------------------------------------------------------------------------------
    def eval_step(self, state, batch: dict) -> PyTree:
        """Per-batch evaluation outputs (sums over the real rows, or per-example outputs)."""
        raise NotImplementedError

    def evaluate(
        self, state, split: str, batches: Iterator[dict], run: Callable[[dict], PyTree], *, final: bool
    ) -> tuple[dict[str, Any], Picture | None]:
        """Metrics of ``split`` from ``run(host_batch)`` (the jitted, sharded :meth:`eval_step`, output
        replicated) over ``batches``; and a picture, or None. ``final``: the end-of-run evaluation."""
        raise NotImplementedError

    def eval_message(self, res: dict) -> str:
        return ', '.join(f'{k} {v:.4f}' for k, v in res.items() if isinstance(v, float))

    def done_message(self, res: dict) -> str:
        return f'{self.config.data.eval_split} {self.eval_message(res)}'

    def describe(self) -> str:
        """The data part of the run header."""
        return f'data {self.info.name} {self.info.num_examples}'

    def summary(self, state, summary: dict[str, Any]) -> dict[str, Any]:
        """Task-specific entries of ``summary.json`` (``summary``: the loop's entries so far)."""
        return {}

    def finish(self, state, workdir) -> None:
        """Outputs written once the run is complete (main process)."""


def eval_totals(batches: Iterable[dict], run: Callable[[dict], PyTree]) -> PyTree:
    """Sum of ``run(batch)`` over ``batches`` (host numpy), for evaluations of sums."""
    totals = None
    for batch in batches:
        out = run(batch)
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    return jax.device_get(totals)
