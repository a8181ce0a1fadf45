"""Published torchvision weights by name: download (torch's hub cache), hash check, conversion, cache.

``init.checkpoint='torchvision:resnet50.IMAGENET1K_V2'`` (``'torchvision:<model>[.<WEIGHTS>]'``,
``DEFAULT`` when the weights are left out; any torchvision model with a conversion in
:mod:`research.interop.torchvision`) resolves as ``torchvision.models.get_model_weights(model)``:

1. the file is ``$TORCH_HOME/hub/checkpoints/<basename of the weights' URL>`` (torch.hub's layout,
   e.g. ``resnet50-11ad3fa6.pth``; ``torch.hub.get_dir()``), downloaded there with
   ``torch.hub.download_url_to_file(url, path, hash_prefix)`` when absent, which checks the file's
   SHA-256 against the hash prefix in its name (``torch.hub.load_state_dict_from_url(check_hash=True)``'s
   check) and deletes a file that does not match. A file already in the cache is used as is, as
   torch.hub does (that is also how to supply the weights offline: copy the ``.pth`` there);
2. it is converted with :func:`research.interop.torchvision.from_torchvision` and the Flax variables
   are cached as ``$TORCH_HOME/hub/checkpoints/flax/<model>.<WEIGHTS>.msgpack`` with the eval
   preprocessing of the weights (``<...>.json``: resize, crop, mean, std, categories). The next
   run loads the msgpack and needs neither the download nor torch.

``python -m research.interop.torchvision --evaluate resnet50.IMAGENET1K_V2 --data FOLDER`` measures
a converted model's top-1 / top-5 on an image folder (``<split>/<class>/<image>``, class folders
named as the weights' categories or the 1,000 ImageNet synsets in order) with the weights' own
preprocessing (resize shorter side, center crop, ImageNet normalisation) through this package's
eval pipeline: :func:`evaluate`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from research import data as data_lib
from research.data import datasets
from research.interop import torchvision as tvi

PREFIX = 'torchvision:'


class WeightsError(ValueError):
    """Weights that cannot be resolved, fetched or verified (the message names the cause)."""


def parse_spec(spec: str) -> tuple[str, str]:
    """'torchvision:resnet50.IMAGENET1K_V2' (prefix optional) -> ('resnet50', 'IMAGENET1K_V2');
    no weights name -> 'DEFAULT'."""
    body = str(spec).removeprefix(PREFIX).strip()
    model, _, weights = body.partition('.')
    if not model:
        raise WeightsError(
            f'{spec!r}: expected torchvision:<model>[.<WEIGHTS>], e.g. torchvision:resnet50.IMAGENET1K_V2'
        )
    return model, weights or 'DEFAULT'


def hub_dir() -> Path:
    """torch.hub's directory ($TORCH_HOME/hub, default ~/.cache/torch/hub), without importing torch."""
    torch_home = os.environ.get('TORCH_HOME') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'torch'
    )
    return Path(torch_home).expanduser() / 'hub'


def _flax_cache(model: str, weights: str) -> tuple[Path, Path]:
    folder = hub_dir() / 'checkpoints' / 'flax'
    return folder / f'{model}.{weights}.msgpack', folder / f'{model}.{weights}.json'


def weights_entry(model: str, weights: str):
    """The torchvision ``WeightsEnum`` member (needs torchvision)."""
    try:
        import torchvision
    except ImportError as e:
        raise WeightsError(
            f'torchvision:{model}.{weights} is not converted yet and converting needs torchvision: '
            "pip install -e '.[torch]'"
        ) from e
    try:
        enum = torchvision.models.get_model_weights(model)
    except (ValueError, KeyError):
        raise WeightsError(f'torchvision has no model {model!r} with published weights') from None
    try:
        return enum[weights] if weights != 'DEFAULT' else enum.DEFAULT
    except KeyError:
        known = [k for k in enum.__members__ if k != 'DEFAULT']
        raise WeightsError(
            f'{model} has no weights {weights!r}; published: {", ".join(known)} (or DEFAULT)'
        ) from None


def hash_prefix(url: str) -> str | None:
    """The hash prefix in a torch.hub file name (``resnet50-11ad3fa6.pth`` -> '11ad3fa6')."""
    m = re.search(r'-([a-f0-9]*)\.', os.path.basename(urlparse(url).path))
    return m.group(1) if m else None


