"""``launch.py --viz=...``: pictures of a trained classification run (its workdir), in <workdir>/viz/."""

from __future__ import annotations

import json
import os

import numpy as np
from ml_collections import ConfigDict

from research import data as data_lib
from research import storage, tasks
from research.experiments.summary import summary_input
from research.train.checkpoint import Checkpointer
from research.train.loop import build_model
from research.viz import cam as cam_lib
from research.viz.feature_maps import feature_map_grid, layer_outputs, list_layers
from research.viz.filters import filter_grid, first_conv_kernel
from research.viz.images import load_image, save_png
from research.viz.receptive_field import plot_dilation, plot_model_rf


def _load_run(config: ConfigDict, workdir: os.PathLike, need_weights: bool = True):
    """(model, variables or None, config of the run, image shape, class names, mean, std)."""
    saved = storage.as_path(workdir) / 'config.json'
    if saved.exists():
        d = json.loads(saved.read_text())
        resolved = d.pop('_resolved', {})
        run_config = ConfigDict(d)
    elif need_weights:
        raise FileNotFoundError(
            f'{workdir} holds no run (no config.json): train it first with the same --config, or pass --workdir'
        )
    else:
        run_config, resolved = config, {}
    task = tasks.get(run_config.get('task', 'classification'))
    if not task.classifier:
        raise ValueError(f"--viz works on classifiers' runs; {workdir} holds a '{task.name}' run")
    info = data_lib.get_dataset_info(run_config.data) if need_weights else None
    if info is None and not resolved:  # no weights needed: the shape from metadata, nothing downloaded
        shape, num_classes, _ = summary_input(run_config)
        resolved = {'image_shape': shape, 'num_classes': num_classes}
    shape = tuple(resolved.get('image_shape') or info.image_shape)
    num_classes = int(resolved.get('num_classes') or info.num_classes)
    model = build_model(run_config, num_classes)
    variables = None
    if need_weights:
        ckpt = Checkpointer(workdir, async_save=False)
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f'{workdir} holds no checkpoint to visualise')
        state = ckpt.restore_raw()
        ckpt.close()
        variables = {'params': state['params']}
        if state.get('batch_stats'):
            variables['batch_stats'] = state['batch_stats']
        variables.update(state.get('constants') or {})
    names = info.class_names if info is not None else tuple(str(i) for i in range(num_classes))
    mean = np.asarray(info.mean if info is not None else (0.0,) * shape[-1], np.float32)
    std = np.asarray(info.std if info is not None else (1.0,) * shape[-1], np.float32)
    return model, variables, run_config, shape, names, mean, std


def _images(run_config, image: str, shape, mean, std, count: int = 8):
    """(model inputs [N, H, W, C], display images [N, H, W, C] in [0, 1], labels or None)."""
    if image:
        x01 = load_image(image, (shape[0], shape[1]), channels=shape[-1])[None]
        return (x01 - mean) / std, x01, None
    it = data_lib.make_eval_iterator(run_config.data, run_config.data.eval_split, global_batch_size=count)
    b = next(iter(it))
    x = np.asarray(b['image'], np.float32)
    return x, np.clip(x * std + mean, 0, 1), np.asarray(b['label'])


def run_viz(
    config: ConfigDict, workdir, kind: str, *, layer: str = '', image: str = '', dilation: str = '1,2,4'
):
    """Writes the ``kind`` picture(s) ('filters', 'feature_maps', 'cam', 'receptive_field') to
    ``workdir/viz`` (local or remote, e.g. ``gs://...``) and prints their paths."""
    workdir = storage.as_path(workdir)
    out = workdir / 'viz'
    out.mkdir(parents=True, exist_ok=True)
    if kind == 'receptive_field':
        model, _, run_config, shape, *_ = _load_run(config, workdir, need_weights=False)
        rates = tuple(int(r) for r in dilation.split(',') if r.strip())
        rfs = plot_dilation(rates, out / 'dilation_rf.png')
        rows = plot_model_rf(
            model, (1, *shape), out / 'receptive_field.png', title=f'{run_config.model.name}'
        )
        print(f'dilated 3x3 stack, rates {rates}: receptive fields {rfs} -> {out / "dilation_rf.png"}')
        print(
            f'{run_config.model.name}: receptive field {rows[-1][1]} px after {rows[-1][0]} -> {out / "receptive_field.png"}'
        )
        return
    model, variables, run_config, shape, names, mean, std = _load_run(config, workdir)
    if kind == 'filters':
        path, kernel = first_conv_kernel(model, variables, (1, *shape))
        grid = filter_grid(kernel)
        scale = max(1, 240 // max(grid.shape[:2]))
        f = save_png(grid, out / 'filters.png', scale=scale)
        print(
            f'{kernel.shape[-1]} filters {kernel.shape[0]}x{kernel.shape[1]}x{kernel.shape[2]} of {path} -> {f}'
        )
    elif kind == 'feature_maps':
        x, x01, _ = _images(run_config, image, shape, mean, std, count=1)
        layers = list_layers(model, variables, (1, *shape))
        name = layer or first_conv_kernel(model, variables, (1, *shape))[0]
        fmap = np.asarray(layer_outputs(model, variables, x[:1], [name])[name])
        grid = feature_map_grid(fmap)
        scale = max(1, 320 // max(grid.shape[:2]))
        f = save_png(grid, out / f'feature_maps_{name.replace("/", ".")}.png', scale=scale)
        save_png(x01[0], out / 'input.png', scale=max(1, 128 // shape[0]))
        print(
            f'{fmap.shape[-1]} maps {fmap.shape[1]}x{fmap.shape[2]} of {name} -> {f} (input: {out / "input.png"})'
        )
        print(f'layers with feature maps (--viz_layer): {", ".join(layers)}')
    elif kind == 'cam':
        x, x01, labels = _images(run_config, image, shape, mean, std, count=8)
        res = cam_lib.class_activation_maps(model, variables, x, layer=layer)
        up = cam_lib.upsample_cam(res['cam'], shape[:2])
        f = cam_lib.save_cam_grid(
            out / 'cam.png',
            x01,
            up,
            res['classes'],
            class_names=names,
            labels=labels,
            scale=max(1, 96 // shape[0]),
        )
        pred = [names[c] for c in res['classes']]
        truth = [names[c] for c in labels] if labels is not None else None
        print(
            f'class activation maps of {res["layer"]} ({res["features"].shape[1]}x{res["features"].shape[2]}) -> {f}'
        )
        print(
            f'top row: inputs; bottom row: CAM of the predicted class: {pred}'
            + (f' (labels {truth})' if truth else '')
        )
    else:
        raise ValueError(f'unknown --viz {kind!r}')
