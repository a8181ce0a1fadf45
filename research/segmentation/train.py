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
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import models
from research.config import to_dict, validate_config
from research.kernels import onednn
from research.segmentation import data as seg_data
from research.segmentation import viz as seg_viz
from research.segmentation.losses import (
    IGNORE_LABEL,
    median_frequency_weights,
    pixel_cross_entropy,
    segmentation_loss,
)
from research.segmentation.metrics import confusion_matrix, metrics_from_confusion
from research.train import mesh as mesh_lib
from research.train.state import TrainState, create_train_state
from research.train.task_loop import resolve_schedule, run_task_loop


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
        sc = config.seg
        self.info = seg_data.get_seg_info(config.data, sc)
        kwargs = {k: v for k, v in to_dict(config.model).items() if k != "name"}
        kwargs.setdefault("num_classes", self.info.num_classes)
        self.model = models.create(config.model.name, **kwargs)
        self.mesh = mesh_lib.make_mesh()
        resolve_schedule(self, config, self.info.num_examples[config.data.train_split])
        repl = mesh_lib.replicated(self.mesh)
        sample = jnp.zeros((1, *self.info.image_shape), jnp.float32)
        aux = float(sc.aux_weight) if sc.aux_weight and _has_aux(self.model, sample) else 0.0
        self.class_weights = self._class_weights(sc.class_balance)
        init_model = _InitWithAux(self.model) if aux else self.model
        init = functools.partial(create_train_state, init_model, self.tx, sample_input=sample)
        abstract = jax.eval_shape(init, jax.random.key_data(jax.random.key(0)))
        self.state_sharding = jax.tree.map(lambda _: repl, abstract)
        on = self.cpu_conv == 'onednn'  # the steps are traced with the convolutions resolved here
        self._init = onednn.scoped(jax.jit(init, out_shardings=self.state_sharding), on)
        self.num_params = models.count_params(abstract.params, collection=None)
        batch_sh = mesh_lib.batch_sharding(self.mesh)
        self.train_step = onednn.scoped(jax.jit(
            functools.partial(seg_train_step, ce_weight=float(sc.ce_weight), dice_weight=float(sc.dice_weight),
                              aux_weight=aux, class_weights=self.class_weights),
            in_shardings=(self.state_sharding, batch_sh), out_shardings=(self.state_sharding, repl),
            donate_argnums=(0,),
        ), on)  # fmt: skip
        self.eval_step = onednn.scoped(jax.jit(
            functools.partial(seg_eval_step, num_classes=self.info.num_classes),
            in_shardings=(self.state_sharding, batch_sh), out_shardings=repl,
        ), on)  # fmt: skip
        crf = None
        if sc.crf_eval:
            crf = dict(num_iterations=int(sc.crf_iterations), method=str(sc.crf_method))
        self.eval_step_crf = onednn.scoped(jax.jit(
            functools.partial(seg_eval_step, num_classes=self.info.num_classes, crf=crf,
                              mean=tuple(self.info.mean), std=tuple(self.info.std)),
            in_shardings=(self.state_sharding, batch_sh), out_shardings=repl,
        ), on) if crf else None  # fmt: skip
        self._predict = onednn.scoped(
            jax.jit(lambda st, x: jnp.argmax(st.apply_fn(st.variables(), x, train=False), -1)), on
        )

    def _class_weights(self, mode: str) -> tuple[float, ...] | None:
        """``seg.class_balance``: 'none' or 'median_frequency' (weights from the whole train split)."""
        if mode in ("", "none"):
            return None
        if mode != "median_frequency":
            raise ValueError(f"seg.class_balance must be 'none' or 'median_frequency'; got {mode!r}")
        builder = seg_data.get_seg_builder(self.config.data, self.config.seg)
        split = seg_data.get_split(builder, str(self.config.data.train_split), self.config.seg)
        labels = split.labels
        if not isinstance(labels, np.ndarray):  # a lazily read TFDS split: the first 1,000 examples
            labels = labels[np.arange(min(len(split), 1000))]
        return tuple(float(w) for w in median_frequency_weights(labels, self.info.num_classes))

    task = "segmentation"
    best_metric = "miou"

    @property
    def dataset(self) -> str:
        return self.info.name

    def train_iterator(self):
        c = self.config
        return seg_data.make_train_iterator(
            c.data, c.seg, seed=c.seed, global_batch_size=self.batch_size,
            process_index=jax.process_index(), process_count=jax.process_count(),
        )  # fmt: skip

    def next_batch(self, it) -> dict:
        return next(it)

    def resolved(self) -> dict[str, Any]:
        return dict(
            dataset=self.info.name, num_classes=self.info.num_classes, image_shape=list(self.info.image_shape)
        )

    def describe(self, workdir) -> str:
        return (
            f"model {self.config.model.name}: {self.num_params:,} params | data {self.info.name} "
            f"{self.info.num_examples} | {self.steps_per_epoch} steps/epoch, {self.total_steps} steps | workdir {workdir}"
        )

    def evaluate_at(self, state: TrainState, step: int, final: bool):
        res, first = self.evaluate(state, crf=final and bool(self.config.seg.crf_eval))
        picture = None
        if first is not None and self.config.seg.viz_examples:
            picture = lambda path: self.save_picture(state, first, path)  # noqa: E731
        return res, picture

    def eval_message(self, res: dict) -> str:
        return (
            f"mIoU {100 * res['miou']:.2f}% pixel acc {100 * res['pixel_acc']:.2f}% loss {res['loss']:.4f}"
            + (f" | with dense CRF: mIoU {100 * res['crf_miou']:.2f}%" if "crf_miou" in res else "")
        )

    def done_message(self, res: dict) -> str:
        return f"{self.config.data.eval_split} mIoU {100 * res['miou']:.2f}% pixel acc {100 * res['pixel_acc']:.2f}%"

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


def train_segmentation(
    config, workdir: str | Path, *, stop_after_steps: int | None = None, show_progress: bool = True
) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming from its newest checkpoint) and returns the summary."""
    return run_task_loop(SegTrainer(config), config, workdir, stop_after_steps=stop_after_steps,
                         show_progress=show_progress)  # fmt: skip
