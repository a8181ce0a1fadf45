"""torchvision <-> Flax weight conversion and output parity.

A :class:`Conversion` names a registered Flax model (``research.models``) and a ``rename``
function from a Flax module path (a tuple of submodule names) to the torchvision module prefix
(``('layer1_block1', 'conv1')`` -> ``'layer1.0.conv1'``). Leaves map by fixed rules:

========================  ===========================  ========================================
Flax leaf                 torch tensor                 layout
========================  ===========================  ========================================
params/.../kernel (N-D)   ``weight`` (O, I/g, *k)      (*k, I/g, O): axes (2, ..., n-1, 1, 0);
                                                       ConvTranspose (I, O/g, *k) -> (*k, O/g, I)
                                                       by the same permutation
params/.../kernel (2-D)   ``weight`` (O, I) of Linear  transposed; a 1x1 Conv2d weight
                          or of a 1x1 Conv2d           (O, I, 1, 1) also maps to a Dense kernel
params/.../bias           ``bias``
params/.../scale          ``weight`` (norm layers)
batch_stats/.../mean      ``running_mean``
batch_stats/.../var       ``running_var``              (``num_batches_tracked`` is ignored)
========================  ===========================  ========================================

Models that flatten a feature map into a Linear layer (AlexNet, VGG) flatten in torch's (C, H, W)
order, so no permutation is needed here. Every Flax leaf must be found and every torch tensor
used (``strict``): a mismatch raises :class:`ConversionError` naming the keys and shapes.

Conversions are registered per family in the ``research.interop.tv_*`` modules
(``CONVERSIONS`` dicts) and collected in :data:`CONVERSIONS` here.

Usage::

    from research.interop import torchvision as tvi
    variables = tvi.from_torchvision('resnet50', 'resnet50.pth')     # file, state_dict or nn.Module
    model = tvi.flax_model('resnet50')                               # the matching Flax module
    sd = tvi.to_torchvision('resnet50', variables)                   # and back (torch tensors)
    err = tvi.parity('resnet50')                                      # random torch weights, max rel. err

``python -m research.interop.torchvision --parity all`` prints the parity table for every
conversion (needs ``pip install -e '.[torch]'``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from research import models as _models

__all__ = [
    'CONVERSIONS',
    'Conversion',
    'ConversionError',
    'flax_model',
    'from_torchvision',
    'get_conversion',
    'list_conversions',
    'load_state_dict',
    'parity',
    'randomize_torch_model',
    'to_torchvision',
    'torchvision_model',
]

#: Family modules that define ``CONVERSIONS`` (filled here, in one place).
_FAMILY_MODULES = (
    'tv_resnet',
    'tv_classic',
    'tv_dense',
    'tv_mobile',
    'tv_segmentation',
    'tv_detection',
    'tv_rcnn',
)


class ConversionError(ValueError):
    """A state_dict does not fit the Flax model (missing/unused keys, shape mismatch)."""


@dataclasses.dataclass(frozen=True)
class Conversion:
    """How a torchvision model maps onto a registered Flax model.

    model: Flax registry name; model_kwargs: its constructor arguments (e.g. num_classes=1000).
    rename: Flax module path (tuple of names, without the collection and leaf) -> torch module
      prefix ('' allowed for a top-level leaf).
    input_size: (H, W) the parity check uses (the paper resolution; smaller where it is exact too).
    torchvision_kwargs: passed to ``torchvision.models.get_model`` (e.g. aux_logits=False).
    output: picks the comparable output of the torch model (e.g. ``lambda o: o['out']``).
    flax_output: same for the Flax model's output.
    heavy: skipped by the CI parity subset (run all with ``--parity all`` or ``pytest -m slow``).
    note: where torchvision and the paper differ, and which the Flax default follows.
    """

    model: str
    rename: Callable[[tuple[str, ...]], str]
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    input_size: tuple[int, int] = (224, 224)
    torchvision_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    output: Callable[[Any], Any] | None = None
    flax_output: Callable[[Any], Any] | None = None
    heavy: bool = False
    note: str = ''


_CONVERSIONS: dict[str, Conversion] | None = None


def _collect() -> dict[str, Conversion]:
    global _CONVERSIONS
    if _CONVERSIONS is None:
        table: dict[str, Conversion] = {}
        for mod in _FAMILY_MODULES:
            m = importlib.import_module(f'research.interop.{mod}')
            for name, conv in m.CONVERSIONS.items():
                if name in table:
                    raise RuntimeError(f'torchvision conversion {name!r} defined twice')
                table[name] = conv
        _CONVERSIONS = table
    return _CONVERSIONS


class _LazyTable(Mapping):
    def __getitem__(self, k):
        return _collect()[k]

    def __iter__(self):
        return iter(_collect())

    def __len__(self):
        return len(_collect())


#: torchvision model name -> Conversion (collected lazily from the family modules).
CONVERSIONS: Mapping[str, Conversion] = _LazyTable()


def list_conversions() -> list[str]:
    return sorted(_collect())


def get_conversion(name: str | Conversion) -> Conversion:
    if isinstance(name, Conversion):
        return name
    table = _collect()
    if name not in table:
        import difflib

        close = difflib.get_close_matches(str(name), list(table), n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ''
        raise ValueError(f'no torchvision conversion for {name!r}{hint}; known: {", ".join(sorted(table))}')
    return table[name]


def flax_model(name: str | Conversion, **overrides):
    """The Flax module a conversion targets (``overrides`` update its constructor arguments)."""
    conv = get_conversion(name)
    return _models.create(conv.model, **{**conv.model_kwargs, **overrides})


# --------------------------------------------------------------------------- torch side


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "torchvision interop needs PyTorch: pip install -e '.[torch]' (torch, torchvision)"
        ) from e
    return torch


def torchvision_model(name: str, **kwargs):
    """A torchvision model with random weights (no download), in eval mode."""
    import torchvision

    conv = get_conversion(name)
    m = torchvision.models.get_model(name, weights=None, **{**conv.torchvision_kwargs, **kwargs})
    return m.eval()


def randomize_torch_model(module, seed: int = 0):
    """Gives every norm layer non-trivial affine parameters and running statistics (the default
    init has scale 1, shift 0, mean 0, var 1, which would hide a swapped or ignored tensor)."""
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                c = m.running_mean.shape[0]
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            if isinstance(m, (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)):
                if getattr(m, 'weight', None) is not None:
                    m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return module


def load_state_dict(source) -> dict[str, np.ndarray]:
    """A state_dict as numpy arrays (copies: no memory shared with the source's tensors), from a file path (torch.save'd state_dict or a checkpoint
    dict with 'state_dict'/'model'), a mapping of tensors, or an ``nn.Module``."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f'torch weights file not found: {path!r}')
        torch = _torch()
        try:
            source = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:
            raise ConversionError(f'cannot read torch weights file {path!r}: {e}') from e
        if isinstance(source, Mapping):
            for key in ('state_dict', 'model', 'model_state_dict'):
                if key in source and isinstance(source[key], Mapping):
                    source = source[key]
                    break
    if hasattr(source, 'state_dict') and callable(source.state_dict):
        source = source.state_dict()
    if not isinstance(source, Mapping):
        raise ConversionError(f'expected a state_dict, a file or an nn.Module; got {type(source).__name__}')
    out = {}
    for k, v in source.items():
        if hasattr(v, 'detach'):
            v = v.detach().cpu().numpy()
        # a copy: ``.numpy()`` of a CPU tensor (and jnp.asarray of that, on CPU) shares its memory,
        # so an in-place change to the torch model afterwards would change the converted arrays
        out[k.removeprefix('module.')] = np.array(v, copy=True)
    return out


