"""The one run loop: :class:`Trainer` resolves a task for a run, :func:`run` trains it in a workdir.

Every task (``research/tasks/``) goes through this module; a task supplies only what differs (its
data, model, loss or step, evaluation and pictures: ``research/tasks/base.py``). What is here is
the same for all of them:

- **Mesh and sharding.** One code path for one device, many devices and many hosts: the steps are
  ``jax.jit``-compiled over a ``('data',)`` mesh with the batch sharded and the state replicated
  (BatchNorm statistics over the global batch), or with ``train.model_parallel = M > 1`` over a
  ``('data', 'model')`` mesh with the large state arrays FSDP-sharded
  (:func:`research.train.mesh.state_sharding`). The state buffers are donated.
- **Forward wrappers.** ``train.bn_group_size`` (ghost BatchNorm through ``jax.shard_map``,
  :func:`research.train.state.ghost_bn_forward`) wraps the train-mode forward of any task whose
  loss calls the ``forward`` it is given.
- **The update.** The loop builds the train step around the task's loss
  (:func:`research.train.state.loss_step`): gradient accumulation (``train.accumulate_steps``),
  frozen parameters and BatchNorm statistics (``optimizer.freeze``), weight EMA
  (``train.ema_decay``; evaluation then uses the averaged weights).
- **Precision** (``train.precision``: the model's compute ``dtype``), **transfer init**
  (``init.*``), the **CPU convolution switch** (``train.cpu_conv``: the steps are lowered with
  oneDNN convolutions or XLA's).
- **The run**: resume from the newest checkpoint (train state + data-iterator state; a relaunch
  continues to the same result as an uninterrupted run), same-run checks, ``config.json``,
  ``metrics.jsonl`` (metrics read one step late, so the host never waits for the step it
  dispatched), progress with throughput and ETA, evaluations and checkpoints every N steps, a stop
  on a non-finite loss before any checkpoint of the bad state is written, a checkpoint on Ctrl-C,
  the final evaluation and ``summary.json``.

Tasks that run ``K`` steps per jitted call (the speed run's ``lax.scan``) get the same services:
log, evaluation and checkpoint boundaries are crossed rather than hit.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from research import models
from research.configlib import ConfigError, parse_duration, to_dict
from research.kernels import onednn
from research.train import checkpoint as ckpt_lib
from research.train import records
from research.train import mesh as mesh_lib
from research.train import transfer
from research.train import workdir as workdir_lib
from research.train.optim import make_schedule
from research.train import distributed
from research.train.reporting import MetricWriter, ProfilerHook, Progress, format_seconds, read_metrics
from research.train.state import ghost_bn_forward, loss_step, plain_forward


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; the run stopped and the last good checkpoint was kept."""


PRECISIONS = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(config: ConfigDict):
    """The activation dtype of ``train.precision`` (None for float32: the model's own default)."""
    precision = str(config.train.get('precision', 'float32')) if 'train' in config else 'float32'
    if precision not in PRECISIONS:
        raise ConfigError(f'unknown train.precision {precision!r}; expected one of {", ".join(PRECISIONS)}')
    return None if precision == 'float32' else PRECISIONS[precision]


def model_dtype(config: ConfigDict):
    """``train.precision``'s dtype, checked against ``model.dtype`` and the model's fields."""
    dtype = compute_dtype(config)
    if dtype is None:
        return None
    if 'dtype' in config.model:
        raise ConfigError(
            f'train.precision={config.train.precision!r} and model.dtype={config.model.dtype!r} both set '
            'the compute dtype; set only one'
        )
    if 'dtype' not in models.accepted_kwargs(config.model.name):
        raise ConfigError(
            f'train.precision={config.train.precision!r} needs a model with a `dtype` field; '
            f"'{config.model.name}' has none"
        )
    return dtype


def build_model(config: ConfigDict, num_classes: int):
    """The registered model ``config.model.name`` with the other ``config.model`` keys as arguments
    (``num_classes`` unless set) and ``train.precision``'s compute dtype."""
    kwargs = {k: v for k, v in to_dict(config.model).items() if k != 'name'}
    kwargs.setdefault('num_classes', num_classes)
    dtype = model_dtype(config)
    if dtype is not None:
        kwargs['dtype'] = dtype
    return models.create(config.model.name, **kwargs)


