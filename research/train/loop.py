"""``train_and_evaluate(config, workdir)``: the whole run, resumable from ``workdir``.

One code path for one device, many devices and many hosts: the train step is
``jax.jit``-compiled over a ``('data',)`` mesh with the batch sharded and the
state replicated (so BatchNorm statistics are over the global batch), and the
state buffers are donated. Knobs: ``train.bn_group_size`` (ghost BatchNorm through
``jax.shard_map``), ``train.precision`` (bfloat16 compute, float32 params/statistics/loss),
``train.model_parallel`` (a ``('data', 'model')`` mesh with FSDP-sharded parameters). Checkpoints (train state + data-iterator state) are
written every ``train.checkpoint_every`` and at the end; a relaunch with the
same ``workdir`` continues from the newest one to the same result as an
uninterrupted run. A non-finite loss stops the run with :class:`NonFiniteLossError`
before any checkpoint of the bad state is written.
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from research import data as data_lib
from research import models
from research.config import parse_duration, to_dict, validate_config
from research.data import device_augment
from research.kernels import onednn
from research.train import checkpoint as ckpt_lib
from research.train import mesh as mesh_lib
from research.train import transfer
from research.train.optim import make_optimizer, make_schedule
from research.train.reporting import MetricWriter, Progress, format_seconds, read_metrics
from research.train.state import TrainState, create_train_state, eval_step, ghost_bn_forward, train_step


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; the run stopped and the last good checkpoint was kept."""


def model_kwargs(config: ConfigDict) -> dict[str, Any]:
    return {k: v for k, v in to_dict(config.model).items() if k != "name"}


PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config: ConfigDict):
    """The activation dtype of ``train.precision`` (None for float32: the model's own default)."""
    precision = str(config.train.get("precision", "float32")) if "train" in config else "float32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown train.precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    return None if precision == "float32" else PRECISIONS[precision]


def build_model(config: ConfigDict, num_classes: int):
    """The registered model ``config.model.name`` with the other ``config.model`` keys as arguments.

    ``train.precision='bfloat16'`` sets the model's ``dtype`` (computation dtype; parameters
    stay float32, BatchNorm reduces in float32, the models return float32 logits)."""
    kwargs = model_kwargs(config)
    kwargs.setdefault("num_classes", num_classes)
    dtype = compute_dtype(config)
    if dtype is not None:
        if "dtype" in kwargs:
            raise ValueError(
                f"train.precision={config.train.precision!r} and model.dtype={kwargs['dtype']!r} both set "
                "the compute dtype; set only one"
            )
        if "dtype" not in models.accepted_kwargs(config.model.name):
            raise ValueError(
                f"train.precision={config.train.precision!r} needs a model with a `dtype` field; "
                f"'{config.model.name}' has none"
            )
        kwargs["dtype"] = dtype
    return models.create(config.model.name, **kwargs)


def _on_device(step, aug: device_augment.DeviceAugment):
    """``step(state, batch)`` on a ``data.on_device`` batch: augmented and normalised first, in the step."""

    def wrapped(state, batch):
        return step(state, device_augment.prepare_batch(batch, aug))

    return wrapped


class SyntheticBatches:
    """``data.synthetic``: one random global batch (standard-normal images, uniform labels) made on the
    devices once, sharded as the pipeline's batches, and yielded at every step: the trainer's step
    without any input pipeline or host-to-device copy, the baseline ``benchmarks/input_pipeline.py``
    measures the real pipeline against. Same iterator protocol as the grain iterator (its state is a
    marker, so a synthetic run resumes as one)."""

    STATE = {"synthetic": True}

    def __init__(self, image_shape, num_classes: int, global_batch_size: int, sharding, seed: int):
        shape = (int(global_batch_size), *image_shape)

        def make(key):
            ki, kl = jax.random.split(key)
            return {
                "image": jax.random.normal(ki, shape, jnp.float32),
                "label": jax.random.randint(kl, shape[:1], 0, num_classes, jnp.int32),
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
                f"data.synthetic=True cannot resume the data-iterator state {state!r} of a real run"
            )


