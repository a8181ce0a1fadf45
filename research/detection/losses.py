"""Detection losses, element-wise (reduce them yourself): smooth L1 (Girshick 2015 Fast R-CNN, Eq. 3),
sigmoid focal loss (Lin et al. 2017 RetinaNet, Eq. 5), softmax cross-entropy, and SSD's hard negative
mining (Liu et al. 2016, Sec. 2.2 "Hard negative mining": negatives of highest loss, at most 3:1).

All match torch / torchvision semantics (tested against them): ``smooth_l1`` = ``F.smooth_l1_loss(
reduction='none', beta=beta)``, ``sigmoid_focal_loss`` = ``torchvision.ops.sigmoid_focal_loss(
reduction='none')``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = ['hard_negative_mask', 'sigmoid_focal_loss', 'smooth_l1', 'softmax_cross_entropy']


def smooth_l1(x: jax.Array, beta: float = 1.0) -> jax.Array:
    """``0.5 x^2 / beta`` where ``|x| < beta``, else ``|x| - 0.5 beta``; ``beta=0`` is L1."""
    ax = jnp.abs(x)
    if beta <= 0:
        return ax
    return jnp.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)


def sigmoid_focal_loss(
    logits: jax.Array, targets: jax.Array, alpha: float = 0.25, gamma: float = 2.0
) -> jax.Array:
    """``-alpha_t (1 - p_t)^gamma log(p_t)`` per element; ``alpha < 0`` disables the alpha weighting and
    ``gamma = 0`` gives (alpha-weighted) binary cross-entropy."""
    targets = targets.astype(logits.dtype)
    ce = optax.sigmoid_binary_cross_entropy(logits, targets)
    if gamma:
        # (1 - p_t)^gamma as exp(gamma log(1 - p_t)), log(1 - p_t) from log-sigmoids: equal to torchvision's
        # value, but its gradient stays finite where 1 - p_t underflows to 0 (for gamma < 1 the power's
        # derivative there is inf, and inf * 0 gave NaN losses in the gamma = 0.5 run).
        log_1m_pt = targets * jax.nn.log_sigmoid(-logits) + (1 - targets) * jax.nn.log_sigmoid(logits)
        loss = ce * jnp.exp(gamma * log_1m_pt)
    else:
        loss = ce
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-row CE of integer ``labels`` (any leading shape); labels < 0 give 0."""
    safe = jnp.maximum(labels, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    return jnp.where(labels >= 0, ce, 0.0)


def hard_negative_mask(
    negative_loss: jax.Array, positive: jax.Array, negative: jax.Array, neg_pos_ratio: float = 3.0
) -> jax.Array:
    """SSD hard negative mining for one image: the ``neg_pos_ratio * #positive`` candidates of
    ``negative`` (bool [N]) with the highest ``negative_loss`` [N] (torchvision ``SSDHead``'s rule:
    rank by loss, keep the top ``ratio * num_pos``). Static shape; ties broken by index."""
    n = negative_loss.shape[0]
    num_neg = jnp.minimum(jnp.floor(neg_pos_ratio * positive.sum()), negative.sum()).astype(jnp.int32)
    key = jnp.where(negative, negative_loss, -jnp.inf)
    order = jnp.argsort(-key, stable=True)
    rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return negative & (rank < num_neg)
