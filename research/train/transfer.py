"""Transfer learning: initialise from pretrained weights, freeze parts, per-part learning rates.

Config (see ``research.config.base_config``):

- ``init.checkpoint``: a workdir (or step directory) of this codebase, a ``.msgpack`` of Flax
  variables (``python -m research.interop.torchvision --convert NAME weights.pth``), a
  torchvision ``.pth``/``.pt`` state_dict (converted on the fly with ``init.torchvision``, default
  ``model.name``), or published torchvision weights by name, ``'torchvision:resnet50.IMAGENET1K_V2'``
  (downloaded into torch's hub cache, hash-checked, converted and cached: ``research.interop.hub``). ``init.exclude``: regex of leaf paths left at their random init -- the new head
  (e.g. ``'^head/'``, ``'^fc/'``, ``'^classifier'``). Every other leaf must exist in the source
  with the same shape, else :class:`PretrainedMismatchError` lists them.
- ``optimizer.freeze``: regex of parameter paths that do not change (feature extraction: the
  backbone; SGD momentum and weight decay never touch them). ``'pretrained'`` freezes exactly the
  leaves that ``init`` loaded. With ``optimizer.freeze_batch_stats`` (default) their BatchNorm
  running statistics stay fixed too (BN still normalises with batch statistics in training, as
  ``torch`` does with ``requires_grad=False`` parameters).
- ``optimizer.lr_multipliers``: ``('regex=factor', ...)``; a parameter takes the factor of the
  first matching pattern (1 otherwise) times the scheduled learning rate: fine-tuning with a
  smaller rate for the backbone, e.g. ``('^head/=1', '.*=0.1')``.

Paths are the parameter tree's keys joined with '/' without the collection: ``stage1_block1/
conv1/kernel``, ``head/bias``; regexes use ``re.search``. A pattern that matches no parameter is
an error (a typo would otherwise silently train everything).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np
import optax

from research import storage
from research.interop import hub
from research.interop import torchvision as tvi
from research.train.checkpoint import Checkpointer

PyTree = Any


class PretrainedMismatchError(ValueError):
    """Pretrained weights do not fit the model (missing leaves or different shapes)."""


def leaf_path(path) -> str:
    return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def leaf_paths(tree: PyTree) -> list[str]:
    return [leaf_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _compile(pattern: str, what: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f'{what}: invalid regular expression {pattern!r}: {e}') from None


# --------------------------------------------------------------------------- loading


def load_pretrained(source: str | os.PathLike, *, torchvision: str = '') -> dict[str, PyTree]:
    """{'params': ..., 'batch_stats': ...} (host arrays) from a workdir / step dir / .msgpack / .pth,
    or 'torchvision:<model>.<WEIGHTS>'."""
    if str(source).startswith('torchvision:'):
        return hub.load_variables(str(source))
    path = storage.as_path(source) if storage.is_remote(source) else Path(source).expanduser()  # gs:// too
    if not path.exists():
        raise FileNotFoundError(f'init.checkpoint not found: {str(source)!r}')
    if path.is_dir():
        step = None
        if path.name.isdigit() and (path / 'state').exists():  # a step directory
            step, path = (
                int(path.name),
                path.parent.parent if path.parent.name == 'checkpoints' else path.parent,
            )
        ckpt = Checkpointer(path, async_save=False)
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f'init.checkpoint {str(source)!r} holds no checkpoint of this codebase')
        state = ckpt.restore_raw(step)
        ckpt.close()
        return {'params': state['params'], 'batch_stats': state.get('batch_stats') or {}}
    if path.suffix == '.msgpack':
        from flax import serialization

        variables = serialization.msgpack_restore(path.read_bytes())
        return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
    if path.suffix in ('.pth', '.pt', '.bin'):
        if not torchvision:
            raise ValueError(
                f'init.checkpoint {str(source)!r} is a torch file: set init.torchvision to its architecture'
            )
        variables = tvi.from_torchvision(torchvision, path)
        return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
    raise ValueError(
        f'init.checkpoint {str(source)!r}: expected a workdir, a .msgpack or a torch .pth/.pt file'
    )


def _under(key: str, into: str) -> bool:
    return not into or key == into or key.startswith(into + '/')


def merge_pretrained(
    target: Mapping[str, PyTree], pretrained: Mapping[str, PyTree], exclude: str = '', *, into: str = ''
) -> tuple[dict[str, PyTree], list[str]]:
    """``target`` ({'params', 'batch_stats'}) with every leaf not matching ``exclude`` replaced by
    the pretrained one. ``into`` (``init.into``): a module path of the target; only its leaves are
    loaded, from the source's leaves of the same path below it (``backbone/layer1/...`` from the
    classifier's ``layer1/...``; the source's other leaves, e.g. its head, are not used). Returns
    (merged, loaded leaf paths 'collection/...')."""
    into = into.strip('/')
    rx = _compile(exclude, 'init.exclude') if exclude else None
    flat_src = {}
    for coll, tree in pretrained.items():
        for p, leaf in jax.tree_util.tree_leaves_with_path(tree):
            flat_src[f'{coll}/{leaf_path(p)}'] = leaf
    missing, wrong, loaded, considered = [], [], [], []

    def pick(coll):
        def f(p, leaf):
            key = leaf_path(p)
            if not _under(key, into):
                return leaf
            considered.append(key)
            full = f'{coll}/{key[len(into) + 1 :] if into else key}'
            if rx is not None and rx.search(key):
                return leaf
            src = flat_src.get(full)
            if src is None:
                missing.append(full)
                return leaf
            if tuple(np.shape(src)) != tuple(np.shape(leaf)):
                wrong.append(f'{full} {tuple(np.shape(src))} vs model {tuple(np.shape(leaf))}')
                return leaf
            loaded.append(full)
            return np.asarray(src, dtype=leaf.dtype)

        return f

    merged = {c: jax.tree_util.tree_map_with_path(pick(c), t) for c, t in target.items()}
    if missing or wrong:
        lines = ['pretrained weights do not fit the model:']
        if wrong:
            lines.append(f'  {len(wrong)} shape mismatches: ' + '; '.join(wrong[:6]))
        if missing:
            lines.append(f'  {len(missing)} leaves missing from the source: ' + ', '.join(missing[:6]))
        lines.append("  (leave a new head at random init with e.g. --config.init.exclude='^head/')")
        raise PretrainedMismatchError('\n'.join(lines))
    if into and not considered:
        raise ValueError(f'init.into={into!r} is not a module path of the model')
    if rx is not None and len(loaded) == len(considered):
        raise ValueError(f'init.exclude={exclude!r} matches no parameter or statistic of the model')
    return merged, loaded


# --------------------------------------------------------------------------- optimizer


def parse_multipliers(specs) -> list[tuple[re.Pattern, float]]:
    out = []
    for spec in specs or ():
        pattern, sep, factor = str(spec).rpartition('=')
        if not sep:
            raise ValueError(f"optimizer.lr_multipliers: expected 'regex=factor', got {spec!r}")
        try:
            f = float(factor)
        except ValueError:
            raise ValueError(f'optimizer.lr_multipliers: factor of {spec!r} is not a number') from None
        if f < 0:
            raise ValueError(f'optimizer.lr_multipliers: negative factor in {spec!r}')
        out.append((_compile(pattern, 'optimizer.lr_multipliers'), f))
    return out


def param_labels(
    params: PyTree, freeze: str = '', multipliers=(), exclude: str = '', into: str = ''
) -> PyTree:
    """Label per parameter: 'frozen' or 'lr_x<factor>'. ``freeze='pretrained'`` freezes exactly the
    leaves loaded by ``init``: those below ``into`` (``init.into``; all if empty) that ``exclude``
    (``init.exclude``) does not match."""
    if freeze == 'pretrained':
        into = into.strip('/')
        if not exclude and not into:
            raise ValueError(
                "optimizer.freeze='pretrained' needs init.exclude (the part to train, e.g. '^head/') "
                "or init.into (the part loaded, e.g. 'backbone')"
            )
        ex = _compile(exclude, 'init.exclude') if exclude else None
        is_frozen = lambda key: _under(key, into) and not (ex and ex.search(key))  # noqa: E731
    elif freeze:
        rx = _compile(freeze, 'optimizer.freeze')
        is_frozen = lambda key: bool(rx.search(key))  # noqa: E731
    else:
        is_frozen = lambda key: False  # noqa: E731
    mult = parse_multipliers(multipliers)

    def label(p, _):
        key = leaf_path(p)
        if is_frozen(key):
            return 'frozen'
        for pat, f in mult:
            if pat.search(key):
                return f'lr_x{f:g}'
        return 'lr_x1'

    return jax.tree_util.tree_map_with_path(label, params)


def check_patterns(params: PyTree, freeze: str = '', multipliers=()) -> None:
    """Every pattern must match at least one parameter path (else it is probably a typo)."""
    paths = leaf_paths(params)
    pats = ([('optimizer.freeze', freeze)] if freeze and freeze != 'pretrained' else []) + [
        ('optimizer.lr_multipliers', str(s).rpartition('=')[0]) for s in multipliers or ()
    ]
    for what, pattern in pats:
        rx = _compile(pattern, what)
        if not any(rx.search(p) for p in paths):
            sample = ', '.join(paths if len(paths) <= 6 else paths[:4] + ['...'] + paths[-2:])
            raise ValueError(f'{what}: {pattern!r} matches no parameter; paths look like: {sample}')


def grouped_optimizer(
    make: Callable[[optax.Schedule], optax.GradientTransformation],
    schedule: optax.Schedule,
    labels: PyTree | Callable[[PyTree], PyTree],
    factors: set[float],
) -> optax.GradientTransformation:
    """``optax.multi_transform``: frozen leaves get zero updates (no decay, no momentum), each
    'lr_x<f>' group the optimizer built by ``make`` on ``f * schedule``."""
    transforms = {'frozen': optax.set_to_zero()}
    for f in sorted(factors | {1.0}):
        transforms[f'lr_x{f:g}'] = make(lambda step, f=f: f * schedule(step))
    return optax.multi_transform(transforms, labels)


def keep_frozen_stats(frozen: Callable[[str], bool]) -> Callable[[PyTree, PyTree], PyTree]:
    """(old, new) batch stats -> new, except the statistics of frozen modules stay old. A module's
    statistics are frozen when its 'scale' (or, without one, every parameter) is frozen."""

    def merge(old, new):
        def f(p, o, n):
            module = leaf_path(p).rpartition('/')[0]
            return o if frozen(module) else n

        return jax.tree_util.tree_map_with_path(f, old, new)

    return merge


def frozen_modules(labels: PyTree) -> set[str]:
    """Module paths whose parameters are all frozen."""
    mods: dict[str, bool] = {}
    for p, lab in jax.tree_util.tree_leaves_with_path(labels):
        m = leaf_path(p).rpartition('/')[0]
        mods[m] = mods.get(m, True) and lab == 'frozen'
    return {m for m, all_frozen in mods.items() if all_frozen}