class Trainer:
    """Holds what a run resolves once (data, model, mesh, compiled steps); see :func:`train_and_evaluate`."""

    def __init__(self, config: ConfigDict, *, show_progress: bool = True):
        validate_config(config)
        self.config = config
        self.is_main = jax.process_index() == 0
        tc = config.train
        self.info = data_lib.get_dataset_info(config.data)
        self.model = build_model(config, self.info.num_classes)
        self.mesh = mesh_lib.with_model_axis(mesh_lib.make_mesh(), tc.model_parallel)
        self.batch_size = tc.batch_size
        self.eval_batch_size = tc.eval_batch_size or tc.batch_size
        mesh_lib.check_batch_size(self.batch_size, self.mesh)
        mesh_lib.check_batch_size(self.eval_batch_size, self.mesh, name="train.eval_batch_size")
        mesh_lib.check_process_slices(self.batch_size, self.mesh)
        mesh_lib.check_process_slices(self.eval_batch_size, self.mesh)
        self.bn_group_size = self._bn_group_size(tc)
        self.cpu_conv = onednn.resolve(tc.cpu_conv, self.mesh.devices.size)
        self.steps_per_epoch = data_lib.steps_per_epoch(config.data, self.batch_size)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"train.batch_size={self.batch_size} is larger than the train split "
                f"({self.info.num_examples.get(config.data.train_split)} examples)"
            )
        spe = self.steps_per_epoch
        self.total_steps = parse_duration(tc.duration, spe, name="train.duration")
        self.eval_every = parse_duration(tc.eval_every or 0, spe, name="train.eval_every")
        self.ckpt_every = parse_duration(tc.checkpoint_every or 0, spe, name="train.checkpoint_every")
        self.schedule = make_schedule(config.schedule, config.optimizer.lr, self.total_steps, spe)
        oc = config.optimizer
        self.tx = make_optimizer(oc, self.schedule, init_exclude=config.init.exclude)
        self.show_progress = show_progress and self.is_main

        repl = mesh_lib.replicated(self.mesh)
        sample = jnp.zeros((1, *self.info.image_shape), jnp.float32)
        init = functools.partial(create_train_state, self.model, self.tx, sample_input=sample)
        abstract = jax.eval_shape(init, jax.random.key_data(jax.random.key(0)))
        self.state_sharding = mesh_lib.state_sharding(abstract, self.mesh)
        on = self.cpu_conv == "onednn"  # the steps are traced with the convolutions resolved here
        self._init = onednn.scoped(jax.jit(init, out_shardings=self.state_sharding), on)
        self.num_params = models.count_params(abstract.params, collection=None)
        merge_stats = None
        if oc.freeze or oc.lr_multipliers:
            transfer.check_patterns(abstract.params, oc.freeze, oc.lr_multipliers)
            labels = transfer.param_labels(abstract.params, oc.freeze, oc.lr_multipliers, config.init.exclude)
            self.num_frozen = sum(
                int(math.prod(p.shape))
                for p, lab in zip(jax.tree.leaves(abstract.params), jax.tree.leaves(labels))
                if lab == "frozen"
            )
            frozen = transfer.frozen_modules(labels)
            if oc.freeze_batch_stats and frozen:
                merge_stats = transfer.keep_frozen_stats(frozen.__contains__)
        else:
            self.num_frozen = 0
        forward = (
            ghost_bn_forward(self.model.apply, self.mesh, self.bn_group_size) if self.bn_group_size else None
        )
        step_fn = functools.partial(
            train_step, label_smoothing=tc.label_smoothing, merge_batch_stats=merge_stats, forward=forward
        )
        eval_fn = eval_step
        # data.on_device: uint8 batches + augmentation draws, augmented and normalised inside the step.
        self.on_device = bool(config.data.get("on_device", False)) and not config.data.get("synthetic", False)
        if self.on_device:
            aug = device_augment.DeviceAugment.from_config(config.data, self.info.image_shape[-1])
            step_fn = _on_device(step_fn, aug)
            eval_fn = _on_device(eval_step, aug)
        self._train_step = onednn.scoped(
            jax.jit(
                step_fn,
                in_shardings=(self.state_sharding, mesh_lib.batch_sharding(self.mesh)),
                out_shardings=(self.state_sharding, repl),
                donate_argnums=(0,),
            ),
            on,
        )
        self._eval_step = onednn.scoped(
            jax.jit(
                eval_fn,
                in_shardings=(self.state_sharding, mesh_lib.batch_sharding(self.mesh)),
                out_shardings=repl,
            ),
            on,
        )

    def _bn_group_size(self, tc: ConfigDict) -> int:
        """``train.bn_group_size`` resolved: 0 (global-batch BN) or a group size dividing the per-device batch."""
        g = int(tc.bn_group_size)
        if not g:
            return 0
        if self.mesh.axis_names != ("data",):
            raise ValueError("train.bn_group_size (ghost BatchNorm) needs train.model_parallel=1")
        per_device = self.batch_size // self.mesh.devices.size
        g = per_device if g == -1 else g
        if g < 1 or per_device % g:
            raise ValueError(
                f"train.bn_group_size={tc.bn_group_size} must be -1 (per device) or divide the per-device "
                f"batch {per_device} (train.batch_size={self.batch_size} over {self.mesh.devices.size} devices)"
            )
        return g

    # -- state -----------------------------------------------------------------------------------
    def init_state(self) -> TrainState:
        rng = jax.random.key_data(jax.random.key(self.config.seed))
        return self._init(rng)

    def load_pretrained(self, state: TrainState) -> tuple[TrainState, str]:
        """``state`` with params/batch stats from ``config.init`` (transfer learning)."""
        ic = self.config.init
        src = transfer.load_pretrained(ic.checkpoint, torchvision=ic.torchvision or self.config.model.name)
        target = {"params": state.params, "batch_stats": state.batch_stats}
        merged, loaded = transfer.merge_pretrained(jax.device_get(target), src, ic.exclude)
        merged = jax.device_put(merged, {k: getattr(self.state_sharding, k) for k in merged})
        total = sum(len(jax.tree.leaves(t)) for t in target.values())
        msg = f"initialised {len(loaded)}/{total} tensors from {ic.checkpoint}"
        if ic.exclude:
            msg += f" (random init: {ic.exclude!r})"
        if self.num_frozen:
            msg += f"; {self.num_frozen:,} of {self.num_params:,} params frozen"
        return state.replace(params=merged["params"], batch_stats=merged["batch_stats"]), msg

    def epoch(self, step: int) -> float:
        return step / self.steps_per_epoch

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, state: TrainState, split: str | None = None) -> dict[str, float]:
        """Exact metrics over the whole split (padded final batch masked out)."""
        split = split or self.config.data.eval_split
        it = data_lib.make_eval_iterator(
            self.config.data,
            split,
            global_batch_size=self.eval_batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        sharding = mesh_lib.batch_sharding(self.mesh)
        totals = None
        for batch in it:
            out = self._eval_step(state, mesh_lib.to_global(batch, sharding))
            totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
        totals = jax.device_get(totals)
        n = float(totals["count"])
        expected = self.info.num_examples.get(split)
        if expected is not None and int(n) != expected:
            raise RuntimeError(f"evaluation on '{split}' counted {int(n)} examples, the split has {expected}")
        return {
            "loss": float(totals["loss"]) / n,
            "top1": float(totals["top1"]) / n,
            "top5": float(totals["top5"]) / n,
            "count": int(n),
        }


def _check_finite(step: int, metrics: dict[str, Any], trainer: Trainer, ckpt: ckpt_lib.Checkpointer) -> None:
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
        ckpt.wait()
        last = ckpt.latest_step()
        where = (
            f"the last good checkpoint is step {last} in {ckpt.directory}"
            if last is not None
            else "no checkpoint had been written yet"
        )
        raise NonFiniteLossError(
            f"loss is {loss} at step {step} (epoch {trainer.epoch(step):.2f}); stopping. {where}. "
            f"Try a lower optimizer.lr (now {trainer.config.optimizer.lr}) or a warm-up."
        )


def _check_same_run(workdir: Path, config: ConfigDict) -> None:
    saved = workdir / "config.json"
    if not saved.exists():
        return
    old = json.loads(saved.read_text())
    new = to_dict(config)
    defaults = data_lib.data_config_defaults()
    for section, keys in (("model", None), ("data", ("name", "path", "image_size", "synthetic"))):
        a, b = old.get(section, {}), new.get(section, {})
        if keys is not None:  # a key absent from an older config.json has its default
            a, b = ({k: d.get(k, defaults[k]) for k in keys} for d in (a, b))
        if a != b:
            diff = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
            raise ValueError(
                f"workdir {workdir} holds a run of a different {section} config "
                f"(saved vs now: {diff}); use another --workdir to start a new run"
            )


def train_and_evaluate(
    config: ConfigDict,
    workdir: str | Path,
    *,
    stop_after_steps: int | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints) and returns the summary.

    ``stop_after_steps`` stops (with a checkpoint) once that step is reached, as a
    preemption would; relaunching continues the run.
    """
    workdir = Path(workdir)
    wall0 = time.perf_counter()
    trainer = Trainer(config, show_progress=show_progress)
    tc = config.train
    if trainer.is_main:
        workdir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_lib.Checkpointer(workdir, keep=tc.keep_checkpoints, async_save=tc.async_checkpoints)
    state = trainer.init_state()
    sharding = mesh_lib.batch_sharding(trainer.mesh)
    synthetic = bool(config.data.get("synthetic", False))
    if synthetic:
        train_it = SyntheticBatches(
            trainer.info.image_shape, trainer.info.num_classes, trainer.batch_size, sharding, config.seed
        )
    else:
        train_it = data_lib.make_train_iterator(
            config.data,
            seed=config.seed,
            global_batch_size=trainer.batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    start = ckpt.latest_step()
    log = print if trainer.is_main else (lambda *a, **k: None)
    if start is not None:
        _check_same_run(workdir, config)
        arrays, data_state, _ = ckpt.restore(start, ckpt_lib.abstract_like(state.arrays()))
        state = state.replace_arrays(arrays)
        train_it.set_state(ckpt_lib.from_jsonable(data_state))
        log(f"resumed from {ckpt.directory / str(start)} (step {start}, epoch {trainer.epoch(start):.2f})")
    elif config.init.checkpoint:
        state, msg = trainer.load_pretrained(state)
        log(msg)
    start = start or 0
    if trainer.is_main:
        resolved = to_dict(config)
        resolved["_resolved"] = dict(
            steps_per_epoch=trainer.steps_per_epoch,
            total_steps=trainer.total_steps,
            num_params=trainer.num_params,
            devices=jax.device_count(),
            processes=jax.process_count(),
            cpu_conv=trainer.cpu_conv,  # train.cpu_conv resolved: what the convolutions ran on
            dataset=trainer.info.name,
            num_classes=trainer.info.num_classes,
            image_shape=list(trainer.info.image_shape),
        )
        (workdir / "config.json").write_text(json.dumps(resolved, indent=2, default=str))
    log(
        f"model {config.model.name}: {trainer.num_params:,} params | data {trainer.info.name} "
        f"{trainer.info.num_examples} | {trainer.steps_per_epoch} steps/epoch, {trainer.total_steps} steps | "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)"
        f"{' (oneDNN convolutions)' if trainer.cpu_conv == 'onednn' else ''} | workdir {workdir}"
    )
    if synthetic:
        log("data.synthetic: training on one random batch kept on the devices (no input pipeline)")
    elif trainer.on_device:
        log("data.on_device: uint8 batches; augmentation and normalisation run inside the jitted step")

    writer = MetricWriter(workdir, enabled=trainer.is_main, resume_step=start)
    progress = Progress(trainer.total_steps, start, trainer.batch_size, enabled=trainer.show_progress)
    history: list[dict[str, Any]] = []
    step = start
    pending: tuple[int, Any] | None = None
    window: dict[str, float] = {}
    window_n, untimed, window_t0, train_time, train_steps = 0, 0, time.perf_counter(), 0.0, 0
    compiled = False
    last_saved = start if start else None
    stop_at = trainer.total_steps if stop_after_steps is None else min(stop_after_steps, trainer.total_steps)

    def drain() -> None:
        nonlocal pending, window_n
        if pending is None:
            return
        s, m = pending
        pending = None
        m = jax.device_get(m)
        _check_finite(s, m, trainer, ckpt)
        for k, v in m.items():
            window[k] = window.get(k, 0.0) + float(v)
        window_n += 1

    def save(s: int) -> None:
        nonlocal last_saved
        drain()
        ckpt.save(
            s,
            state.arrays(),
            train_it.get_state(),
            {"step": s, "epoch": trainer.epoch(s), "model": config.model.name},
        )
        last_saved = s

    try:
        while step < stop_at:
            batch = next(train_it) if synthetic else mesh_lib.to_global(next(train_it), sharding)
            state, metrics = trainer._train_step(state, batch)
            step += 1
            drain()  # the previous step's metrics, while this one runs
            pending = (step, metrics)
            if not compiled:  # the first step compiles: keep its metrics, not its time
                drain()
                compiled = True
                untimed, window_t0 = window_n, time.perf_counter()
                progress.reset_clock(step)
            if step % tc.log_every_steps == 0 or step == stop_at:
                drain()
                dt = time.perf_counter() - window_t0
                timed = window_n - untimed
                train_time += dt
                train_steps += timed
                row = {k: v / max(window_n, 1) for k, v in window.items()}
                row.update(
                    epoch=trainer.epoch(step),
                    lr=float(trainer.schedule(step - 1)),
                    images_per_sec=timed * trainer.batch_size / dt if dt > 0 and timed else float("nan"),
                )
                writer.write("train", step, row)
                progress.update(step, {"loss": row["loss"], "top1": row["top1"], "lr": row["lr"]})
                window, window_n, untimed, window_t0 = {}, 0, 0, time.perf_counter()
            if trainer.eval_every and step % trainer.eval_every == 0 and step != trainer.total_steps:
                drain()
                res = trainer.evaluate(state)
                res["epoch"] = trainer.epoch(step)
                writer.write(config.data.eval_split, step, res)
                history.append({"step": step, **res})
                progress.message(
                    f"eval @ step {step} (epoch {res['epoch']:.2f}): loss {res['loss']:.4f} "
                    f"top1 {100 * res['top1']:.2f}% top5 {100 * res['top5']:.2f}%"
                )
                train_time += time.perf_counter() - window_t0  # close the timed part of the window
                train_steps += window_n - untimed
                untimed, window_t0 = window_n, time.perf_counter()
                progress.reset_clock(step)
            if trainer.ckpt_every and step % trainer.ckpt_every == 0 and step != stop_at:
                save(step)
        drain()
        if last_saved != step:
            save(step)
    except KeyboardInterrupt:
        progress.close()
        if pending is not None or last_saved != step:
            try:
                save(step)
                log(f"interrupted at step {step}: checkpoint saved; relaunch the same command to resume")
            except NonFiniteLossError:
                pass
        ckpt.close()
        raise
    except BaseException:
        progress.close()
        ckpt.close()
        writer.close()
        raise
    progress.close()
    ckpt.close()

    summary: dict[str, Any] = {
        "model": config.model.name,
        "dataset": trainer.info.name,
        "num_params": trainer.num_params,
        "step": step,
        "total_steps": trainer.total_steps,
        "epoch": trainer.epoch(step),
        "complete": step >= trainer.total_steps,
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
        "jax": jax.__version__,
        "synthetic_data": synthetic,
        "on_device_augment": trainer.on_device,
        "images_per_sec": train_steps * trainer.batch_size / train_time if train_time > 0 else None,
        "wall_time_s": time.perf_counter() - wall0,
        "workdir": str(workdir),
    }
    if step >= trainer.total_steps:
        res = trainer.evaluate(state)
        res["epoch"] = trainer.epoch(step)
        writer.write(config.data.eval_split, step, res)
        history.append({"step": step, **res})
        summary["final"] = {config.data.eval_split: res}
        evals = [r for r in _read_evals(workdir, config.data.eval_split)] or history
        best = max(evals, key=lambda r: r["top1"])
        summary["best"] = {"top1": best["top1"], "step": best["step"]}
    writer.close()
    if trainer.is_main:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
        if "final" in summary:
            r = summary["final"][config.data.eval_split]
            ips = summary["images_per_sec"]
            log(
                f"done: {config.model.name} on {trainer.info.name} | {step} steps ({trainer.epoch(step):.1f} epochs) in "
                f"{format_seconds(summary['wall_time_s'])} | {config.data.eval_split} top1 {100 * r['top1']:.2f}% "
                f"top5 {100 * r['top5']:.2f}% loss {r['loss']:.4f} | "
                f"{ips:.0f} train img/s | workdir {workdir}"
                if ips
                else f"done: {config.model.name} | {config.data.eval_split} top1 {100 * r['top1']:.2f}% | workdir {workdir}"
            )
        else:
            log(
                f"stopped at step {step}/{trainer.total_steps}; checkpoint in {ckpt.directory}; "
                "relaunch the same command to resume"
            )
    return summary


def _read_evals(workdir: Path, split: str) -> list[dict[str, Any]]:
    return [r for r in read_metrics(workdir, split) if isinstance(r.get("top1"), float)]
