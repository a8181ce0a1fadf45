"""The learned first-layer filters as an image grid (Krizhevsky et al. 2012, Fig. 3: AlexNet's 96
11x11x3 conv1 kernels, each shown as a small RGB image)."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from research.viz.feature_maps import trace_calls
from research.viz.images import make_grid, normalize01


def _subtree(tree, path: str):
    for part in path.split('/'):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def first_conv_kernel(model, variables, input_shape: Sequence[int]) -> tuple[str, np.ndarray]:
    """(module path, kernel [kh, kw, C_in, C_out]) of the first module, in execution order, with a
    4-D 'kernel' parameter (the first convolution)."""
    order: list[str] = []

    def f(v, x):
        _, calls = trace_calls(model, v, x)
        order.extend(c.path for c in calls)
        return 0

    jax.eval_shape(f, variables, jax.ShapeDtypeStruct(tuple(input_shape), np.float32))
    for path in order:
        sub = _subtree(variables['params'], path)
        if isinstance(sub, dict) and getattr(sub.get('kernel'), 'ndim', 0) == 4:
            return path, np.asarray(sub['kernel'])
    raise ValueError(f'{type(model).__name__} has no module with a 4-D conv kernel')


def filter_images(kernel) -> np.ndarray:
    """[kh, kw, C_in, C_out] -> [C_out, kh, kw, 3 or 1] in [0, 1]: RGB if C_in == 3, gray if 1,
    else the mean over input channels; each filter min-max scaled on its own (as AlexNet's figure)."""
    k = np.asarray(kernel, np.float32)
    if k.ndim != 4:
        raise ValueError(f'expected a 2-D conv kernel [kh, kw, C_in, C_out], got shape {k.shape}')
    k = np.moveaxis(k, -1, 0)  # [C_out, kh, kw, C_in]
    if k.shape[-1] not in (1, 3):
        k = k.mean(axis=-1, keepdims=True)
    return normalize01(k, axis=(1, 2, 3))


def filter_grid(kernel, padding: int = 1, nrow: int | None = None) -> np.ndarray:
    """All filters of ``kernel`` as one image [H', W', 3 or 1] (see :func:`filter_images`)."""
    return make_grid(filter_images(kernel), nrow=nrow, padding=padding, pad_value=1.0)