def _is_global(batch) -> bool:
    """A batch already on the devices as global arrays (``data.synthetic``), not host arrays."""
    return all(isinstance(x, jax.Array) for x in jax.tree.leaves(batch))


class Trainer:
    """A task resolved for a run: data, mesh, model, optimizer, state shardings and compiled steps.

    ``task`` is a :class:`research.tasks.base.Task` whose config has been checked
    (``research.tasks.create(config)``: known keys, supported knobs, task values)."""

    def __init__(self, task, *, show_progress: bool = True):
        self.task = task
        self.config = config = task.config
        tc = config.train
        self.is_main = jax.process_index() == 0
        self.show_progress = show_progress and self.is_main
        devices = jax.devices()[:1] if task.single_device else None
        self.mesh = mesh_lib.with_model_axis(mesh_lib.make_mesh(devices), tc.model_parallel)
        n_dev = self.mesh.devices.size
        self.cpu_conv = onednn.resolve(tc.cpu_conv, n_dev)
        task.cpu_conv, task.mesh = self.cpu_conv, self.mesh
        self.info = task.setup()
        self.batch_size = int(tc.batch_size)
        self.eval_batch_size = int(tc.eval_batch_size or tc.batch_size)
        if self.batch_size < 1:
            raise ConfigError(f'train.batch_size={tc.batch_size} must be >= 1')
        if self.eval_batch_size < 1:
            raise ConfigError(
                f'train.eval_batch_size={tc.eval_batch_size} must be >= 1 (0 = train.batch_size)'
            )
        mesh_lib.check_batch_size(self.batch_size, self.mesh)
        mesh_lib.check_batch_size(self.eval_batch_size, self.mesh, name='train.eval_batch_size')
        mesh_lib.check_process_slices(self.batch_size, self.mesh)
        mesh_lib.check_process_slices(self.eval_batch_size, self.mesh)
        self.accumulate = self._accumulate_steps(tc, n_dev)
        self.bn_group_size = self._bn_group_size(tc, n_dev)
        self.steps_per_epoch = self.info.num_train // self.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f'train.batch_size={self.batch_size} is larger than the train split ({self.info.num_train} examples)'
            )
        spe = self.steps_per_epoch
        self.total_steps = parse_duration(tc.duration, spe, name='train.duration')
        self.eval_every = parse_duration(tc.eval_every or 0, spe, name='train.eval_every')
        self.ckpt_every = parse_duration(tc.checkpoint_every or 0, spe, name='train.checkpoint_every')
        self.schedule = make_schedule(config.schedule, config.optimizer.lr, self.total_steps, spe)
        self.model = task.build_model(model_dtype(config))
        self.tx = task.make_tx(self.schedule)
        create = functools.partial(task.create_state, self.model, self.tx)
        abstract = jax.eval_shape(create, jax.random.key_data(jax.random.key(0)))
        self.ema_decay = float(tc.ema_decay)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f'train.ema_decay={tc.ema_decay} must be in [0, 1) (0 = off)')
        if self.ema_decay:
            abstract = abstract.replace(ema={'params': abstract.params, 'batch_stats': abstract.batch_stats})
        self.abstract = abstract  # the state's shapes and dtypes (jax.eval_shape: nothing allocated)
        self.state_sharding = mesh_lib.state_sharding(abstract, self.mesh)
        self.num_params = models.count_params(_params_of(abstract), collection=None)
        self.num_frozen, merge_stats = self._frozen(abstract)
        self._init = self.jit(create, out_shardings=self._sharding_without_ema(abstract))
        batch_sh = mesh_lib.batch_sharding(self.mesh)
        repl = mesh_lib.replicated(self.mesh)
        if task.custom_step:
            self._step_fn = task.train_step
        else:
            forward = (
                ghost_bn_forward(self.model.apply, self.mesh, self.bn_group_size)
                if self.bn_group_size
                else plain_forward(self.model.apply)
            )
            self._step_fn = functools.partial(
                loss_step,
                loss_fn=functools.partial(task.loss, forward=forward),
                accumulate_steps=self.accumulate,
                merge_batch_stats=merge_stats,
                ema_decay=self.ema_decay,
            )
        self._step_jit = {}
        self._step_shardings = dict(
            in_shardings=(self.state_sharding, batch_sh), out_shardings=(self.state_sharding, repl)
        )
        self._eval_shardings = dict(in_shardings=(self.state_sharding, batch_sh), out_shardings=repl)
        self._eval = self.jit(task.eval_step, **self._eval_shardings)
        self._eval_fns: dict[Any, Any] = {}
        self.compile_seconds = 0.0

    # -- knobs -----------------------------------------------------------------------------------
    def _accumulate_steps(self, tc: ConfigDict, n_dev: int) -> int:
        k = int(tc.accumulate_steps)
        if k < 1:
            raise ConfigError(f'train.accumulate_steps={tc.accumulate_steps} must be >= 1')
        per_device = self.batch_size // n_dev
        if per_device % k:
            raise ConfigError(
                f'train.accumulate_steps={k} must divide the per-device batch {per_device} '
                f'(train.batch_size={self.batch_size} over {n_dev} devices)'
            )
        return k

    def _bn_group_size(self, tc: ConfigDict, n_dev: int) -> int:
        """``train.bn_group_size`` resolved: 0 (global-batch BN) or a group size dividing the per-device
        (micro-)batch."""
        g = int(tc.bn_group_size)
        if not g:
            return 0
        if self.mesh.axis_names != ('data',):
            raise ConfigError('train.bn_group_size (ghost BatchNorm) needs train.model_parallel=1')
        per_device = self.batch_size // n_dev // self.accumulate
        g = per_device if g == -1 else g
        if g < 1 or per_device % g:
            raise ConfigError(
                f'train.bn_group_size={tc.bn_group_size} must be -1 (per device) or divide the per-device '
                f'batch {per_device} (train.batch_size={self.batch_size} over {n_dev} devices'
                + (f', {self.accumulate} micro-batches' if self.accumulate > 1 else '')
                + ')'
            )
        return g

    def _frozen(self, abstract) -> tuple[int, Any]:
        """(number of frozen parameters, the batch-statistics merge of frozen modules or None)."""
        oc = self.config.optimizer
        if not (oc.freeze or oc.lr_multipliers):
            return 0, None
        params = _params_of(abstract)
        ic = self.config.init
        transfer.check_patterns(params, oc.freeze, oc.lr_multipliers)
        labels = transfer.param_labels(params, oc.freeze, oc.lr_multipliers, ic.exclude, ic.into)
        frozen_count = sum(
            int(math.prod(p.shape))
            for p, lab in zip(jax.tree.leaves(params), jax.tree.leaves(labels))
            if lab == 'frozen'
        )
        frozen = transfer.frozen_modules(labels)
        merge = transfer.keep_frozen_stats(frozen.__contains__) if oc.freeze_batch_stats and frozen else None
        return frozen_count, merge

    def _sharding_without_ema(self, abstract):
        return self.state_sharding.replace(ema={}) if self.ema_decay else self.state_sharding

    # -- compiled functions ----------------------------------------------------------------------
    def jit(self, fn, **kwargs):
        """``jax.jit(fn, **kwargs)`` traced and lowered with this run's CPU convolutions."""
        return onednn.scoped(jax.jit(fn, **kwargs), self.cpu_conv == 'onednn')

    def step_fn(self, num_steps: int = 1):
        """The jitted train step (``num_steps`` steps per call for tasks with ``steps_per_call``)."""
        if num_steps not in self._step_jit:
            fn = self._step_fn
            if self.task.custom_step:
                fn = functools.partial(fn, num_steps=num_steps)
            self._step_jit[num_steps] = self.jit(fn, donate_argnums=(0,), **self._step_shardings)
        return self._step_jit[num_steps]

    def compile(self, state, batch, num_steps: int = 1):
        """Compiles the train step ahead of time for these arguments (timed: ``compile_seconds``)."""
        t0 = time.perf_counter()
        compiled = self.step_fn(num_steps).lower(state, batch).compile()
        self.compile_seconds += time.perf_counter() - t0
        self._step_jit[num_steps] = compiled
        return compiled

    def train_step(self, state, batch, num_steps: int = 1):
        """One jitted call: ``(state, metrics)``; ``batch`` host arrays (this process's slice) or global."""
        return self.step_fn(num_steps)(state, self.to_global(batch))

    def to_global(self, batch):
        return batch if _is_global(batch) else mesh_lib.to_global(batch, mesh_lib.batch_sharding(self.mesh))

    # -- state -----------------------------------------------------------------------------------
    def init_state(self):
        state = self._init(jax.random.key_data(jax.random.key(self.config.seed)))
        if self.ema_decay:  # own buffers (the state is donated): eager copies, same shardings
            state = state.replace(
                ema=jax.tree.map(jnp.copy, {'params': state.params, 'batch_stats': state.batch_stats})
            )
        return state

    def load_pretrained(self, state) -> tuple[Any, str]:
        """``state`` with params/batch stats from ``config.init`` (transfer learning)."""
        ic = self.config.init
        src = transfer.load_pretrained(ic.checkpoint, torchvision=ic.torchvision or self.config.model.name)
        target = {'params': state.params, 'batch_stats': state.batch_stats}
        merged, loaded = transfer.merge_pretrained(jax.device_get(target), src, ic.exclude, into=ic.into)
        merged = jax.device_put(merged, {k: getattr(self.state_sharding, k) for k in merged})
        total = sum(len(jax.tree.leaves(t)) for t in target.values())
        msg = f'initialised {len(loaded)}/{total} tensors from {ic.checkpoint}'
        if ic.into:
            msg += f' into {ic.into!r}'
        if ic.exclude:
            msg += f' (random init: {ic.exclude!r})'
        if self.num_frozen:
            msg += f'; {self.num_frozen:,} of {self.num_params:,} params frozen'
        state = state.replace(params=merged['params'], batch_stats=merged['batch_stats'])
        if self.ema_decay:
            state = state.replace(ema=jax.tree.map(jnp.copy, merged))
        return state, msg

    def epoch(self, step: int) -> float:
        return step / self.steps_per_epoch

    # -- evaluation ------------------------------------------------------------------------------
    def eval_state(self, state):
        """The state evaluations use: with ``train.ema_decay``, the averaged weights."""
        if not self.ema_decay:
            return state
        return state.replace(params=state.ema['params'], batch_stats=state.ema['batch_stats'])

    def evaluate(self, state, split: str | None = None, *, final: bool = False):
        """``(metrics, picture or None)`` of ``split`` (default ``data.eval_split``), by the task."""
        split = str(split or self.config.data.eval_split)
        state = self.eval_state(state)
        batches = (
            self.task.host_batch(b, split)
            for b in self.task.eval_iterator(
                split,
                global_batch_size=self.eval_batch_size,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            )
        )
        return self.task.evaluate(
            state, split, batches, functools.partial(self._run_eval, state), final=final
        )

    def eval_fn(self, fn=None):
        """``fn(state, batch)`` (default the task's ``eval_step``) jitted over the mesh, output replicated."""
        if fn is None:
            return self._eval
        jitted = self._eval_fns.get(fn)
        if jitted is None:
            jitted = self._eval_fns[fn] = self.jit(fn, **self._eval_shardings)
        return jitted

    def _run_eval(self, state, batch, fn=None):
        return self.eval_fn(fn)(state, self.to_global(batch))

    # -- abstract inputs: lowering or jax.export with nothing on the devices ------------------------
    def abstract_state(self):
        """The train state as ``jax.ShapeDtypeStruct`` leaves with :attr:`state_sharding`: the first
        argument :meth:`step_fn` and :meth:`eval_fn` lower or export with (``research.train.export``)."""
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            self.abstract,
            self.state_sharding,
        )

    def abstract_batch(self, split: str | None = None):
        """One global batch as ``jax.ShapeDtypeStruct`` leaves with their shardings: the train stream's
        (``split`` None) or ``split``'s padded eval batch, as the steps receive it. Its shapes are read
        from one batch of the task's iterator (after ``host_batch``); host batches are this process's
        rows, so the global batch has ``process_count`` times as many."""
        if split is None:
            it, split = self.train_iterator(), str(self.config.data.train_split)
        else:
            it = self.task.eval_iterator(
                split,
                global_batch_size=self.eval_batch_size,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            )
        try:
            batch = self.task.host_batch(next(iter(it)), split)
        finally:
            _close(it)
        if _is_global(batch):
            return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), batch)
        sharding, n = mesh_lib.batch_sharding(self.mesh), jax.process_count()
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct((x.shape[0] * n, *x.shape[1:]), x.dtype, sharding=sharding), batch
        )

    def train_iterator(self):
        return self.task.train_iterator(
            seed=int(self.config.seed),
            global_batch_size=self.batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )


