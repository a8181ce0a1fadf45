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


def ghost_bn_forward(
    apply_fn: Callable, mesh: jax.sharding.Mesh, group_size: int, axis: str = "data"
) -> Callable[[PyTree, jax.Array, jax.Array], tuple[jax.Array, PyTree]]:
    """Train-mode forward with "ghost" BatchNorm: statistics over groups of ``group_size`` examples.

    ``jax.shard_map`` over the mesh axis ``axis`` gives each device its own slice of the global
    batch (per-device semantics: no cross-device BatchNorm reduction); inside, the slice is split
    into contiguous groups of ``group_size`` and the model is ``vmap``-ed over the groups, so every
    BatchNorm layer normalises each group with that group's own mean and variance. Group ``g`` of
    the global batch is examples ``[g*G, (g+1)*G)`` whatever the device count, so 1 device and N
    devices give the same result. The returned running statistics are the mean over all groups
    (of every device) of each group's updated statistics: ``m*old + (1-m)*mean_g(stat_g)``, the
    same for every device. Dropout draws ``fold_in(rng, g)`` per group.

    Returns ``forward(variables, images, rng) -> (logits, batch_stats)``; differentiable in
    ``variables`` (the cotangent of the replicated inputs is summed over devices by shard_map).
    """
    P = jax.sharding.PartitionSpec

    def local(variables, images, rng):
        b = images.shape[0]
        if b % group_size:
            raise ValueError(
                f"per-device batch {b} is not divisible by the BatchNorm group size {group_size}"
            )
        k = b // group_size
        first = jax.lax.axis_index(axis) * k
        groups = images.reshape(k, group_size, *images.shape[1:])

        def one(x, g):
            return apply_fn(
                variables,
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.fold_in(rng, g)},
            )

        logits, new_vars = jax.vmap(one)(groups, first + jnp.arange(k))
        logits = logits.reshape(b, *logits.shape[2:])
        stats = jax.tree.map(
            lambda s: jax.lax.pmean(jnp.mean(s, axis=0), axis), new_vars.get("batch_stats", {})
        )
        return logits, stats

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis), P()), out_specs=(P(axis), P()))


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    label_smoothing: float = 0.0,
    merge_batch_stats: Callable[[PyTree, PyTree], PyTree] | None = None,
    forward: Callable[[PyTree, jax.Array, jax.Array], tuple[jax.Array, PyTree]] | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on a (global) batch; BatchNorm statistics come from the whole batch.

    ``merge_batch_stats(old, new)`` picks the statistics to keep (frozen modules keep theirs;
    ``research.train.transfer``). ``forward(variables, images, rng) -> (logits, batch_stats)``
    replaces the plain train-mode ``apply_fn`` (e.g. :func:`ghost_bn_forward`)."""
    step_rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        if forward is not None:
            logits, stats = forward(state.variables(params), batch["image"], step_rng)
            new_vars = {"batch_stats": stats} if state.batch_stats else {}
        else:
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
