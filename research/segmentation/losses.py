"""Dense-prediction losses with an ignore label: per-pixel cross-entropy, soft Dice, and their mix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

IGNORE_LABEL = 255


def valid_mask(labels: jax.Array, ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """float32 1.0 on pixels whose label is not ``ignore_label``."""
    return (labels != ignore_label).astype(jnp.float32)


def pixel_cross_entropy(
    logits: jax.Array, labels: jax.Array, ignore_label: int = IGNORE_LABEL, weights: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """(sum of per-pixel softmax CE over valid pixels, number of valid pixels).

    ``logits`` [N, H, W, K], ``labels`` int [N, H, W]; ``weights`` (optional, [N, H, W]) multiplies
    the validity mask. The mean is ``sum / count``; returning both keeps sums exact across batches.
    """
    mask = valid_mask(labels, ignore_label)
    if weights is not None:
        mask = mask * weights
    safe = jnp.where(labels == ignore_label, 0, labels)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    return jnp.sum(ce * mask), jnp.sum(mask)


def cross_entropy_loss(
    logits: jax.Array,
    labels: jax.Array,
    ignore_label: int = IGNORE_LABEL,
    class_weights: jax.Array | None = None,
) -> jax.Array:
    """Mean per-pixel cross-entropy over the valid pixels (0 if there are none).

    ``class_weights`` [K] (optional): pixel i counts ``w[y_i]`` times, the mean is
    ``sum_i w[y_i] ce_i / sum_i w[y_i]`` (torch's ``cross_entropy(weight=w)``).
    """
    weights = None
    if class_weights is not None:
        safe = jnp.where(labels == ignore_label, 0, labels)
        weights = jnp.asarray(class_weights, jnp.float32)[safe]
    total, count = pixel_cross_entropy(logits, labels, ignore_label, weights=weights)
    return total / jnp.maximum(count, 1e-12 if class_weights is not None else 1.0)


def median_frequency_weights(labels, num_classes: int, ignore_label: int = IGNORE_LABEL):
    """Median frequency balancing (Eigen & Fergus 2015; SegNet, Badrinarayanan et al. 2017, Sec. 3.1):
    ``w_c = median(f) / f_c`` with ``f_c`` = pixels of class c / pixels of the images where c occurs.
    ``labels``: int array [N, H, W] (numpy, the whole train split); classes never seen get weight 0."""
    import numpy as np

    labels = np.asarray(labels)
    flat = labels.reshape(len(labels), -1)
    valid = flat != ignore_label
    counts = np.stack([np.sum((flat == c) & valid, axis=1) for c in range(num_classes)], axis=1)  # [N, K]
    image_pixels = valid.sum(axis=1, keepdims=True)  # [N, 1]
    present = counts > 0
    denom = np.sum(np.where(present, image_pixels, 0), axis=0)
    freq = np.where(denom > 0, counts.sum(axis=0) / np.maximum(denom, 1), 0.0)
    seen = freq > 0
    weights = np.zeros(num_classes, np.float64)
    weights[seen] = np.median(freq[seen]) / freq[seen]
    return weights.astype(np.float32)


def dice_loss(
    logits: jax.Array, labels: jax.Array, ignore_label: int = IGNORE_LABEL, smooth: float = 1.0
) -> jax.Array:
    """Soft Dice loss averaged over classes: 1 - mean_k (2 sum p_k g_k + s) / (sum p_k + sum g_k + s).

    ``p`` = softmax probabilities, ``g`` = one-hot labels, sums over the valid pixels of the whole
    batch (ignored pixels contribute nothing); ``smooth`` keeps classes absent from both near 0 loss.
    """
    k = logits.shape[-1]
    mask = valid_mask(labels, ignore_label)[..., None]
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) * mask
    onehot = jax.nn.one_hot(jnp.where(labels == ignore_label, 0, labels), k) * mask
    axes = tuple(range(logits.ndim - 1))
    inter = jnp.sum(probs * onehot, axis=axes)
    denom = jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)
    return 1.0 - jnp.mean((2.0 * inter + smooth) / (denom + smooth))


def segmentation_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ce_weight: float = 1.0,
    dice_weight: float = 0.0,
    ignore_label: int = IGNORE_LABEL,
    class_weights: jax.Array | None = None,
) -> jax.Array:
    """``ce_weight * CE + dice_weight * Dice`` (each term only computed if its weight is non-zero);
    ``class_weights`` weight the CE term (see :func:`cross_entropy_loss`)."""
    loss = jnp.zeros((), jnp.float32)
    if ce_weight:
        loss = loss + ce_weight * cross_entropy_loss(logits, labels, ignore_label, class_weights)
    if dice_weight:
        loss = loss + dice_weight * dice_loss(logits, labels, ignore_label)
    return loss