def _params_of(state) -> Any:
    return state.params if hasattr(state, 'params') else state.arrays()


# ------------------------------------------------------------------------------------------- the run


def _close(iterator) -> None:
    if hasattr(iterator, 'close'):
        iterator.close()


def _window_add(window: dict[str, float], metrics: dict[str, Any]) -> int:
    """Adds a call's metrics (scalars, or one value per step of a K-step call) to the window; returns
    the number of steps they cover."""
    n = 1
    for k, v in metrics.items():
        v = np.asarray(v, np.float64)
        n = max(v.size, 1)
        window[k] = window.get(k, 0.0) + float(v.sum())
    return n


def _lock(workdir: epath.Path, log) -> workdir_lib.WorkdirLock:
    """The workdir lock, taken by process 0; on multi-host runs its outcome is broadcast, so every
    process stops when the workdir is refused (one line each)."""
    lock = workdir_lib.WorkdirLock(workdir, process_index=jax.process_index(), warn=log)
    error = None
    try:
        lock.acquire()
    except (ConfigError, workdir_lib.WorkdirLockedError, workdir_lib.WorkdirError) as e:
        error = e
    if jax.process_count() > 1:
        refused = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
        if refused and error is None:
            raise workdir_lib.WorkdirLockedError(f'workdir {workdir}: refused on process 0 (see its message)')
    if error is not None:
        raise error
    return lock


