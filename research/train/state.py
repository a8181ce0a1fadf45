"""The training state pytree and pure train/eval steps."""

from __future__ import annotations

import functools
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
    #: ``train.ema_decay``: {'params', 'batch_stats'} averaged over the steps (empty when off).
    ema: PyTree = flax.struct.field(default_factory=dict)

    def variables(self, params: PyTree | None = None) -> dict[str, PyTree]:
        v = {'params': self.params if params is None else params}
        if self.batch_stats:
            v['batch_stats'] = self.batch_stats
        v.update(self.constants)
        return v

    def arrays(self) -> dict[str, PyTree]:
        """The checkpointed part (no functions)."""
        out = dict(
            step=self.step,
            params=self.params,
            batch_stats=self.batch_stats,
            constants=self.constants,
            opt_state=self.opt_state,
            rng=self.rng,
        )
        if self.ema:
            out['ema'] = self.ema
        return out

    def replace_arrays(self, arrays: dict[str, PyTree]) -> 'TrainState':
        return self.replace(**arrays)


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, sample_input: jax.Array
) -> TrainState:
    """Initialises parameters from ``rng`` on ``sample_input`` (shape only matters)."""
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init({'params': init_rng, 'dropout': init_rng}, sample_input, train=False)
    variables = dict(variables)
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


def plain_forward(apply_fn: Callable) -> Callable:
    """The train-mode forward the loop gives a task's loss: ``forward(variables, *args, rngs, **kw)
    -> (outputs, new_vars)``, i.e. ``apply_fn(..., train=True, mutable=['batch_stats'])``."""

    def forward(variables, *args, rngs=None, **kwargs):
        return apply_fn(variables, *args, train=True, mutable=['batch_stats'], rngs=rngs or {}, **kwargs)

    return forward


def ghost_bn_forward(
    apply_fn: Callable, mesh: jax.sharding.Mesh, group_size: int, axis: str = 'data'
) -> Callable:
    """Train-mode forward with "ghost" BatchNorm: statistics over groups of ``group_size`` examples.

    ``jax.shard_map`` over the mesh axis ``axis`` gives each device its own slice of the global
    batch (per-device semantics: no cross-device BatchNorm reduction); inside, the slice is split
    into contiguous groups of ``group_size`` and the model is ``vmap``-ed over the groups, so every
    BatchNorm layer normalises each group with that group's own mean and variance. Group ``g`` of
    the global batch is examples ``[g*G, (g+1)*G)`` whatever the device count, so 1 device and N
    devices give the same result. The returned running statistics are the mean over all groups
    (of every device) of each group's updated statistics: ``m*old + (1-m)*mean_g(stat_g)``, the
    same for every device. Every rng is folded with the group index.

    Same signature as :func:`plain_forward`: ``forward(variables, *args, rngs, **kwargs)``, where
    every leaf of ``args`` has the batch as its leading axis. Outputs: per-example leaves come back
    as ``[batch, ...]``; scalars (e.g. a detector's losses) are averaged over the groups. Differentiable
    in ``variables`` (the cotangent of the replicated inputs is summed over devices by shard_map).
    """
    P = jax.sharding.PartitionSpec

    def grouped(variables, args, rngs, kwargs, first):
        leaves = jax.tree.leaves(args)
        b = leaves[0].shape[0]
        if b % group_size:
            raise ValueError(
                f'per-device batch {b} is not divisible by the BatchNorm group size {group_size}'
            )
        k = b // group_size
        groups = jax.tree.map(lambda x: x.reshape(k, group_size, *x.shape[1:]), args)

        def one(a, g):
            r = {name: jax.random.fold_in(key, g) for name, key in (rngs or {}).items()}
            return apply_fn(variables, *a, train=True, mutable=['batch_stats'], rngs=r, **kwargs)

        return jax.vmap(one)(groups, first + jnp.arange(k))

    def forward(variables, *args, rngs=None, **kwargs):
        def local(variables, args, rngs):
            k = jax.tree.leaves(args)[0].shape[0] // group_size
            out, new_vars = grouped(variables, args, rngs, kwargs, jax.lax.axis_index(axis) * k)
            per_example = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]) if x.ndim >= 2 else None, out)
            scalars = jax.tree.map(lambda x: jax.lax.pmean(jnp.mean(x), axis) if x.ndim < 2 else None, out)
            stats = jax.tree.map(
                lambda s: jax.lax.pmean(jnp.mean(s, axis=0), axis), new_vars.get('batch_stats', {})
            )
            return per_example, scalars, stats

        shapes = jax.eval_shape(
            lambda v, a, r: grouped(v, a, r, kwargs, 0)[0],
            variables,
            jax.tree.map(lambda x: jax.ShapeDtypeStruct((group_size, *x.shape[1:]), x.dtype), args),
            rngs,
        )
        batch_specs = jax.tree.map(lambda x: P(axis) if x.ndim >= 2 else None, shapes)
        scalar_specs = jax.tree.map(lambda x: P() if x.ndim < 2 else None, shapes)
        per_example, scalars, stats = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(P(), P(axis), P()),
            out_specs=(batch_specs, scalar_specs, P()),
        )(variables, args, rngs)
        out = jax.tree.map(lambda s, a, b: a if s.ndim >= 2 else b, shapes, per_example, scalars)
        return out, ({'batch_stats': stats} if stats else {})

    return forward