def fetch(url: str, *, check_hash: bool = True) -> Path:
    """The weights file of ``url`` in torch.hub's cache, downloaded (and its SHA-256 checked against
    the name's hash prefix) if absent. A cached file is trusted, as torch.hub does."""
    path = hub_dir() / 'checkpoints' / os.path.basename(urlparse(url).path)
    if path.exists():
        return path
    import torch.hub

    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = hash_prefix(url) if check_hash else None
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix, progress=False)
    except RuntimeError as e:  # torch's 'invalid hash value (expected ..., got ...)'
        raise WeightsError(f'downloaded {url} does not match its hash prefix {prefix!r}: {e}') from None
    except OSError as e:
        raise WeightsError(
            f'weights not in the hub cache ({path}) and the download of {url} failed ({e}); '
            'copy the file there (torch.hub layout) to use it offline'
        ) from None
    return path


def _preprocessing(entry) -> dict:
    """The eval preprocessing of classification weights (``entry.transforms``' arguments)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    t = entry.transforms
    kw = dict(getattr(t, 'keywords', {}))
    if getattr(t, 'func', None) is not ImageClassification:
        return {}
    preset = t()
    return {
        'resize': int(preset.resize_size[0]),
        'crop': int(preset.crop_size[0]),
        'mean': [float(m) for m in preset.mean],
        'std': [float(s) for s in preset.std],
        'bilinear': preset.interpolation == InterpolationMode.BILINEAR and bool(kw.get('antialias', True)),
        'categories': list(entry.meta.get('categories') or []),
    }


def resolve(spec: str) -> dict:
    """{'model', 'weights', 'msgpack', 'meta'}: the cached conversion of ``spec``, made if needed."""
    model, weights = parse_spec(spec)
    msgpack, meta_path = _flax_cache(model, weights)
    if not msgpack.exists() and weights == 'DEFAULT':
        weights = weights_entry(model, weights).name
        msgpack, meta_path = _flax_cache(model, weights)
    if not msgpack.exists():
        tvi.get_conversion(model)  # no conversion: a clear error before any download
        entry = weights_entry(model, weights)
        path = fetch(entry.url)
        variables = tvi.from_torchvision(model, path)
        msgpack.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            'model': model,
            'weights': entry.name,
            'url': entry.url,
            'file': str(path),
            **_preprocessing(entry),
        }
        for target, data in (
            (meta_path, json.dumps(meta, indent=1).encode()),
            (msgpack, serialization.msgpack_serialize(jax.tree.map(np.asarray, variables))),
        ):
            tmp = target.with_name(f'{target.name}.tmp.{os.getpid()}')
            tmp.write_bytes(data)
            os.replace(tmp, target)
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {'model': model, 'weights': weights}
    return {'model': model, 'weights': weights, 'msgpack': msgpack, 'meta': meta}


def load_variables(spec: str) -> dict:
    """Flax variables {'params', 'batch_stats'} of ``'torchvision:<model>.<WEIGHTS>'`` (host arrays)."""
    r = resolve(spec)
    variables = serialization.msgpack_restore(r['msgpack'].read_bytes())
    return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}


# --------------------------------------------------------------------------- evaluation


def _label_map(class_names, categories) -> np.ndarray:
    """Folder class index -> the weights' class index."""
    names = list(class_names)
    if categories and all(n in categories for n in names):
        return np.asarray([categories.index(n) for n in names], np.int32)
    if (
        len(names) == 1000
        and names == sorted(names)
        and all(n.startswith('n') and n[1:].isdigit() for n in names)
    ):
        return np.arange(1000, dtype=np.int32)  # ImageNet synset folders, sorted = the class order
    categories = list(categories or [])
    bad = next((n for n in names if n not in categories), names[0])
    raise WeightsError(
        f"class folder {bad!r} is neither one of the weights' categories (e.g. {categories[:3]}) nor one of "
        'the 1,000 ImageNet synset folders (n01440764 ...)'
    )