def _saved_text(ckpt: ckpt_lib.Checkpointer | None, workdir: epath.Path) -> str:
    """What survives a failure, for its one-line message."""
    try:
        steps = ckpt.all_steps() if ckpt is not None else []
    except Exception:  # noqa: BLE001 - only for the message
        steps = []
    if not steps:
        return 'no checkpoint'
    return f'checkpoint step {steps[-1]} ({workdir / "checkpoints" / str(steps[-1])})'


def run(
    trainer: Trainer,
    workdir: str | epath.PathLike,
    *,
    stop_after_steps: int | None = None,
    allow_config_change: bool = False,
    defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Trains ``trainer``'s task in ``workdir`` (resuming if it holds checkpoints); returns the summary.

    One writer per workdir (``run.lock``, research/train/workdir.py). A relaunch compares its config
    with the saved one: keys that may change on resume pass (``records.RESUMABLE_KEYS``), any other
    change is refused with its diff unless ``allow_config_change`` (then recorded in
    ``config_history.jsonl``); a finished run of the same length prints its summary and changes
    nothing. Resume restores the newest checkpoint that verifies against its checksums (a corrupt one
    is moved aside). ``stop_after_steps`` stops (with a checkpoint) once that step is reached, as a
    preemption would. ``defaults``: the schema's defaults (keys missing from an older config.json)."""
    workdir = epath.Path(workdir)
    log = print if trainer.is_main else (lambda *a, **k: None)
    lock = _lock(workdir, log)
    ckpt = None
    try:
        ckpt = ckpt_lib.Checkpointer(
            workdir,
            keep=trainer.config.train.keep_checkpoints,
            async_save=trainer.config.train.async_checkpoints,
            cleanup_tmp=trainer.is_main,
        )
        return _run(trainer, workdir, ckpt, log, stop_after_steps, allow_config_change, defaults)
    except Exception as e:
        if workdir_lib.io_errno(e) is not None:
            raise workdir_lib.workdir_error(
                e, workdir, doing='writing the run', saved=_saved_text(ckpt, workdir)
            ) from None
        raise
    finally:
        lock.release()


def _run(trainer, workdir, ckpt, log, stop_after_steps, allow_config_change, defaults) -> dict[str, Any]:
    task, config = trainer.task, trainer.config
    tc = config.train
    wall0 = time.perf_counter()
    info = trainer.info
    resolved = to_dict(config)
    resolved['_resolved'] = dict(
        steps_per_epoch=trainer.steps_per_epoch,
        total_steps=trainer.total_steps,
        num_params=trainer.num_params,
        devices=int(trainer.mesh.devices.size),
        processes=jax.process_count(),
        cpu_conv=trainer.cpu_conv,  # train.cpu_conv resolved: what the convolutions ran on
        dataset=info.name,
        num_classes=info.num_classes,
        image_shape=list(info.image_shape),
        **info.extra,
    )
    latest = ckpt.latest_step() if task.checkpoints else None
    saved_config = records.load_config(workdir)
    changes: dict[str, tuple[Any, Any]] = {}
    allowed: dict[str, tuple[Any, Any]] = {}
    if latest is not None and saved_config is not None:
        changes = records.config_changes(saved_config, resolved, defaults=defaults)
        allowed = records.check_config_change(changes, workdir=workdir, allow=allow_config_change)
        done = records.finished_summary(workdir, trainer.total_steps, latest)
        if done is not None:  # a finished run of this length: its summary, and nothing written
            ckpt.close()
            log(records.summary_line(done))
            return done
    state = trainer.init_state()
    initial_params = (
        jax.device_get(_params_of(state)) if latest is not None or config.init.checkpoint else None
    )
    train_it = trainer.train_iterator()
    restored = (
        ckpt.restore_latest(ckpt_lib.abstract_like(state.arrays()), warn=log) if latest is not None else None
    )
    totals = records.RunTotals()
    if restored is not None:
        start = restored.step
        state = state.replace_arrays(restored.state)
        totals = records.RunTotals.from_record(restored.meta.get('totals'))
    else:
        start = 0
        changes, allowed = {}, {}
        if config.init.checkpoint:
            state, msg = trainer.load_pretrained(state)
            log(msg)
    segs = [records.Segment(0, trainer.batch_size, trainer.steps_per_epoch)]
    if saved_config is not None and start:
        segs = [s for s in records.segments(saved_config) if s.start_step < start] or segs
    if trainer.is_main:
        segs = records.write_config(
            workdir,
            resolved,
            step=start,
            batch_size=trainer.batch_size,
            steps_per_epoch=trainer.steps_per_epoch,
            changes=changes,
            allowed=allowed,
        )
    elif changes:
        segs = segs + [records.Segment(start, trainer.batch_size, trainer.steps_per_epoch)]

    def epoch_of(s: int) -> float:
        return records.epoch_at(segs, s)

    if restored is not None:
        train_it.set_state(_data_state(restored.data, segs, start, trainer.batch_size, log))
        log(f'resumed from {ckpt.directory / str(start)} (step {start}, epoch {epoch_of(start):.2f})')
        if allowed:
            log(
                f'config changed on resume (recorded in {workdir / records.HISTORY}): {records.format_changes(allowed)}'
            )
    platform = trainer.mesh.devices.flat[0].platform
    log(
        f'{task.name} | model {task.model_name}: {trainer.num_params:,} params | {task.describe()} | '
        f'{trainer.steps_per_epoch} steps/epoch, {trainer.total_steps} steps | '
        f'{trainer.mesh.devices.size} {platform} device(s)'
        f'{" (oneDNN convolutions)" if trainer.cpu_conv == "onednn" else ""} | workdir {workdir}'
    )
    if trainer.total_steps == 0:
        log(f'train.duration={tc.duration!r}: evaluation only (no training step, no checkpoint)')
    hint = distributed.accelerator_hint() if trainer.is_main else None
    if hint:
        log(hint)

    writer = MetricWriter(workdir, enabled=trainer.is_main, resume_step=start, config=config)
    profiler = ProfilerHook(workdir, config.logging.profile_steps, enabled=trainer.is_main)
    progress = Progress(trainer.total_steps, start, trainer.batch_size, enabled=trainer.show_progress)
    k_steps = max(int(task.steps_per_call), 1)
    stop_at = trainer.total_steps if stop_after_steps is None else min(stop_after_steps, trainer.total_steps)
    step, last_saved = start, (start or None)
    pending: tuple[int, Any] | None = None
    window: dict[str, float] = {}
    window_n, window_t0, train_time, timed_steps = 0, time.perf_counter(), 0.0, 0
    timed_n = 0  # steps dispatched since window_t0 (the throughput's numerator)
    eval_rows: list[dict[str, Any]] = []

    def run_totals() -> records.RunTotals:
        """This run's totals so far: the saved segments' plus this segment's."""
        return totals.plus(time.perf_counter() - wall0, train_time, timed_steps * trainer.batch_size)

    def drain() -> None:
        """Reads the pending call's metrics (one call late): NaN check, into the window."""
        nonlocal pending, window_n
        if pending is None:
            return
        s, m = pending
        pending = None
        m = jax.device_get(m)
        values = [m['loss']] if 'loss' in m else list(m.values())
        if not all(np.all(np.isfinite(np.asarray(v, np.float64))) for v in values):
            loss = float(np.mean(m['loss'])) if 'loss' in m else float('nan')
            good = ckpt.last_good(s, reference_params=initial_params)
            raise NonFiniteLossError(
                f'loss is {loss} at step {s} (epoch {epoch_of(s):.2f}); stopping. '
                + good.message(ckpt.directory, lr=config.optimizer.lr)
            )
        window_n += _window_add(window, m)

    def save(s: int) -> None:
        nonlocal last_saved
        drain()
        if task.checkpoints and s > 0:
            meta = {
                'step': s,
                'epoch': epoch_of(s),
                'model': task.model_name,
                'task': task.name,
                'totals': run_totals().as_record(),
            }
            ckpt.save(s, state.arrays(), train_it.get_state(), meta)
        last_saved = s

    def evaluate(s: int, final: bool = False) -> dict[str, Any]:
        res, picture = trainer.evaluate(state, final=final)
        res['epoch'] = epoch_of(s)
        writer.write(str(config.data.eval_split), s, res)
        if trainer.is_main and picture is not None:
            path = workdir / picture.name / f'step_{s:06d}.png'
            path.parent.mkdir(parents=True, exist_ok=True)
            picture.write(path)
            writer.image(f'{picture.name}/{config.data.eval_split}', s, path)
        eval_rows.append({'step': s, **res})
        progress.message(f'eval @ step {s} (epoch {res["epoch"]:.2f}): {task.eval_message(res)}')
        return res

    def crossed(prev: int, s: int, every: int) -> bool:
        return bool(every) and s // every > prev // every

    try:
        while step < stop_at:
            num = min(k_steps, stop_at - step)
            batch = trainer.to_global(task.host_batch(next(train_it), str(config.data.train_split)))
            profiler.step(step, block=state)
            fn = trainer._step_jit.get(num)
            if fn is None or hasattr(fn, 'lower'):  # compile ahead of time: compile time is not step time
                fn = trainer.compile(state, batch, num)
                window_t0, timed_n = time.perf_counter(), 0
                progress.reset_clock(step)
            state, metrics = fn(state, batch)
            prev, step = step, step + num
            timed_n += num
            drain()  # the previous call's metrics, while this one runs
            pending = (step, metrics)
            if crossed(prev, step, tc.log_every_steps) or step == stop_at:
                drain()
                dt = time.perf_counter() - window_t0
                train_time += dt
                timed_steps += timed_n
                row = {k: v / max(window_n, 1) for k, v in window.items()}
                row.update(
                    epoch=epoch_of(step),
                    lr=float(trainer.schedule(step - 1)),
                    images_per_sec=timed_n * trainer.batch_size / dt if dt > 0 and timed_n else float('nan'),
                )
                writer.write('train', step, row)
                progress.update(step, {k: row[k] for k in task.progress_keys if k in row} | {'lr': row['lr']})
                window, window_n, window_t0, timed_n = {}, 0, time.perf_counter(), 0
            if crossed(prev, step, trainer.eval_every) and step < trainer.total_steps:
                drain()
                train_time += time.perf_counter() - window_t0  # the evaluation is not train time
                timed_steps += timed_n
                evaluate(step)
                window_t0, timed_n = time.perf_counter(), 0
                progress.reset_clock(step)
            if crossed(prev, step, trainer.ckpt_every) and step != stop_at:
                save(step)
        drain()
        profiler.close(block=state)
        if last_saved != step:
            save(step)
    except KeyboardInterrupt:
        progress.close()
        profiler.close()
        if pending is not None or last_saved != step:
            try:
                save(step)
                log(f'interrupted at step {step}: checkpoint saved; relaunch the same command to resume')
            except NonFiniteLossError:
                pass
        ckpt.close()
        writer.close()
        _close(train_it)
        raise
    except BaseException:
        progress.close()
        profiler.close()
        ckpt.close()
        writer.close()
        _close(train_it)
        raise
    progress.close()
    ckpt.close()
    _close(train_it)  # worker processes / prefetch threads of the input pipeline

    summary: dict[str, Any] = {
        'task': task.name,
        'model': task.model_name,
        'dataset': info.name,
        'num_params': trainer.num_params,
        'step': step,
        'total_steps': trainer.total_steps,
        'epoch': epoch_of(step),
        'complete': step >= trainer.total_steps,
        'batch_size': trainer.batch_size,
        'devices': int(trainer.mesh.devices.size),
        'processes': jax.process_count(),
        'platform': platform,
        'cpu_conv': trainer.cpu_conv,
        'jax': jax.__version__,
        'train_time_s': train_time,  # this launch's timed steps (totals: every launch of the run)
        'compile_time_s': trainer.compile_seconds,
    }
    if step >= trainer.total_steps:
        res = evaluate(step, final=True)
        summary['final'] = {str(config.data.eval_split): res}
        best_key = task.best_metric
        evals = [
            r
            for r in read_metrics(workdir, str(config.data.eval_split))
            if isinstance(r.get(best_key), float)
        ] or [r for r in eval_rows if best_key in r]
        if evals:
            best = max(evals, key=lambda r: r[best_key])
            summary['best'] = {best_key: best[best_key], 'step': best['step']}
        if trainer.is_main:
            task.finish(trainer.eval_state(state), workdir)
    summary.update(task.summary(state, summary))
    final_totals = run_totals()
    summary.update(
        images_per_sec=final_totals.images_per_sec,  # over every launch of the run
        wall_time_s=final_totals.wall_time_s,
        totals=final_totals.as_record(),
        workdir=str(workdir),
    )
    writer.close()
    if trainer.is_main:
        records.write_summary(workdir, summary)
        if 'final' in summary:
            ips = summary['images_per_sec']
            log(
                f'done: {task.model_name} on {info.name} | {step} steps ({epoch_of(step):.1f} epochs) in '
                f'{format_seconds(summary["wall_time_s"])} | {task.done_message(res)}'
                + (f' | {ips:.0f} train img/s' if ips else '')
                + f' | workdir {workdir}'
            )
        else:
            log(
                f'stopped at step {step}/{trainer.total_steps}; checkpoint in {ckpt.directory}; '
                'relaunch the same command to resume'
            )
    return summary


def _data_state(saved: Any, segs: list[records.Segment], start: int, batch_size: int, log) -> Any:
    """The data-iterator state to resume with: as saved, except after an allowed batch-size change,
    where the stream continues at the examples seen so far (in batches of the new size)."""
    state = ckpt_lib.from_jsonable(saved)
    if len(segs) < 2 or segs[-1].batch_size == segs[-2].batch_size:
        return state
    seen = records.examples_at(segs, start)
    if isinstance(state, dict) and 'next_index' in state:
        index, extra = divmod(seen, batch_size)
        log(
            f'train.batch_size changed to {batch_size}: the data stream resumes at example {seen} '
            f'(batch {index} of the new size' + (f'; {extra} examples are seen twice)' if extra else ')')
        )
        return {**state, 'next_index': int(index)}
    log(f'train.batch_size changed to {batch_size}: the data stream resumes at its saved position')
    return state
