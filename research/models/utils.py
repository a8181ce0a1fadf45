"""Parameter counting and shape-only initialisation helpers."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _size(leaf) -> int:
    return int(np.prod(np.shape(leaf)))  # works for arrays and jax.ShapeDtypeStruct


def _select(variables_or_params: Mapping[str, Any], collection: str | None):
    if (
        collection is not None
        and isinstance(variables_or_params, Mapping)
        and collection in variables_or_params
    ):
        return variables_or_params[collection]
    return variables_or_params


def count_params(variables_or_params: Mapping[str, Any], collection: str | None = 'params') -> int:
    """Number of scalars in ``variables[collection]`` (or in the tree itself if it is not a
    variables dict with that collection). Trainable = the 'params' collection."""
    tree = _select(variables_or_params, collection)
    return sum(_size(l) for l in jax.tree_util.tree_leaves(tree))


def param_counts_by_layer(
    variables_or_params: Mapping[str, Any], collection: str | None = 'params', depth: int = 1
) -> dict[str, int]:
    """Counts per module path, truncated to ``depth`` levels ('stage1_block1', 'C3', ...)."""
    tree = _select(variables_or_params, collection)
    counts: dict[str, int] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        keys = [getattr(k, 'key', getattr(k, 'name', str(k))) for k in path]
        name = '/'.join(str(k) for k in keys[:depth])
        counts[name] = counts.get(name, 0) + _size(leaf)
    return counts


def abstract_variables(model, input_shape: Sequence[int] = (1, 32, 32, 3), dtype=jnp.float32, **call_kwargs):
    """``jax.eval_shape`` of ``model.init``: variable shapes without allocating or computing."""
    x = jax.ShapeDtypeStruct(tuple(input_shape), dtype)
    return jax.eval_shape(lambda k, x: model.init(k, x, **call_kwargs), jax.random.key(0), x)