def evaluate(
    spec: str,
    data: str,
    *,
    split: str = 'val',
    batch_size: int = 50,
    data_dir: str = '',
    num_threads: int = 0,
    num_workers: int = 0,
    limit: int = 0,
) -> dict:
    """Top-1 / top-5 (%) of the converted ``spec`` on ``split`` of the image folder ``data``, with the
    weights' preprocessing through ``research.data``'s eval pipeline (``data.eval_resize`` = the
    resize, ``image_size`` = the crop, ``normalize='imagenet'``). Returns {'top1', 'top5', 'n',
    'predictions' (weights' class indices), 'labels', 'seconds'}."""
    r = resolve(spec)
    meta = r['meta']
    if 'resize' not in meta:
        raise WeightsError(f'{spec}: not classification weights with an ImageClassification preprocessing')
    if not meta.get('bilinear', True):
        raise WeightsError(
            f"{spec}: its preprocessing resizes with another filter than bilinear (this pipeline's)"
        )
    if tuple(meta['mean']) != datasets.IMAGENET_MEAN or tuple(meta['std']) != datasets.IMAGENET_STD:
        raise WeightsError(f"{spec}: mean/std {meta['mean']}/{meta['std']} are not ImageNet's")
    cfg = data_lib.data_config_defaults()
    cfg.name, cfg.path, cfg.data_dir = 'image_folder', str(data), data_dir
    cfg.train_split = cfg.eval_split = split
    cfg.image_size, cfg.eval_resize, cfg.normalize = int(meta['crop']), int(meta['resize']), 'imagenet'
    cfg.num_threads, cfg.num_workers = num_threads, num_workers
    info = data_lib.get_dataset_info(cfg)
    remap = _label_map(info.class_names, meta.get('categories'))
    model = tvi.flax_model(r['model'])
    variables = jax.device_put(load_variables(spec))
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    preds, labels, top5 = [], [], []
    t0 = time.perf_counter()
    seen = 0
    for batch in data_lib.make_eval_iterator(cfg, split, global_batch_size=batch_size):
        mask = batch['mask']
        logits = np.asarray(forward(variables, jnp.asarray(batch['image'])))[mask]
        order = np.argsort(-logits, axis=-1)[:, :5]
        y = remap[batch['label'][mask]]
        preds.append(order[:, 0])
        labels.append(y)
        top5.append((order == y[:, None]).any(-1))
        seen += int(mask.sum())
        if limit and seen >= limit:
            break
    preds, labels, top5 = np.concatenate(preds), np.concatenate(labels), np.concatenate(top5)
    n = len(labels)
    return {
        'top1': 100.0 * float(np.mean(preds == labels)),
        'top5': 100.0 * float(np.mean(top5)),
        'n': n,
        'predictions': preds,
        'labels': labels,
        'seconds': time.perf_counter() - t0,
    }


def main(argv=None) -> int:
    """``python -m research.interop.torchvision --evaluate NAME --data FOLDER [...]`` (also
    ``python -m research.interop.hub``): one report line."""
    p = argparse.ArgumentParser(description='top-1 of converted torchvision weights on an image folder')
    p.add_argument(
        '--evaluate', required=True, metavar='NAME', help='e.g. resnet50.IMAGENET1K_V2 (or .DEFAULT)'
    )
    p.add_argument('--data', required=True, help='image folder (<split>/<class>/<image>) or a tar of one')
    p.add_argument('--split', default='val')
    p.add_argument('--batch_size', type=int, default=50)
    p.add_argument('--data_dir', default='', help="TFDS data dir for the prepared folder ('' = the default)")
    p.add_argument('--num_threads', type=int, default=0)
    p.add_argument('--num_workers', type=int, default=0)
    p.add_argument('--limit', type=int, default=0, help='stop after about this many images (0 = all)')
    a = p.parse_args(argv)
    try:
        r = evaluate(
            a.evaluate,
            a.data,
            split=a.split,
            batch_size=a.batch_size,
            data_dir=a.data_dir,
            num_threads=a.num_threads,
            num_workers=a.num_workers,
            limit=a.limit,
        )
    except (WeightsError, FileNotFoundError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(
        f'{a.evaluate.removeprefix(PREFIX)} on {a.data} ({a.split}, {r["n"]} images): '
        f'top-1 {r["top1"]:.2f}% top-5 {r["top5"]:.2f}% ({r["seconds"]:.1f} s)'
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