# --------------------------------------------------------------------------- mapping

_LEAF = {
    ('params', 'kernel'): 'weight',
    ('params', 'bias'): 'bias',
    ('params', 'scale'): 'weight',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}


def _key_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def _torch_key(conv: Conversion, collection: str, module_path: tuple[str, ...], leaf: str) -> str:
    try:
        suffix = _LEAF[(collection, leaf)]
    except KeyError:
        raise ConversionError(
            f'no torch counterpart rule for {collection}/{"/".join(module_path)}/{leaf}'
        ) from None
    prefix = conv.rename(module_path)
    return f'{prefix}.{suffix}' if prefix else suffix


def _to_flax_layout(t: np.ndarray, flax_shape: tuple[int, ...], where: str) -> np.ndarray:
    if len(flax_shape) >= 3 and t.ndim == len(flax_shape):
        t = np.transpose(t, tuple(range(2, t.ndim)) + (1, 0))
    elif len(flax_shape) == 2 and t.ndim == 2:
        t = t.T
    elif len(flax_shape) == 2 and t.ndim == 4 and t.shape[2:] == (1, 1):
        t = t[:, :, 0, 0].T
    if tuple(t.shape) != tuple(flax_shape):
        raise ConversionError(f'shape mismatch at {where}: torch gives {t.shape}, Flax expects {flax_shape}')
    return t


