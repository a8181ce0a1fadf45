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
    model, variables = tvi.convert('googlenet', torch_module)        # model built from the module's flags
    sd = tvi.to_torchvision('resnet50', variables)                   # and back (torch tensors)
    report = tvi.parity('resnet50')    # calibrated BN statistics; .error, .input_error, .sensitivity

Converted arrays are copies (no memory shared with the torch tensors). Constructor flags that change
the computation (``transform_input``, ``aux_logits``, ``aux``, dropout rates, classes) are read from a
torch module (``Conversion.flags``); a bare state_dict cannot tell ``transform_input``, which then
keeps the Flax default (torchvision's pretrained weights' ``True``), said in a one-line warning.

``python -m research.interop.torchvision --parity all --write docs/parity.md`` writes the parity table
of every conversion (calibrated BatchNorm statistics, plain and input-dependent errors, float32 and
float64; needs ``pip install -e '.[torch]'``).
``--evaluate resnet50.IMAGENET1K_V2 --data FOLDER`` measures published weights' top-1 on an image
folder (:mod:`research.interop.hub`, which also resolves ``init.checkpoint='torchvision:<model>.<WEIGHTS>'``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import io
import os
import sys
import time
import warnings
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from research import models as _models
from research import storage

__all__ = [
    'CONVERSIONS',
    'Conversion',
    'ConversionError',
    'ParityReport',
    'calibrate_batchnorm',
    'calibration_images',
    'classifier_flags',
    'convert',
    'flax_model',
    'from_torchvision',
    'get_conversion',
    'list_conversions',
    'load_state_dict',
    'parity',
    'randomize_torch_model',
    'to_torchvision',
    'torch_flags',
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
    flags: ``(module or None, state_dict) -> Flax constructor arguments`` read from the torch model
      (constructor flags such as ``transform_input``, ``aux_logits``, dropout rates; from the module's
      attributes when a module is given, else what the tensors tell, e.g. an aux head's presence).
    assumes: one line naming what a state_dict cannot tell and the Flax default the converter then
      keeps (e.g. ``transform_input=True``); said in a warning when a bare state_dict / file is
      converted without that argument given explicitly.
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
    flags: Callable[[Any, Mapping[str, np.ndarray]], dict] | None = None
    assumes: Mapping[str, Any] = dataclasses.field(default_factory=dict)


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
        hint = f' (did you mean {", ".join(map(repr, close))}?)' if close else ''
        raise ValueError(f'no torchvision conversion for {name!r}{hint}; known: {", ".join(sorted(table))}')
    return table[name]


def _is_module(source) -> bool:
    return hasattr(source, 'state_dict') and callable(source.state_dict) and hasattr(source, 'modules')


def classifier_flags(module, state_dict) -> dict:
    """The default ``Conversion.flags`` of the classifiers: from a module, ``num_classes`` (its
    ``num_classes`` attribute or its last ``nn.Linear``'s outputs) and ``dropout_rate`` (its last
    ``nn.Dropout``'s p); nothing from a state_dict (a class-count mismatch is named by the strict
    conversion)."""
    if module is None:
        return {}
    torch = _torch()
    out = {}
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    classes = getattr(module, 'num_classes', None) or (linears[-1].out_features if linears else None)
    if classes is not None:
        out['num_classes'] = int(classes)
    drops = [m for m in module.modules() if isinstance(m, torch.nn.Dropout)]
    if drops:
        out['dropout_rate'] = float(drops[-1].p)
    return out


def _model_fields(conv: Conversion) -> set[str]:
    f = _models.get_constructor(conv.model)
    while isinstance(f, functools.partial):
        f = f.func
    return {fld.name for fld in dataclasses.fields(f)}


def torch_flags(name: str | Conversion, source) -> dict:
    """The Flax constructor arguments a torch model fixes (``Conversion.flags``, default
    :func:`classifier_flags` for models with ``num_classes``): read from an ``nn.Module``'s attributes
    (``transform_input``, ``aux_logits``, dropout, classes, ...), or from a state_dict / file what
    its tensors tell (e.g. an aux head's presence). Only arguments the Flax model has are returned."""
    conv = get_conversion(name)
    flags = conv.flags or (classifier_flags if 'num_classes' in conv.model_kwargs else None)
    if flags is None or source is None:
        return {}
    if _is_module(source):
        out = flags(source, None)
    else:
        out = flags(None, source if isinstance(source, Mapping) else load_state_dict(source))
    fields = _model_fields(conv)
    return {k: v for k, v in out.items() if k in fields}


def flax_model(name: str | Conversion, source=None, **overrides):
    """The Flax module a conversion targets: ``Conversion.model_kwargs``, updated by what the torch
    ``source`` (an nn.Module, a state_dict or a file; optional) fixes (:func:`torch_flags`), updated by
    ``overrides``. For a source that is not a module, the flags it cannot tell (``Conversion.assumes``,
    e.g. googlenet's ``transform_input``) keep the Flax defaults, said in a one-line warning unless
    given in ``overrides``."""
    conv = get_conversion(name)
    kwargs = {**conv.model_kwargs, **torch_flags(conv, source)}
    if source is not None and not _is_module(source):
        unsaid = {k: v for k, v in conv.assumes.items() if k not in overrides}
        if unsaid:
            assumed = ', '.join(f'{k}={v!r}' for k, v in unsaid.items())
            warnings.warn(
                f'{conv.model}: a state_dict does not record {", ".join(unsaid)}; assuming {assumed} '
                "(torchvision's pretrained weights); pass it explicitly (or an nn.Module) "
                'if the weights differ',
                stacklevel=2,
            )
    return _models.create(conv.model, **{**kwargs, **overrides})


def convert(name: str | Conversion, source, *, strict: bool = True, exclude=None, **overrides):
    """``(model, variables)``: the Flax model matching the torch ``source`` (:func:`flax_model`: flags
    read from a module, ``overrides`` for the rest) and its variables (:func:`from_torchvision`)."""
    conv = get_conversion(name)
    sd = load_state_dict(source)
    model = flax_model(conv, source if _is_module(source) else sd, **overrides)
    return model, from_torchvision(conv, sd, model=model, strict=strict, exclude=exclude)


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
    """A state_dict as numpy arrays (copies: no memory shared with the source's tensors), from a file
    path (torch.save'd state_dict or a checkpoint dict with 'state_dict'/'model'), a mapping of tensors,
    or an ``nn.Module``."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        remote = storage.is_remote(path)  # gs://... (etils.epath): read into memory
        if not (storage.as_path(path).exists() if remote else os.path.exists(path)):
            raise FileNotFoundError(f'torch weights file not found: {path!r}')
        torch = _torch()
        try:
            f = io.BytesIO(storage.as_path(path).read_bytes()) if remote else path
            source = torch.load(f, map_location='cpu', weights_only=True)
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
    dtype=None,
) -> dict:
    """Flax variables ({'params', 'batch_stats'}) from torchvision weights.

    source: a weights file, a state_dict or an nn.Module. model: the Flax module (default
    ``flax_model(name, source)``: the flags the torch model fixes, e.g. a googlenet built with
    ``transform_input=False`` gives a Flax googlenet without it; :func:`convert` returns that model
    too). strict: every Flax leaf must be found and every torch tensor used.
    exclude(torch_key) -> True skips that tensor on both sides (e.g. the classifier when the
    head changes; skipped Flax leaves are left out of the result). dtype: of every leaf (default the
    Flax model's; e.g. float64 for a float64 parity check, from float64 tensors).
    """
    conv = get_conversion(name)
    sd = load_state_dict(source)
    model = model if model is not None else flax_model(conv, source if _is_module(source) else sd)
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
        flat[names] = jnp.asarray(
            _to_flax_layout(sd[key], tuple(leaf.shape), where), dtype=dtype or leaf.dtype
        )
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


#: ImageNet normalisation of the calibration / evaluation images (torchvision's weights' transform).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def calibration_images(n: int, size: tuple[int, int], seed: int = 0, grid: int = 3) -> np.ndarray:
    """``n`` real-image inputs (N, 3, H, W), float32, ImageNet-normalised: each a ``grid`` x ``grid``
    mosaic of scikit-learn's bundled handwritten digits (8x8, 16 grey levels; no download), every
    tile bilinearly upscaled and drawn in its own colour on its own background colour. Structured
    inputs (strokes, edges, flat regions, colours) whose statistics differ from Gaussian noise's, so
    that BatchNorm statistics calibrated on them keep activations of size ~1 on similar images."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits().images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    rng = np.random.default_rng(seed)
    h, w = size
    th, tw = -(-h // grid), -(-w // grid)
    out = np.empty((n, 3, h, w), np.float32)
    for i in range(n):
        img = np.empty((grid * th, grid * tw, 3), np.float32)
        for r in range(grid):
            for c in range(grid):
                d = digits[rng.integers(len(digits))]
                d = np.asarray(Image.fromarray(d).resize((tw, th), Image.BILINEAR))[..., None]
                fg, bg = rng.random(3), rng.random(3)
                img[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = d * fg + (1 - d) * bg
        out[i] = ((img[:h, :w] - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    return out


def calibrate_batchnorm(module, images: np.ndarray, batch_size: int = 4):
    """Sets every BatchNorm layer's running statistics of the torch ``module`` to those of ``images``
    (N, 3, H, W): the layers in train mode (the rest in eval mode: no dropout, no stochastic depth),
    torch's cumulative average (``momentum=None``: over one batch that is momentum 1; over several,
    their mean) from reset statistics, one forward per batch of ``batch_size``; then eval mode.
    torchvision's ``FrozenBatchNorm2d`` (detection backbones) is treated alike: it normalises each
    batch with the batch's statistics and keeps their mean over the batches (unbiased variance).
    Random weights with statistics calibrated this way keep activations around size 1, so outputs
    depend on the input (random statistics leave some nets nearly constant in it). Returns ``module``."""
    torch = _torch()
    norms = [
        m
        for m in module.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    frozen = [m for m in module.modules() if type(m).__name__ == 'FrozenBatchNorm2d']
    sums = {id(m): [0.0, 0.0, 0] for m in frozen}

    def batch_stats(m, args):  # FrozenBatchNorm2d normalises with the batch statistics
        x = args[0]
        m.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        m.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))
        acc = sums[id(m)]
        acc[0] = acc[0] + m.running_mean.clone()
        acc[1] = acc[1] + x.var(dim=(0, 2, 3), unbiased=True)
        acc[2] += 1

    module.eval()
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    hooks = [m.register_forward_pre_hook(batch_stats) for m in frozen]
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                module(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])))
    finally:
        for h in hooks:
            h.remove()
        for m, mom in zip(norms, saved):
            m.momentum = mom
    with torch.no_grad():
        for m in frozen:
            mean, var, k = sums[id(m)]
            if k:
                m.running_mean.copy_(mean / k)
                m.running_var.copy_(var / k)
    return module.eval()


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """Flax vs torch on two images. ``error``: max|flax - torch| / max|torch| over both outputs;
    ``input_error``: the same of the input-dependent part, the difference between the two images'
    outputs (max|(f1 - f2) - (t1 - t2)| / max|t1 - t2|), which a bias-dominated output cannot hide;
    ``sensitivity``: max|t1 - t2| / max|t| (how much the output depends on the input at all); ``aux_*``:
    the same for an auxiliary head's output (segmentation models with ``aux``; None without)."""

    name: str
    dtype: str
    error: float
    input_error: float
    sensitivity: float
    aux_error: float | None = None
    aux_input_error: float | None = None

    @property
    def worst(self) -> float:
        errs = (self.error, self.input_error, self.aux_error, self.aux_input_error)
        return max(e for e in errs if e is not None)


def _errors(out: np.ndarray, ref: np.ndarray, name: str) -> tuple[float, float, float]:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    if ref.ndim == 4 and out.ndim == 4:  # dense predictions: compare in NCHW
        out = out.transpose(0, 3, 1, 2)
    if out.shape != ref.shape:
        raise ConversionError(f'{name}: output shapes differ: Flax {out.shape}, torch {ref.shape}')
    scale = max(np.max(np.abs(ref)), 1e-300)
    dref, dout = ref[0] - ref[1], out[0] - out[1]
    dscale = max(np.max(np.abs(dref)), 1e-300)
    return (
        float(np.max(np.abs(out - ref)) / scale),
        float(np.max(np.abs(dout - dref)) / dscale),
        float(dscale / scale),
    )


def _numpy(t):
    return t.detach().cpu().numpy() if hasattr(t, 'detach') else np.asarray(t)


def parity(
    name: str | Conversion,
    *,
    seed: int = 0,
    input_size=None,
    dtype: str = 'float32',
    calibrate: bool | None = True,
    torch_model=None,
    calibration_batches: int = 3,
    batch_size: int = 4,
) -> ParityReport:
    """torchvision ``name`` with random weights (or ``torch_model``) against its Flax conversion, both
    in eval mode, on two real-image inputs (:func:`calibration_images`) of ``input_size`` (default the
    conversion's). The norm layers' affine parameters are randomised (:func:`randomize_torch_model`:
    the default scale 1 / shift 0 would hide a swapped tensor); with ``calibrate`` the BatchNorm
    statistics are then calibrated on ``calibration_batches`` x ``batch_size`` other such images
    (:func:`calibrate_batchnorm`), with False they stay randomised (the check before issue 27); with
    None a given ``torch_model`` is used as it is. ``dtype='float64'`` runs both frameworks in float64
    (torch ``.double()``, JAX x64, the Flax model's ``dtype``; models that return float32 logits
    round there). The Flax model is built from the torch module's flags (:func:`flax_model`)."""
    torch = _torch()
    conv = get_conversion(name)
    label = name if isinstance(name, str) else conv.model
    h, w = input_size or conv.input_size
    torch.manual_seed(seed)
    tm = torch_model if torch_model is not None else torchvision_model(label)
    if calibrate is not None:  # non-trivial affine parameters (and, without calibration, statistics)
        randomize_torch_model(tm.eval(), seed)
    if calibrate:
        calibrate_batchnorm(
            tm, calibration_images(calibration_batches * batch_size, (h, w), seed + 1), batch_size
        )
    tm.eval()
    x = calibration_images(2, (h, w), seed + 2)
    aux = 'aux' in _model_fields(conv) and torch_flags(conv, tm).get('aux', False)
    f64 = dtype == 'float64'
    if dtype not in ('float32', 'float64'):
        raise ValueError(f"parity dtype must be 'float32' or 'float64'; got {dtype!r}")
    with jax.enable_x64(f64):
        if f64:
            tm = tm.double()
            x = x.astype(np.float64)
        with torch.no_grad():
            ref = tm(torch.from_numpy(x))
        overrides = {'dtype': jnp.float64} if f64 and 'dtype' in _model_fields(conv) else {}
        model = flax_model(conv, tm, **overrides)
        variables = from_torchvision(conv, tm, model=model, dtype=jnp.float64 if f64 else None)

        def forward(v, x):
            if aux:
                out, extra = model.apply(v, x, train=False, return_aux=True)
                return (conv.flax_output or _first)(out), extra['aux']
            return (conv.flax_output or _first)(model.apply(v, x, train=False)), None

        out, out_aux = jax.jit(forward)(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    err, dep, sens = _errors(np.asarray(out), _numpy((conv.output or _first)(ref)), label)
    aux_err = aux_dep = None
    if aux:
        aux_err, aux_dep, _ = _errors(np.asarray(out_aux), _numpy(ref['aux']), f'{label} (aux)')
    if f64:
        tm.float()
    return ParityReport(label, dtype, err, dep, sens, aux_err, aux_dep)


def _torch_sensitivity(tm, x) -> float:
    """max|t1 - t2| / max|t| of the torch model's (first) output on two images."""
    torch = _torch()
    with torch.no_grad():
        ref = _numpy(_first(tm(torch.from_numpy(x)))).astype(np.float64)
    return float(np.max(np.abs(ref[0] - ref[1])) / max(np.max(np.abs(ref)), 1e-300))


#: ``--write PATH`` replaces the text between these markers of an existing page (or writes a page).
TABLE_BEGIN, TABLE_END = '<!-- parity-table:begin -->', '<!-- parity-table:end -->'

_TABLE_HEAD = """Generated by

```bash
{command}
```

(torchvision {tv}, torch {torch}, jax {jax}, CPU; {date}; {seconds:.0f} s on 2 shared cores). Columns:
params of the Flax model, input side in px, **error** = max |flax - torch| / max |torch| over both
images, **input-dep.** = the same of the input-dependent part (f1 - f2 vs t1 - t2), in float32 and
float64, **sens.** = max |t1 - t2| / max |t| with calibrated statistics and (torch only) with the
randomised statistics of the check before issue 27.

"""


def _write_table(path, rows, aux_rows, meta):
    lines = [TABLE_BEGIN, _TABLE_HEAD.format(**meta)]
    lines.append(
        '| torchvision model | Flax model | params | input | error f32 | input-dep. f32 | error f64 '
        '| input-dep. f64 | sens. | sens. (random BN) |'
    )
    lines.append('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|')
    lines += rows
    if aux_rows:
        lines += ['', 'Aux heads (`return_aux=True` against torchvision\'s `out["aux"]`):', '']
        lines.append('| torchvision model | error f32 | input-dep. f32 | error f64 | input-dep. f64 |')
        lines.append('|---|---:|---:|---:|---:|')
        lines += aux_rows
    lines += ['', meta['summary'], TABLE_END]
    block = '\n'.join(lines)
    page = f'# torchvision parity\n\n{block}\n'
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if TABLE_BEGIN in old and TABLE_END in old:
            page = old[: old.index(TABLE_BEGIN)] + block + old[old.index(TABLE_END) + len(TABLE_END) :]
    with open(path, 'w') as f:
        f.write(page)


def parity_table(names, *, float64: bool = True, write: str | None = None, command: str = '') -> float:
    """Runs :func:`parity` (calibrated, float32 and float64) for ``names``, prints a Markdown row per
    model and (``write``) writes the page (rewritten after every row); returns the worst error."""
    import datetime

    import torch
    import torchvision

    t0 = time.perf_counter()
    rows, aux_rows, worst = [], [], {'float32': 0.0, 'float64': 0.0}
    meta = dict(
        tv=torchvision.__version__.split('+')[0],
        torch=torch.__version__.split('+')[0],
        jax=jax.__version__,
        date=datetime.date.today().isoformat(),
        command=command,
        seconds=0.0,
        summary='',
    )
    for n in names:
        t = time.perf_counter()
        conv = get_conversion(n)
        h, w = conv.input_size
        torch.manual_seed(0)
        tm = torchvision_model(n)
        x = calibration_images(2, (h, w), 2)
        randomize_torch_model(tm, 0)
        random_sens = _torch_sensitivity(tm, x)
        calibrate_batchnorm(tm, calibration_images(12, (h, w), 1), 4)
        reports = {'float32': parity(n, torch_model=tm, calibrate=None)}
        if float64:
            reports['float64'] = parity(n, torch_model=tm, calibrate=None, dtype='float64')
        for dt, r in reports.items():
            worst[dt] = max(worst[dt], r.worst)
        r32, r64 = reports['float32'], reports.get('float64')

        def cells(a, b):
            return f'{a:.1e}' + (f' | {b:.1e}' if b is not None else ' | -')

        params = _models.count_params(_abstract(conv, flax_model(conv)))
        row = (
            f'| {n} | {conv.model} | {params:,} | {h} | {r32.error:.1e} | {r32.input_error:.1e} | '
            + (f'{r64.error:.1e} | {r64.input_error:.1e}' if r64 else '- | -')
            + f' | {r32.sensitivity:.2f} | {random_sens:.1e} |'
        )
        rows.append(row)
        print(row, f'{time.perf_counter() - t:.0f} s', flush=True)
        if r32.aux_error is not None:
            aux_rows.append(
                f'| {n} | {r32.aux_error:.1e} | {r32.aux_input_error:.1e} | '
                + (f'{r64.aux_error:.1e} | {r64.aux_input_error:.1e} |' if r64 else '- | - |')
            )
        meta['seconds'] = time.perf_counter() - t0
        meta['summary'] = (
            f'{len(rows)} models; worst float32 error (plain, input-dependent or aux) {worst["float32"]:.1e}'
            + (f', worst float64 {worst["float64"]:.1e}.' if float64 else '.')
        )
        if write:
            _write_table(write, rows, aux_rows, meta)
    print(meta['summary'])
    return worst['float32']


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--parity', nargs='+', metavar='NAME', help="torchvision names or 'all' / 'light'")
    p.add_argument('--no_float64', action='store_true', help='--parity: float32 only')
    p.add_argument(
        '--write', metavar='PATH', help='--parity: write the table into a Markdown page (e.g. docs/parity.md)'
    )
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
    command = 'python -m research.interop.torchvision ' + ' '.join(argv if argv is not None else sys.argv[1:])
    worst = parity_table(names, float64=not args.no_float64, write=args.write, command=command)
    return 0 if worst < 1e-4 else 1


if __name__ == '__main__':
    if '--evaluate' in sys.argv[1:]:  # published weights on an image folder (research/interop/hub.py)
        from research.interop.hub import main as _hub_main

        sys.exit(_hub_main())
    # Run the imported module's _main: the family modules register instances of
    # research.interop.torchvision.Conversion, not of this __main__ copy's class.
    from research.interop.torchvision import _main as _package_main

    sys.exit(_package_main())
