"""Intermediate outputs of any Flax model by module path, and feature-map pictures.

``layer_outputs(model, variables, x, ['conv1_1', 'stage2_block1/conv1'])`` returns those modules'
outputs (the value their ``__call__`` returned) on ``x``; ``list_layers`` lists the paths with a
spatial [N, H, W, C] output in execution order. Both work on every model of the registry (they
intercept module calls, so no model needs to expose its features) and under ``jax.jit`` /
``jax.grad``: style transfer differentiates through them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np

from research.viz.images import make_grid, normalize01


@dataclasses.dataclass
class Call:
    """One module call: its path ('a/b/c'), class name, first input and output."""

    path: str
    kind: str
    inputs: Any
    output: Any


class _Stop(Exception):
    """Raised inside the forward pass once every requested layer has been seen (``stop_early``)."""


def trace_calls(
    model: nn.Module,
    variables,
    x,
    *,
    train: bool = False,
    paths: Sequence[str] | None = None,
    stop_early: bool = False,
):
    """(model output, [Call, ...] in execution order) of ``model.apply(variables, x, train=train)``.

    ``paths``: record only these module paths (None = every module call). A module called twice
    is recorded twice. ``stop_early``: stop the forward pass once every path in ``paths`` has
    returned (the model output is then None; later layers are neither run nor need their
    parameters). Usable inside ``jax.jit``/``jax.grad`` (outputs are the traced values).
    """
    wanted = None if paths is None else set(paths)
    calls: list[Call] = []
    seen: set[str] = set()

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == '__call__':
            path = '/'.join(str(p) for p in context.module.path)
            if path and (wanted is None or path in wanted):
                calls.append(Call(path, type(context.module).__name__, args[0] if args else None, out))
                seen.add(path)
                if stop_early and wanted is not None and seen >= wanted:
                    raise _Stop
        return out

    kwargs = {'train': train} if _accepts_train(model) else {}
    try:
        with nn.intercept_methods(interceptor):
            out = model.apply(variables, x, **kwargs)
    except _Stop:
        out = None
    return out, calls


def used_variables(model: nn.Module, variables, input_shape: Sequence[int], paths: Sequence[str]):
    """``variables`` restricted to the top-level modules run before the last of ``paths`` returns
    (what ``layer_outputs(..., stop_early=True)`` needs): drops e.g. VGG's 120M classifier weights."""
    visited: set[str] = set()
    todo = set(paths)
    spatial: list[str] = []

    def f(v, x):
        _, calls = trace_calls(model, v, x, stop_early=False)
        for c in calls:
            if todo:
                visited.add(c.path.split('/')[0])
                todo.discard(c.path)
            if getattr(c.output, 'ndim', 0) == 4 and c.path not in spatial:
                spatial.append(c.path)
        return 0

    jax.eval_shape(f, variables, jax.ShapeDtypeStruct(tuple(input_shape), np.float32))
    if todo:
        raise ValueError(
            f'no module at {sorted(todo)} in {type(model).__name__}; layers with spatial outputs: {spatial}'
        )
    return {col: {k: v for k, v in tree.items() if k in visited} for col, tree in variables.items()}


def _accepts_train(model: nn.Module) -> bool:
    import inspect

    try:
        return 'train' in inspect.signature(model.__call__).parameters
    except (TypeError, ValueError):
        return False


def layer_outputs(
    model: nn.Module, variables, x, paths: Sequence[str], *, train: bool = False, stop_early: bool = True
) -> dict[str, jax.Array]:
    """{path: output} of the modules at ``paths`` (the first call of each), running the model only
    as far as needed (``stop_early``); raises ``ValueError`` naming unknown paths and the model's
    spatial layers."""
    _, calls = trace_calls(model, variables, x, train=train, paths=paths, stop_early=stop_early)
    out: dict[str, jax.Array] = {}
    for c in calls:
        out.setdefault(c.path, c.output)
    missing = [p for p in paths if p not in out]
    if missing:
        known = list_layers(model, variables, x.shape)
        raise ValueError(
            f'no module at {missing} in {type(model).__name__}; layers with spatial outputs: {known}'
        )
    return out


def list_layers(
    model: nn.Module, variables, input_shape: Sequence[int], *, spatial_only: bool = True
) -> list[str]:
    """Module paths in execution order (those with a 4-D [N, H, W, C] output if ``spatial_only``);
    shapes only (``jax.eval_shape``), nothing computed."""
    found: list[str] = []

    def f(v, x):
        _, calls = trace_calls(model, v, x)
        for c in calls:
            if (
                not spatial_only or (hasattr(c.output, 'ndim') and c.output.ndim == 4)
            ) and c.path not in found:
                found.append(c.path)
        return 0

    jax.eval_shape(f, variables, jax.ShapeDtypeStruct(tuple(input_shape), np.float32))
    return found


def feature_map_grid(fmap, max_maps: int = 64, padding: int = 1) -> np.ndarray:
    """One example's feature maps [H, W, C] as a grid of the first ``max_maps`` channels, each
    min-max scaled on its own (so weak and strong maps are both visible): [H', W', 1]."""
    f = np.asarray(fmap, np.float32)
    if f.ndim == 4:
        f = f[0]
    c = min(f.shape[-1], max_maps)
    maps = np.moveaxis(f[..., :c], -1, 0)[..., None]  # [c, H, W, 1]
    maps = normalize01(maps, axis=(1, 2, 3))
    return make_grid(maps, padding=padding, pad_value=1.0)
