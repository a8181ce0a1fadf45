"""Segmentation metrics from a confusion matrix accumulated exactly over a split."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_LABEL = 255


def confusion_matrix(
    preds: jax.Array,
    labels: jax.Array,
    num_classes: int,
    weights: jax.Array | None = None,
    ignore_label: int = IGNORE_LABEL,
) -> jax.Array:
    """int32 [K, K] counts, rows = ground truth, columns = prediction, over pixels whose label is
    not ``ignore_label`` (and whose ``weights`` -- e.g. a per-example padding mask broadcast to
    pixels -- are non-zero)."""
    labels = labels.astype(jnp.int32)
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    if weights is not None:
        valid = valid & (weights > 0)
    idx = jnp.where(valid, labels * num_classes + preds.astype(jnp.int32), 0)
    counts = (
        jnp.zeros((num_classes * num_classes,), jnp.int32)
        .at[idx.reshape(-1)]
        .add(valid.reshape(-1).astype(jnp.int32))
    )
    return counts.reshape(num_classes, num_classes)


def metrics_from_confusion(conf, class_names: tuple[str, ...] | None = None) -> dict[str, float]:
    """Pixel accuracy, mean class accuracy, per-class IoU and mean IoU.

    IoU_k = TP / (TP + FP + FN); classes with TP + FP + FN = 0 (absent from both the prediction
    and the ground truth) are excluded from the mean and reported as NaN.
    """
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    gt = conf.sum(1)
    pred = conf.sum(0)
    union = gt + pred - tp
    total = conf.sum()
    with np.errstate(invalid='ignore', divide='ignore'):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    present = union > 0
    out = {
        'pixel_acc': float(tp.sum() / total) if total else float('nan'),
        'mean_acc': float(np.nanmean(acc)) if np.any(gt > 0) else float('nan'),
        'miou': float(iou[present].mean()) if present.any() else float('nan'),
        'pixels': int(total),
    }
    names = class_names or tuple(str(i) for i in range(len(tp)))
    for name, v in zip(names, iou):
        out[f'iou/{name}'] = float(v)
    return out