def loss_step(
    state: TrainState,
    batch: PyTree,
    *,
    loss_fn: Callable,
    accumulate_steps: int = 1,
    merge_batch_stats: Callable[[PyTree, PyTree], PyTree] | None = None,
    ema_decay: float = 0.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step of any task: ``loss_fn(params, state, batch, rng) -> (loss, (metrics,
    batch_stats))`` differentiated, the optimizer applied. What the loop adds for every task:

    - ``accumulate_steps = K > 1``: the batch is split into K micro-batches (micro-batch ``i`` is
      rows ``i, i+K, i+2K, ...``: every device keeps its own rows), their gradients are averaged
      and one update is made: the update of the whole batch for a loss that is a mean over its
      examples (BatchNorm statistics are then those of each micro-batch, updated K times). The
      metrics are averaged over the micro-batches.
    - ``merge_batch_stats(old, new)`` picks the statistics to keep (frozen modules keep theirs).
    - ``ema_decay = d > 0``: ``state.ema = d * ema + (1 - d) * {params, batch_stats}`` after the update.
    """
    step_rng = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accumulate_steps == 1:
        (loss, (metrics, new_stats)), grads = grad_fn(state.params, state, batch, step_rng)
    else:
        k = accumulate_steps
        micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), batch)

        def one(carry, xs):
            stats, grad_sum = carry
            i, mb = xs
            (loss, (metrics, new_stats)), g = grad_fn(
                state.params, state.replace(batch_stats=stats), mb, jax.random.fold_in(step_rng, i)
            )
            return (new_stats, jax.tree.map(jnp.add, grad_sum, g)), {'loss': loss, **metrics}

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (new_stats, grad_sum), per_micro = jax.lax.scan(
            one, (state.batch_stats, zeros), (jnp.arange(k), micro)
        )
        grads = jax.tree.map(lambda g: g / k, grad_sum)
        per_micro = jax.tree.map(lambda v: jnp.mean(v, axis=0), per_micro)
        loss = per_micro.pop('loss')
        metrics = per_micro
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if merge_batch_stats is not None and state.batch_stats:
        new_stats = merge_batch_stats(state.batch_stats, new_stats)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, batch_stats=new_stats)
    if ema_decay:
        d = jnp.asarray(ema_decay, jnp.float32)
        new_state = new_state.replace(
            ema=jax.tree.map(
                lambda e, w: (d * e + (1 - d) * w).astype(e.dtype),
                state.ema,
                {'params': params, 'batch_stats': new_stats},
            )
        )
    return new_state, {'loss': loss, **metrics, 'grad_norm': optax.tree.norm(grads)}


def classifier_loss(
    params,
    state: TrainState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    forward,
    label_smoothing: float = 0.0,
):
    """A classifier's loss on a (global) batch: mean cross-entropy (``label_smoothing``), with top-1/top-5.
    The task interface's ``loss`` (``research/tasks/base.py``)."""
    logits, new_vars = forward(state.variables(params), batch['image'], rngs={'dropout': rng})
    loss = cross_entropy(logits, batch['label'], label_smoothing).mean()
    metrics = {
        'top1': topk_correct(logits, batch['label'], 1).mean(),
        'top5': topk_correct(logits, batch['label'], 5).mean(),
    }
    return loss, (metrics, new_vars.get('batch_stats', state.batch_stats))


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    label_smoothing: float = 0.0,
    merge_batch_stats: Callable[[PyTree, PyTree], PyTree] | None = None,
    forward: Callable | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step of a classifier on a (global) batch (BatchNorm statistics from the whole batch):
    :func:`loss_step` of :func:`classifier_loss`. ``forward`` replaces the plain train-mode forward
    (e.g. :func:`ghost_bn_forward`)."""
    forward = forward or plain_forward(state.apply_fn)
    loss_fn = functools.partial(classifier_loss, forward=forward, label_smoothing=label_smoothing)
    return loss_step(state, batch, loss_fn=loss_fn, merge_batch_stats=merge_batch_stats)


def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Sums over the real examples of a padded batch (``mask``), so totals are exact."""
    logits = state.apply_fn(state.variables(), batch['image'], train=False)
    mask = batch['mask'].astype(jnp.float32)
    return {
        'loss': jnp.sum(cross_entropy(logits, batch['label']) * mask),
        'top1': jnp.sum(topk_correct(logits, batch['label'], 1) * mask),
        'top5': jnp.sum(topk_correct(logits, batch['label'], 5) * mask),
        'count': jnp.sum(mask),
    }
