"""``config.task == 'segmentation'``: train a registered segmentation model, resumable from ``workdir``.

Reuses the classifier's machinery (``research.train``): ``TrainState``, optimizers and schedules,
the ``('data',)`` mesh with the batch sharded and the state replicated and donated, orbax
checkpoints of the state and the data iterator (a relaunch continues bit for bit), and the
``MetricWriter`` / ``Progress`` reporting. Only the steps and the evaluation differ:

- ``seg_train_step``: per-pixel CE with ignore label (+ optional Dice, + auxiliary head loss
  for models that return ``(logits, {'aux': ...})`` when called with ``return_aux=True``);
- ``seg_eval_step``: a [K, K] confusion matrix summed exactly over the split (padded examples
  masked, ignore pixels skipped), from which pixel accuracy, per-class IoU and mIoU follow.

Each evaluation writes ``miou`` etc. to ``metrics.jsonl`` and ``viz/step_NNNNNN.png`` (input |
ground truth | prediction) to the workdir.
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
import numpy as np
import optax

from research import models
from research.config import parse_duration, to_dict, validate_config
from research.segmentation import data as seg_data
from research.segmentation import viz as seg_viz
from research.segmentation.losses import (
    IGNORE_LABEL,
    median_frequency_weights,
    pixel_cross_entropy,
    segmentation_loss,
)
from research.segmentation.metrics import confusion_matrix, metrics_from_confusion
from research.train import checkpoint as ckpt_lib
from research.train import mesh as mesh_lib
from research.train.loop import NonFiniteLossError, _check_same_run
from research.train.optim import make_optimizer, make_schedule
from research.train.reporting import MetricWriter, Progress, format_seconds
from research.train.state import TrainState, create_train_state


def _has_aux(model, sample: jax.Array) -> bool:
    """Whether ``model(x, return_aux=True)`` returns ``(logits, {'aux': ...})`` (shape-only trace)."""
    import inspect

    if "return_aux" not in inspect.signature(type(model).__call__).parameters:
        return False
    try:
        out = jax.eval_shape(
            lambda x: model.init_with_output(jax.random.key(0), x, train=False, return_aux=True)[0], sample
        )
    except Exception:  # pylint: disable=broad-except  # e.g. 'UNet has no auxiliary head'
        return False
    return isinstance(out, tuple) and len(out) == 2 and "aux" in out[1]


def seg_train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    ce_weight: float = 1.0,
    dice_weight: float = 0.0,
    aux_weight: float = 0.0,
    class_weights: tuple[float, ...] | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a dense-label batch; returns the new state and train metrics."""
    step_rng = jax.random.fold_in(state.rng, state.step)
    labels = batch["label"]
    cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)

    def loss_fn(params):
        kw = {"return_aux": True} if aux_weight else {}
        out, new_vars = state.apply_fn(
            state.variables(params), batch["image"], train=True, mutable=["batch_stats"],
            rngs={"dropout": step_rng}, **kw,
        )  # fmt: skip
        logits, extras = out if aux_weight else (out, {})
        lw = dict(ce_weight=ce_weight, dice_weight=dice_weight, class_weights=cw)
        loss = segmentation_loss(logits, labels, **lw)
        if aux_weight:
            loss = loss + aux_weight * segmentation_loss(extras["aux"], labels, **lw)
        return loss, (logits, new_vars)

    (loss, (logits, new_vars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    valid = (labels != IGNORE_LABEL).astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32) * valid
    metrics = {
        "loss": loss,
        "pixel_acc": correct.sum() / jnp.maximum(valid.sum(), 1.0),
        "grad_norm": optax.tree.norm(grads),
    }
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
        batch_stats=new_vars.get("batch_stats", state.batch_stats),
    )
    return new_state, metrics


def seg_eval_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    num_classes: int,
    crf: dict[str, Any] | None = None,
    mean: tuple[float, ...] = (0.0,),
    std: tuple[float, ...] = (1.0,),
) -> dict[str, jax.Array]:
    """Sums over the real examples (``mask``) of a padded batch: confusion matrix, CE sum, pixels.

    ``crf`` (keyword arguments of :func:`research.segmentation.crf.dense_crf`): also the confusion
    matrix of the dense-CRF refined predictions (``crf_confusion``), the reference image being the
    un-normalised input (``x * std + mean``) in 0..255.
    """
    logits = state.apply_fn(state.variables(), batch["image"], train=False)
    weights = jnp.broadcast_to(batch["mask"][:, None, None], batch["label"].shape).astype(jnp.float32)
    ce_sum, count = pixel_cross_entropy(logits, batch["label"], weights=weights)
    preds = jnp.argmax(logits, -1)
    out = {
        "confusion": confusion_matrix(preds, batch["label"], num_classes, weights=weights),
        "ce_sum": ce_sum,
        "pixels": count,
    }
    if crf is not None:
        from research.segmentation.crf import dense_crf

        image = (batch["image"] * jnp.asarray(std) + jnp.asarray(mean)) * 255.0
        q = dense_crf(logits, image, **crf)
        out["crf_confusion"] = confusion_matrix(
            jnp.argmax(q, -1), batch["label"], num_classes, weights=weights
        )
    return out


