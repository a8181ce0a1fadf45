"""Class activation maps: Zhou et al. 2016, "Learning Deep Features for Discriminative
Localization" (CVPR), Eq. 2: for a network ending in global average pooling of feature maps
f_k(x, y) and a linear classifier w^c_k, M_c(x, y) = sum_k w^c_k f_k(x, y); the class score is
S_c = mean_{x,y} M_c(x, y) + b_c.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research.viz.feature_maps import trace_calls
from research.viz.filters import _subtree
from research.viz.images import add_titles, make_grid, save_uint8_png, to_rgb_uint8


def class_activation_maps(
    model, variables, x, *, class_index: int | Sequence[int] | None = None, layer: str = ''
):
    """CAMs of the images ``x`` [N, H, W, C] (model-normalised inputs).

    The classifier is the last ``Dense`` module called; its input must be the global average of
    the feature maps F [N, h, w, K] of ``layer`` (default: the last 4-D module output whose spatial
    mean, or that of its ReLU, equals the classifier input; models with another head raise
    ``ValueError``). ``class_index``: one per image, one for all, or None (the predicted class).
    Returns dict(cam [N, h, w], classes [N], logits [N, classes], layer, features [N, h, w, K]).
    """
    logits, calls = trace_calls(model, variables, jnp.asarray(x))
    dense = [c for c in calls if c.kind == 'Dense']
    if not dense:
        raise ValueError(f'{type(model).__name__} has no Dense classifier: CAM needs GAP + a linear layer')
    head = dense[-1]
    pooled = np.asarray(head.inputs)
    kernel = np.asarray(_subtree(variables['params'], head.path)['kernel'])
    candidates = [c for c in calls if getattr(c.output, 'ndim', 0) == 4]
    if layer:
        candidates = [c for c in candidates if c.path == layer]
        if not candidates:
            raise ValueError(f'no 4-D output at layer {layer!r}')
    feats = None
    for c in reversed(candidates):
        for f in (np.asarray(c.output), np.maximum(np.asarray(c.output), 0)):
            if pooled.ndim == 2 and f.shape[-1] == pooled.shape[-1]:
                if np.allclose(f.mean(axis=(1, 2)), pooled, rtol=1e-4, atol=1e-5):
                    feats, used = f, c.path
                    break
        if feats is not None:
            break
    if feats is None:
        raise ValueError(
            f'the input of {head.path!r} is not the global average of a feature map'
            + (f' of {layer!r}' if layer else '')
            + ': class activation maps need a model ending in global average pooling + one Dense layer'
        )
    logits = np.asarray(logits, np.float32)
    if class_index is None:
        classes = logits.argmax(axis=-1)
    else:
        classes = np.broadcast_to(np.asarray(class_index, np.int64), (len(feats),))
    w = kernel[:, classes].T  # [N, K]
    cam = np.einsum('nhwk,nk->nhw', feats, w)
    return {'cam': cam, 'classes': classes, 'logits': logits, 'layer': used, 'features': feats}


def upsample_cam(cam, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of [N, h, w] maps to [N, *size] (the input image's size)."""
    cam = jnp.asarray(cam, jnp.float32)
    return np.asarray(jax.image.resize(cam, (cam.shape[0], *size), 'bilinear'))


def overlay(image01, cam, alpha: float = 0.5, cmap: str = 'jet') -> np.ndarray:
    """[H, W, C] image in [0, 1] with a [H, W] map min-max scaled and coloured by ``cmap`` on top."""
    from matplotlib import colormaps

    img = np.asarray(image01, np.float32)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    c = np.asarray(cam, np.float32)
    c = (c - c.min()) / max(float(c.max() - c.min()), 1e-12)
    heat = colormaps[cmap](c)[..., :3].astype(np.float32)
    return np.clip((1 - alpha) * img + alpha * heat, 0.0, 1.0)


def cam_grid(
    images01,
    cams,
    classes,
    *,
    class_names=None,
    labels=None,
    scale: int = 1,
    alpha: float = 0.5,
) -> np.ndarray:
    """uint8 picture of class activation maps with their class names written on it.

    Top row: the images ``images01`` [N, H, W, C] in [0, 1], captioned with their true class
    (``labels`` [N], when given); bottom row: each image overlaid with its map ``cams`` [N, H, W]
    (already at the image's size, :func:`upsample_cam`), captioned "CAM: <name of classes[i]>" in
    green when it equals the label, red when not, black without labels. ``class_names`` maps class
    indices to names (default: the index). Each pixel is repeated ``scale`` times per side.
    """
    x01 = np.asarray(images01, np.float32)
    rgb01 = np.repeat(x01, 3, axis=-1) if x01.shape[-1] == 1 else x01[..., :3]
    n, _, w = rgb01.shape[:3]
    tiles = np.stack([overlay(rgb01[i], np.asarray(cams)[i], alpha=alpha) for i in range(n)])

    def name(c) -> str:
        c = int(c)
        return str(class_names[c]) if class_names is not None and c < len(class_names) else str(c)

    def row(images) -> np.ndarray:
        g = to_rgb_uint8(make_grid(images, nrow=n))
        return np.repeat(np.repeat(g, scale, axis=0), scale, axis=1) if scale > 1 else g

    pad = 2  # make_grid's padding
    centers = [scale * (pad + i * (w + pad) + w / 2) for i in range(n)]
    width = scale * (w + pad)
    top = row(rgb01)
    if labels is not None:
        top = add_titles(top, [f'label: {name(c)}' for c in labels], centers=centers, width=width, below=True)
    correct = [None] * n if labels is None else [int(p) == int(t) for p, t in zip(classes, labels)]
    colours = [(0, 0, 0) if ok is None else (0, 130, 0) if ok else (200, 0, 0) for ok in correct]
    bottom = add_titles(
        row(tiles),
        [f'CAM: {name(c)}' for c in classes],
        centers=centers,
        width=width,
        below=True,
        colours=colours,
    )
    return np.concatenate([top, bottom], axis=0)


def save_cam_grid(path, images01, cams, classes, *, class_names=None, labels=None, scale: int = 1):
    """Writes :func:`cam_grid` to ``path`` (PNG) and returns the path."""
    return save_uint8_png(
        cam_grid(images01, cams, classes, class_names=class_names, labels=labels, scale=scale), path
    )