def _to_torch_layout(a: np.ndarray, torch_shape: tuple[int, ...] | None) -> np.ndarray:
    if a.ndim >= 3:
        return np.transpose(a, (a.ndim - 1, a.ndim - 2) + tuple(range(a.ndim - 2)))
    if a.ndim == 2:
        a = a.T
        if torch_shape is not None and len(torch_shape) == 4:
            a = a[:, :, None, None]
    return a


def _abstract(conv: Conversion, model) -> dict:
    h, w = conv.input_size
    return _models.abstract_variables(model, (1, h, w, 3))


def from_torchvision(
    name: str | Conversion,
    source,
    *,
    model=None,
    strict: bool = True,
    exclude: Callable[[str], bool] | None = None,
) -> dict:
    """Flax variables ({'params', 'batch_stats'}) from torchvision weights.

    source: a weights file, a state_dict or an nn.Module. model: the Flax module (default
    :func:`flax_model`). strict: every Flax leaf must be found and every torch tensor used.
    exclude(torch_key) -> True skips that tensor on both sides (e.g. the classifier when the
    head changes; skipped Flax leaves are left out of the result).
    """
    conv = get_conversion(name)
    model = model if model is not None else flax_model(conv)
    sd = load_state_dict(source)
    target = _abstract(conv, model)
    used: set[str] = set()
    missing: list[str] = []
    flat = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(target):
        names = _key_names(path)
        key = _torch_key(conv, names[0], names[1:-1], names[-1])
        if exclude is not None and exclude(key):
            continue
        where = f'{"/".join(names)} <- {key}'
        if key not in sd:
            missing.append(where)
            continue
        used.add(key)
        flat[names] = jnp.asarray(_to_flax_layout(sd[key], tuple(leaf.shape), where), dtype=leaf.dtype)
    unused = sorted(
        k
        for k in sd
        if k not in used
        and not k.endswith('num_batches_tracked')
        and not (exclude is not None and exclude(k))
    )
    if strict and (missing or unused):
        msg = [f'torchvision weights do not fit {conv.model!r}:']
        if missing:
            msg.append(f'  {len(missing)} Flax leaves without a torch tensor: ' + '; '.join(missing[:8]))
        if unused:
            msg.append(f'  {len(unused)} torch tensors unused: ' + ', '.join(unused[:8]))
        raise ConversionError('\n'.join(msg))
    out: dict = {}
    for names, arr in flat.items():
        d = out
        for n in names[:-1]:
            d = d.setdefault(n, {})
        d[names[-1]] = arr
    return out