class _InitWithAux:
    """``model`` whose ``init`` also creates the auxiliary head (``return_aux=True``)."""

    def __init__(self, model):
        self.model, self.apply = model, model.apply

    def init(self, rngs, x, train: bool = False):
        return self.model.init(rngs, x, train=train, return_aux=True)


class SegTrainer:
    """What a segmentation run resolves once: data, model, mesh, compiled steps."""

    def __init__(self, config):
        validate_config(config)
        self.config = config
        self.is_main = jax.process_index() == 0
        tc, sc = config.train, config.seg
        self.info = seg_data.get_seg_info(config.data, sc)
        kwargs = {k: v for k, v in to_dict(config.model).items() if k != "name"}
        kwargs.setdefault("num_classes", self.info.num_classes)
        self.model = models.create(config.model.name, **kwargs)
        self.mesh = mesh_lib.make_mesh()
        self.batch_size = tc.batch_size
        self.eval_batch_size = tc.eval_batch_size or tc.batch_size
        mesh_lib.check_batch_size(self.batch_size, self.mesh)
        mesh_lib.check_batch_size(self.eval_batch_size, self.mesh, name="train.eval_batch_size")
        n_train = self.info.num_examples[config.data.train_split]
        self.steps_per_epoch = n_train // self.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"train.batch_size={self.batch_size} is larger than the train split ({n_train})")
        spe = self.steps_per_epoch
        self.total_steps = parse_duration(tc.duration, spe, name="train.duration")
        self.eval_every = parse_duration(tc.eval_every or 0, spe, name="train.eval_every")
        self.ckpt_every = parse_duration(tc.checkpoint_every or 0, spe, name="train.checkpoint_every")
        self.schedule = make_schedule(config.schedule, config.optimizer.lr, self.total_steps, spe)
        self.tx = make_optimizer(config.optimizer, self.schedule)
        repl = mesh_lib.replicated(self.mesh)
        sample = jnp.zeros((1, *self.info.image_shape), jnp.float32)
        aux = float(sc.aux_weight) if sc.aux_weight and _has_aux(self.model, sample) else 0.0
        self.class_weights = self._class_weights(sc.class_balance)
        init_model = _InitWithAux(self.model) if aux else self.model
        init = functools.partial(create_train_state, init_model, self.tx, sample_input=sample)
        abstract = jax.eval_shape(init, jax.random.key_data(jax.random.key(0)))
        self.state_sharding = jax.tree.map(lambda _: repl, abstract)
        self._init = jax.jit(init, out_shardings=self.state_sharding)
        self.num_params = models.count_params(abstract.params, collection=None)
        batch_sh = mesh_lib.batch_sharding(self.mesh)
        self.train_step = jax.jit(
            functools.partial(seg_train_step, ce_weight=float(sc.ce_weight), dice_weight=float(sc.dice_weight),
                              aux_weight=aux, class_weights=self.class_weights),
            in_shardings=(self.state_sharding, batch_sh), out_shardings=(self.state_sharding, repl),
            donate_argnums=(0,),
        )  # fmt: skip
        self.eval_step = jax.jit(
            functools.partial(seg_eval_step, num_classes=self.info.num_classes),
            in_shardings=(self.state_sharding, batch_sh), out_shardings=repl,
        )  # fmt: skip
        crf = None
        if sc.crf_eval:
            crf = dict(num_iterations=int(sc.crf_iterations), method=str(sc.crf_method))
        self.eval_step_crf = jax.jit(
            functools.partial(seg_eval_step, num_classes=self.info.num_classes, crf=crf,
                              mean=tuple(self.info.mean), std=tuple(self.info.std)),
            in_shardings=(self.state_sharding, batch_sh), out_shardings=repl,
        ) if crf else None  # fmt: skip
        self._predict = jax.jit(lambda st, x: jnp.argmax(st.apply_fn(st.variables(), x, train=False), -1))

    def _class_weights(self, mode: str) -> tuple[float, ...] | None:
        """``seg.class_balance``: 'none' or 'median_frequency' (weights from the whole train split)."""
        if mode in ("", "none"):
            return None
        if mode != "median_frequency":
            raise ValueError(f"seg.class_balance must be 'none' or 'median_frequency'; got {mode!r}")
        builder = seg_data.get_seg_builder(self.config.data, self.config.seg)
        labels = seg_data.get_split(builder, str(self.config.data.train_split)).labels
        return tuple(float(w) for w in median_frequency_weights(labels, self.info.num_classes))

    def init_state(self) -> TrainState:
        return self._init(jax.random.key_data(jax.random.key(self.config.seed)))

    def evaluate(
        self, state: TrainState, split: str | None = None, *, crf: bool = False
    ) -> tuple[dict[str, float], dict]:
        """Exact metrics over ``split`` and the first batch (for the picture); ``crf``: also the
        metrics after dense-CRF post-processing, prefixed ``crf_`` (needs ``seg.crf_eval``)."""
        if crf and self.eval_step_crf is None:
            raise ValueError("evaluate(crf=True) needs seg.crf_eval=True")
        step_fn = self.eval_step_crf if crf else self.eval_step
        split = split or self.config.data.eval_split
        it = seg_data.make_eval_iterator(
            self.config.data, self.config.seg, split, global_batch_size=self.eval_batch_size,
            process_index=jax.process_index(), process_count=jax.process_count(),
        )  # fmt: skip
        sharding = mesh_lib.batch_sharding(self.mesh)
        totals, first = None, None
        for batch in it:
            first = first or batch
            out = step_fn(state, mesh_lib.to_global(batch, sharding))
            totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
        totals = jax.device_get(totals)
        res = metrics_from_confusion(totals["confusion"], self.info.class_names)
        if "crf_confusion" in totals:
            crf_res = metrics_from_confusion(totals["crf_confusion"], self.info.class_names)
            res.update({f"crf_{k}": v for k, v in crf_res.items() if k in ("miou", "pixel_acc", "mean_acc")})
        res["loss"] = float(totals["ce_sum"]) / max(float(totals["pixels"]), 1.0)
        res["count"] = self.info.num_examples[split]
        if int(res["pixels"]) != int(totals["pixels"]):
            raise RuntimeError("confusion matrix and loss counted different pixels")
        return res, first

    def save_picture(self, state: TrainState, batch: dict, path: Path) -> Path:
        n = min(int(self.config.seg.viz_examples), int(batch["mask"].sum()))
        x = batch["image"][:n]
        preds = np.asarray(self._predict(state, jnp.asarray(x)))
        mean, std = np.asarray(self.info.mean, np.float32), np.asarray(self.info.std, np.float32)
        return seg_viz.save_result_grid(
            path, x * std + mean, batch["label"][:n], preds, self.info.num_classes
        )


