"""The training state pytree and pure train/eval steps."""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly: a pytree of arrays plus static functions.

    ``batch_stats`` holds BatchNorm running statistics (updated by the train step);
    ``constants`` holds any other non-trainable model collection (for example the
    fixed RBF centers of LeNet-5), carried unchanged; ``rng`` is the run's base key,
    folded with ``step`` at every step so that a resumed run draws the same numbers.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    constants: PyTree
    opt_state: PyTree
    rng: jax.Array
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    def variables(self, params: PyTree | None = None) -> dict[str, PyTree]:
        v = {"params": self.params if params is None else params}
        if self.batch_stats:
            v["batch_stats"] = self.batch_stats
        v.update(self.constants)
        return v

    def arrays(self) -> dict[str, PyTree]:
        """The checkpointed part (no functions)."""
        return dict(
            step=self.step,
            params=self.params,
            batch_stats=self.batch_stats,
            constants=self.constants,
            opt_state=self.opt_state,
            rng=self.rng,
        )

    def replace_arrays(self, arrays: dict[str, PyTree]) -> "TrainState":
        return self.replace(**arrays)


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, sample_input: jax.Array
) -> TrainState:
    """Initialises parameters from ``rng`` on ``sample_input`` (shape only matters)."""
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init({"params": init_rng, "dropout": init_rng}, sample_input, train=False)
    variables = dict(variables)
    params = variables.pop("params")
    batch_stats = variables.pop("batch_stats", {})
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


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy with optional label smoothing."""
    logits = logits.astype(jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        return optax.softmax_cross_entropy(logits, targets)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """1.0 where the label is among the ``k`` highest logits (k capped at the class count)."""
    k = min(k, logits.shape[-1])
    _, idx = jax.lax.top_k(logits, k)
    return jnp.any(idx == labels[:, None], axis=-1).astype(jnp.float32)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    label_smoothing: float = 0.0,
    merge_batch_stats: Callable[[PyTree, PyTree], PyTree] | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on a (global) batch; BatchNorm statistics come from the whole batch.

    ``merge_batch_stats(old, new)`` picks the statistics to keep (frozen modules keep theirs;
    ``research.train.transfer``)."""
    step_rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        logits, new_vars = state.apply_fn(
            state.variables(params),
            batch["image"],
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": step_rng},
        )
        loss = cross_entropy(logits, batch["label"], label_smoothing).mean()
        return loss, (logits, new_vars)

    (loss, (logits, new_vars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "top1": topk_correct(logits, batch["label"], 1).mean(),
        "top5": topk_correct(logits, batch["label"], 5).mean(),
        "grad_norm": optax.tree.norm(grads),
    }
    new_batch_stats = new_vars.get("batch_stats", state.batch_stats)
    if merge_batch_stats is not None and state.batch_stats:
        new_batch_stats = merge_batch_stats(state.batch_stats, new_batch_stats)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        batch_stats=new_batch_stats,
    )
    return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Sums over the real examples of a padded batch (``mask``), so totals are exact."""
    logits = state.apply_fn(state.variables(), batch["image"], train=False)
    mask = batch["mask"].astype(jnp.float32)
    return {
        "loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
        "top1": jnp.sum(topk_correct(logits, batch["label"], 1) * mask),
        "top5": jnp.sum(topk_correct(logits, batch["label"], 5) * mask),
        "count": jnp.sum(mask),
    }