def to_torchvision(name: str | Conversion, variables, *, as_torch: bool = True) -> dict:
    """torchvision state_dict from Flax variables (torch tensors, or numpy if ``as_torch=False``);
    loads with ``load_state_dict(strict=True)`` into ``torchvision_model(name)``."""
    conv = get_conversion(name)
    sd: dict[str, Any] = {}
    shapes = None
    if as_torch:
        shapes = {k: tuple(v.shape) for k, v in torchvision_model(name).state_dict().items()}
    for path, leaf in jax.tree_util.tree_leaves_with_path(dict(variables)):
        names = _key_names(path)
        key = _torch_key(conv, names[0], names[1:-1], names[-1])
        sd[key] = _to_torch_layout(np.asarray(leaf), shapes.get(key) if shapes else None)
        if names[0] == 'batch_stats' and names[-1] == 'mean':
            sd[key.removesuffix('running_mean') + 'num_batches_tracked'] = np.asarray(0, np.int64)
    if as_torch:
        torch = _torch()
        sd = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
    return sd


# --------------------------------------------------------------------------- parity


def _first(out):
    if isinstance(out, (tuple, list)):
        return out[0]
    if isinstance(out, Mapping) and 'out' in out:
        return out['out']
    return getattr(out, 'logits', out)


def parity(name: str, *, batch: int = 2, seed: int = 0, input_size=None) -> float:
    """Builds ``name`` in torchvision with random weights (and random norm statistics), converts
    them, runs both in eval mode on the same random images and returns the max relative error
    max|flax - torch| / max|torch| of the outputs."""
    torch = _torch()
    conv = get_conversion(name)
    torch.manual_seed(seed)
    tm = randomize_torch_model(torchvision_model(name), seed)
    variables = from_torchvision(conv, tm)
    model = flax_model(conv)
    h, w = input_size or conv.input_size
    x = np.random.default_rng(seed).standard_normal((batch, 3, h, w)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x))
    ref = (conv.output or _first)(ref)
    ref = ref.detach().numpy() if hasattr(ref, 'detach') else np.asarray(ref)
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, jnp.asarray(x.transpose(0, 2, 3, 1))
    )
    out = np.asarray((conv.flax_output or _first)(out))
    if ref.ndim == 4 and out.ndim == 4:  # dense predictions: compare in NCHW
        out = out.transpose(0, 3, 1, 2)
    if out.shape != ref.shape:
        raise ConversionError(f'{name}: output shapes differ: Flax {out.shape}, torch {ref.shape}')
    return float(np.max(np.abs(out - ref)) / max(np.max(np.abs(ref)), 1e-12))


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--parity', nargs='+', metavar='NAME', help="torchvision names or 'all' / 'light'")
    p.add_argument('--convert', nargs=2, metavar=('NAME', 'WEIGHTS'), help='convert a .pth file to msgpack')
    p.add_argument('--out', help='output path for --convert (default: WEIGHTS with .msgpack)')
    args = p.parse_args(argv)
    if args.convert:
        from flax import serialization

        name, path = args.convert
        variables = from_torchvision(name, path)
        out = args.out or os.path.splitext(path)[0] + '.msgpack'
        with open(out, 'wb') as f:
            f.write(serialization.msgpack_serialize(jax.tree.map(np.asarray, variables)))
        print(f'wrote {out} ({_models.count_params(variables):,} params)')
        return 0
    if not args.parity:
        p.print_help()
        return 2
    names = args.parity
    if names == ['all']:
        names = list_conversions()
    elif names == ['light']:
        names = [n for n in list_conversions() if not get_conversion(n).heavy]
    print('| torchvision model | Flax model | params | max rel. error | seconds |')
    print('|---|---|---|---|---|')
    worst = 0.0
    for n in names:
        t = time.perf_counter()
        err = parity(n)
        conv = get_conversion(n)
        params = _models.count_params(_abstract(conv, flax_model(conv)))
        worst = max(worst, err)
        print(f'| {n} | {conv.model} | {params:,} | {err:.2e} | {time.perf_counter() - t:.1f} |', flush=True)
    print(f'worst: {worst:.2e}')
    return 0 if worst < 1e-4 else 1


if __name__ == '__main__':
    # Run the imported module's _main: the family modules register instances of
    # research.interop.torchvision.Conversion, not of this __main__ copy's class.
    from research.interop.torchvision import _main as _package_main

    sys.exit(_package_main())