def _check_finite(step: int, loss: float, ckpt) -> None:
    if not math.isfinite(loss):
        ckpt.wait()
        raise NonFiniteLossError(
            f"loss is {loss} at step {step}; stopping. last good checkpoint: {ckpt.latest_step()}"
        )


def train_segmentation(
    config, workdir: str | Path, *, stop_after_steps: int | None = None, show_progress: bool = True
) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming from its newest checkpoint) and returns the summary."""
    workdir = Path(workdir)
    wall0 = time.perf_counter()
    tr = SegTrainer(config)
    tc = config.train
    log = print if tr.is_main else (lambda *a, **k: None)
    if tr.is_main:
        workdir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_lib.Checkpointer(workdir, keep=tc.keep_checkpoints, async_save=tc.async_checkpoints)
    state = tr.init_state()
    train_it = seg_data.make_train_iterator(
        config.data, config.seg, seed=config.seed, global_batch_size=tr.batch_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )  # fmt: skip
    start = ckpt.latest_step()
    if start is not None:
        _check_same_run(workdir, config)  # a different model or dataset in this workdir is refused
        arrays, data_state, _ = ckpt.restore(start, ckpt_lib.abstract_like(state.arrays()))
        state = state.replace_arrays(arrays)
        train_it.set_state(ckpt_lib.from_jsonable(data_state))
        log(f"resumed from {ckpt.directory / str(start)} (step {start})")
    start = start or 0
    if tr.is_main:
        resolved = to_dict(config)
        resolved["_resolved"] = dict(
            steps_per_epoch=tr.steps_per_epoch, total_steps=tr.total_steps, num_params=tr.num_params,
            devices=jax.device_count(), dataset=tr.info.name, num_classes=tr.info.num_classes,
            image_shape=list(tr.info.image_shape),
        )  # fmt: skip
        (workdir / "config.json").write_text(json.dumps(resolved, indent=2, default=str))
    log(
        f"model {config.model.name}: {tr.num_params:,} params | data {tr.info.name} {tr.info.num_examples} | "
        f"{tr.steps_per_epoch} steps/epoch, {tr.total_steps} steps | workdir {workdir}"
    )
    writer = MetricWriter(workdir, enabled=tr.is_main, resume_step=start)
    progress = Progress(tr.total_steps, start, tr.batch_size, enabled=show_progress and tr.is_main)
    sharding = mesh_lib.batch_sharding(tr.mesh)
    stop_at = tr.total_steps if stop_after_steps is None else min(stop_after_steps, tr.total_steps)
    history: list[dict[str, Any]] = []
    window: dict[str, float] = {}
    window_n, window_count, t0, train_time, timed_steps = 0, 0, time.perf_counter(), 0.0, 0
    step, last_saved = start, (start or None)

    def save(s: int) -> None:
        nonlocal last_saved
        ckpt.save(s, state.arrays(), train_it.get_state(), {"step": s, "model": config.model.name})
        last_saved = s

    def run_eval(s: int, final: bool = False) -> dict[str, Any]:
        res, first = tr.evaluate(state, crf=final and bool(config.seg.crf_eval))
        res["epoch"] = s / tr.steps_per_epoch
        writer.write(config.data.eval_split, s, res)
        if tr.is_main and first is not None and config.seg.viz_examples:
            tr.save_picture(state, first, workdir / "viz" / f"step_{s:06d}.png")
        history.append({"step": s, **res})
        progress.message(
            f"eval @ step {s}: mIoU {100 * res['miou']:.2f}% pixel acc {100 * res['pixel_acc']:.2f}% "
            f"loss {res['loss']:.4f}"
            + (f" | with dense CRF: mIoU {100 * res['crf_miou']:.2f}%" if "crf_miou" in res else "")
        )
        return res

    try:
        while step < stop_at:
            batch = mesh_lib.to_global(next(train_it), sharding)
            state, metrics = tr.train_step(state, batch)
            step += 1
            m = jax.device_get(metrics)
            _check_finite(step, float(m["loss"]), ckpt)
            if step == start + 1:  # the first step compiles: not timed
                t0 = time.perf_counter()
                progress.reset_clock(step)
            else:
                window_n += 1
            window_count += 1
            for k, v in m.items():
                window[k] = window.get(k, 0.0) + float(v)
            if step % tc.log_every_steps == 0 or step == stop_at:
                dt = time.perf_counter() - t0
                train_time, timed_steps = train_time + dt, timed_steps + window_n
                row = {k: v / window_count for k, v in window.items()}
                row.update(
                    epoch=step / tr.steps_per_epoch,
                    lr=float(tr.schedule(step - 1)),
                    images_per_sec=window_n * tr.batch_size / dt if dt > 0 and window_n else float("nan"),
                )
                writer.write("train", step, row)
                progress.update(step, {"loss": row["loss"], "lr": row["lr"]})
                window, window_n, window_count, t0 = {}, 0, 0, time.perf_counter()
            if tr.eval_every and step % tr.eval_every == 0 and step != tr.total_steps:
                run_eval(step)
                t0 = time.perf_counter()
            if tr.ckpt_every and step % tr.ckpt_every == 0 and step != stop_at:
                save(step)
        if last_saved != step:
            save(step)
    except BaseException:
        progress.close()
        ckpt.close()
        writer.close()
        raise
    progress.close()
    ckpt.close()
    summary: dict[str, Any] = {
        "task": "segmentation", "model": config.model.name, "dataset": tr.info.name, "num_params": tr.num_params,
        "step": step, "total_steps": tr.total_steps, "complete": step >= tr.total_steps,
        "images_per_sec": timed_steps * tr.batch_size / train_time if train_time > 0 else None,
        "devices": jax.device_count(), "jax": jax.__version__, "workdir": str(workdir),
    }  # fmt: skip
    if step >= tr.total_steps:
        res = run_eval(step, final=True)
        summary["final"] = {config.data.eval_split: res}
        best = max(history, key=lambda r: r["miou"])
        summary["best"] = {"miou": best["miou"], "step": best["step"]}
    summary["wall_time_s"] = time.perf_counter() - wall0
    writer.close()
    if tr.is_main:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
        if "final" in summary:
            r = summary["final"][config.data.eval_split]
            log(
                f"done: {config.model.name} on {tr.info.name} | {step} steps in {format_seconds(summary['wall_time_s'])} | "
                f"{config.data.eval_split} mIoU {100 * r['miou']:.2f}% pixel acc {100 * r['pixel_acc']:.2f}% | workdir {workdir}"
            )
        else:
            log(f"stopped at step {step}/{tr.total_steps}; relaunch the same command to resume")
    return summary
