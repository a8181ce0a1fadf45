"""Neural style transfer: Gatys, Ecker & Bethge 2016, "Image Style Transfer Using Convolutional
Neural Networks" (CVPR), and the feed-forward variant of Johnson, Alahi & Fei-Fei 2016,
"Perceptual Losses for Real-Time Style Transfer and Super-Resolution" (ECCV), with instance
normalisation (Ulyanov, Vedaldi & Lempitsky 2016, "Instance Normalization: The Missing Ingredient
for Fast Stylization").

Losses on the feature maps F^l [N, H, W, C] of a fixed loss network (VGG in the papers; here any
registered model, layers picked by module path, e.g. 'conv4_2' for VGG, optionally after ReLU):

- Gram matrix G^l = F^T F / (H W) ([N, C, C]; Gatys' Eq. 3 divided by the number of positions
  M_l, so targets from a style image of another size are comparable);
- content loss 1/2 mean((F - P)^2) (Gatys' Eq. 1 as a mean, not a sum);
- style loss per layer 1/4 mean((G - A)^2) (Gatys' Eq. 4, E_l = sum (G - A)^2 / (4 N^2 M^2),
  which is this with G = F^T F / M), summed over the style layers with equal weights (Eq. 5);
- total variation (optional): mean squared difference of neighbouring pixels.

Mode 1, :func:`stylize`: optimise the pixels of an image (Adam here, L-BFGS in the paper),
starting from the content image or noise. Mode 2, :func:`train_fast_style`: train a
:class:`TransformerNet` on a folder of images to minimise the same losses, then stylise any image
in one forward pass.

Offline there are no ImageNet weights: the loss network is then randomly initialised (the
"random features" texture synthesis of Ustyuzhaninov et al. 2016 / He et al. 2016 shows that such
features still capture texture statistics) unless ``style.weights`` names a torchvision .pth
(``research.interop.torchvision``), a Flax .msgpack or a workdir of this codebase.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from research.layers.common import FlaxConv
from research.layers.conv import ConvTranspose
from research.viz.feature_maps import layer_outputs, used_variables

PyTree = Any

# --------------------------------------------------------------------------- losses


def gram_matrix(features: jax.Array) -> jax.Array:
    """[N, H, W, C] -> [N, C, C]: G_ij = sum_p F_pi F_pj / (H W) over the H W positions p."""
    n, h, w, c = features.shape
    f = features.reshape(n, h * w, c).astype(jnp.float32)
    return jnp.einsum("npi,npj->nij", f, f) / (h * w)


def content_loss(features: jax.Array, target: jax.Array) -> jax.Array:
    """1/2 mean((F - P)^2): zero iff the features are identical."""
    return 0.5 * jnp.mean((features.astype(jnp.float32) - target.astype(jnp.float32)) ** 2)


def style_loss(gram: jax.Array, target_gram: jax.Array) -> jax.Array:
    """1/4 mean((G - A)^2) of two Gram matrices (Gatys' E_l with G normalised by M_l)."""
    return 0.25 * jnp.mean((gram - target_gram) ** 2)


def total_variation(images: jax.Array) -> jax.Array:
    """Mean squared difference between vertically and horizontally neighbouring pixels."""
    dy = images[:, 1:, :, :] - images[:, :-1, :, :]
    dx = images[:, :, 1:, :] - images[:, :, :-1, :]
    return jnp.mean(dy**2) + jnp.mean(dx**2)


@dataclasses.dataclass(frozen=True)
class StyleWeights:
    content: float = 1.0
    style: float = 1e3
    tv: float = 0.0


# --------------------------------------------------------------------------- the loss network


@dataclasses.dataclass
class LossNetwork:
    """A fixed model read at ``content_layers`` and ``style_layers`` (module paths) on images in
    [0, 1] (normalised by ``mean``/``std`` inside); ``relu`` applies ReLU to the layer outputs
    (VGG's conv modules return pre-activations: conv4_2 + ReLU = Gatys' relu4_2)."""

    model: nn.Module
    variables: PyTree
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    relu: bool = True
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def features(self, images01: jax.Array, variables=None) -> dict[str, jax.Array]:
        x = (images01 - jnp.asarray(self.mean, images01.dtype)) / jnp.asarray(self.std, images01.dtype)
        paths = tuple(dict.fromkeys(self.content_layers + self.style_layers))
        out = layer_outputs(self.model, self.variables if variables is None else variables, x, paths)
        return {k: jax.nn.relu(v) if self.relu else v for k, v in out.items()}

    def content_targets(self, images01, variables=None) -> dict[str, jax.Array]:
        f = self.features(images01, variables)
        return {k: f[k] for k in self.content_layers}

    def style_targets(self, images01, variables=None) -> dict[str, jax.Array]:
        f = self.features(images01, variables)
        return {k: gram_matrix(f[k]) for k in self.style_layers}

    def losses(self, images01, content_targets, style_targets, weights: StyleWeights, variables=None):
        """(total, {'content', 'style', 'tv', 'total'}) for a batch; targets broadcast over it."""
        f = self.features(images01, variables)
        lc = (
            sum(content_loss(f[k], content_targets[k]) for k in self.content_layers)
            if weights.content
            else 0.0
        )
        ls = sum(style_loss(gram_matrix(f[k]), style_targets[k]) for k in self.style_layers)
        ltv = total_variation(images01) if weights.tv else jnp.zeros(())
        total = weights.content * lc + weights.style * ls + weights.tv * ltv
        return total, {"content": jnp.asarray(lc), "style": ls, "tv": ltv, "total": total}


def _num_classes_of(model_name: str, source: dict[str, PyTree]) -> int | None:
    """The head size of converted weights: the last dim of the source leaf that differs from the
    default model's head (so a CIFAR-10 VGG loads as num_classes=10)."""
    from research import models

    model = models.create(model_name)
    default = getattr(model, "num_classes", None)
    if default is None:
        return None
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    src = {
        jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(source.get("params", {}))
    }
    for k, leaf in jax.tree_util.tree_leaves_with_path(abstract["params"]):
        key = jax.tree_util.keystr(k)
        if leaf.shape and leaf.shape[-1] == default and key in src and np.shape(src[key])[-1] != default:
            return int(np.shape(src[key])[-1])
    return default


def load_loss_network(sc: ConfigDict, seed: int = 0, input_shape=(1, 224, 224, 3)) -> tuple[LossNetwork, str]:
    """The loss network of ``config.style`` and a line saying which weights it has.

    ``style.weights``: '' = random init from ``seed``; a torchvision .pth/.pt (converted with
    ``research.interop.torchvision.from_torchvision(style.model, path)``); a Flax .msgpack of
    {'params', 'batch_stats'}; a workdir (or step directory) of this codebase. Only the modules up
    to the deepest requested layer are kept.
    """
    from research import models
    from research.train.transfer import load_pretrained

    name = sc.model
    paths = tuple(dict.fromkeys(tuple(sc.content_layers) + tuple(sc.style_layers)))
    if sc.weights:
        source = load_pretrained(sc.weights, torchvision=name)
        nc = _num_classes_of(name, source)
        model = models.create(name, **({"num_classes": nc} if nc else {}))
        variables = {k: v for k, v in source.items() if v}
        desc = f"{name} weights from {sc.weights}"
    else:
        model = models.create(name)
        variables = model.init(jax.random.key(seed), jnp.zeros(input_shape), train=False)
        variables = jax.tree.map(np.asarray, dict(variables))
        desc = f"{name} with random weights (seed {seed}; no pretrained weights given)"
    variables = used_variables(model, variables, input_shape, paths)
    variables = jax.tree.map(jnp.asarray, variables)
    net = LossNetwork(
        model,
        variables,
        tuple(sc.content_layers),
        tuple(sc.style_layers),
        relu=bool(sc.relu),
        mean=tuple(sc.mean),
        std=tuple(sc.std),
    )
    return net, desc


# --------------------------------------------------------------------------- mode 1: optimise the image


def stylize(
    net: LossNetwork,
    content01: jax.Array,
    style01: jax.Array,
    *,
    weights: StyleWeights = StyleWeights(),
    steps: int = 200,
    lr: float = 0.02,
    init: str = "content",
    seed: int = 0,
    log_every: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Gatys et al.: optimise the pixels (Adam, clipped to [0, 1]) of an image to match the
    content image's features and the style image's Gram matrices. ``content01`` [H, W, 3] /
    ``style01`` [H', W', 3] in [0, 1]. Returns (image [H, W, 3], history of losses, step 0 first)."""
    content = jnp.asarray(content01, jnp.float32)[None]
    style = jnp.asarray(style01, jnp.float32)[None]
    c_t = jax.jit(net.content_targets)(content)
    s_t = jax.jit(net.style_targets)(style)
    if init == "content":
        x = content
    elif init == "noise":
        x = jax.random.uniform(jax.random.key(seed), content.shape, jnp.float32)
    else:
        raise ValueError(f"style.init must be 'content' or 'noise', got {init!r}")
    tx = optax.adam(lr)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(x, opt_state):
        (_, parts), g = jax.value_and_grad(lambda y: net.losses(y, c_t, s_t, weights), has_aux=True)(x)
        updates, opt_state = tx.update(g, opt_state, x)
        return jnp.clip(optax.apply_updates(x, updates), 0.0, 1.0), opt_state, parts

    loss_fn = jax.jit(lambda y: net.losses(y, c_t, s_t, weights)[1])
    opt_state = tx.init(x)
    history = [{"step": 0, **{k: float(v) for k, v in loss_fn(x).items()}}]
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        x, opt_state, parts = step(x, opt_state)
        if log_every and (i % log_every == 0 or i == steps):
            row = {"step": i, **{k: float(v) for k, v in jax.device_get(parts).items()}}
            row["seconds"] = time.perf_counter() - t0
            history.append(row)  # losses of the image before step i's update
            log(
                f"step {i}/{steps} | total {row['total']:.4g} content {row['content']:.4g} "
                f"style {row['style']:.4g} | {i / row['seconds']:.2f} it/s"
            )
    final = {"step": steps, **{k: float(v) for k, v in loss_fn(x).items()}}
    final["seconds"] = time.perf_counter() - t0
    final["final"] = True  # the losses of the returned image (logged rows: before that step's update)
    history.append(final)
    return np.asarray(x[0]), history


def run_style_transfer(config: ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """``task='style_transfer'``: writes ``result.png`` (and content.png, style.png,
    panel.png = content | style | result, losses.json) to ``workdir``."""
    from research.viz.images import load_image, save_png

    sc = config.style
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    content = load_image(sc.content, sc.image_size)
    style = load_image(sc.style, sc.image_size)
    t0 = time.perf_counter()
    net, desc = load_loss_network(sc, config.seed, (1, *content.shape))
    print(
        f"loss network: {desc}; content {sc.content} {content.shape[1]}x{content.shape[0]}, style {sc.style}"
    )
    weights = StyleWeights(sc.content_weight, sc.style_weight, sc.tv_weight)
    image, history = stylize(
        net,
        content,
        style,
        weights=weights,
        steps=sc.steps,
        lr=sc.lr,
        init=sc.init,
        seed=config.seed,
        log_every=sc.log_every,
    )
    save_png(image, workdir / "result.png")
    save_png(content, workdir / "content.png")
    save_png(style, workdir / "style.png")
    save_png(panel([content, style, image]), workdir / "panel.png")
    summary = {
        "task": "style_transfer",
        "loss_network": desc,
        "history": history,
        "wall_time_s": time.perf_counter() - t0,
    }
    (workdir / "losses.json").write_text(json.dumps(summary, indent=2))
    first, last = history[0], history[-1]
    print(
        f"done: style transfer | {sc.steps} steps in {summary['wall_time_s']:.0f} s | total loss "
        f"{first['total']:.4g} -> {last['total']:.4g} (content {last['content']:.4g}, style "
        f"{first['style']:.4g} -> {last['style']:.4g}) | {workdir / 'result.png'}"
    )
    return summary


def panel(images: Sequence[np.ndarray], height: int | None = None, gap: int = 4) -> np.ndarray:
    """Images side by side, each resized to a common ``height`` (default: the first's)."""
    from PIL import Image

    from research.viz.images import to_uint8

    height = height or images[0].shape[0]
    tiles = []
    for im in images:
        pil = Image.fromarray(to_uint8(im))
        w = max(int(round(pil.width * height / pil.height)), 1)
        tiles.append(np.asarray(pil.convert("RGB").resize((w, height), Image.BILINEAR), np.float32) / 255.0)
        tiles.append(np.ones((height, gap, 3), np.float32))
    return np.concatenate(tiles[:-1], axis=1)


# --------------------------------------------------------------------------- mode 2: feed-forward network


def reflect_pad(x: jax.Array, p: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect") if p else x


class ConvLayer(nn.Module):
    """Reflection-padded conv -> instance norm -> ReLU (norm and ReLU optional)."""

    features: int
    kernel: int
    stride: int = 1
    norm: bool = True
    relu: bool = True

    @nn.compact
    def __call__(self, x):
        x = reflect_pad(x, self.kernel // 2)
        x = FlaxConv(self.features, (self.kernel, self.kernel), strides=self.stride, padding="VALID")(x)
        if self.norm:
            x = nn.InstanceNorm(epsilon=1e-5)(x)
        return nn.relu(x) if self.relu else x


class ResidualBlock(nn.Module):
    """Johnson et al. 2016, supplementary Fig. 1: two 3x3 convs with instance norm, identity shortcut."""

    features: int

    @nn.compact
    def __call__(self, x):
        y = ConvLayer(self.features, 3)(x)
        y = ConvLayer(self.features, 3, relu=False)(y)
        return x + y


class TransformerNet(nn.Module):
    """Johnson et al. 2016's image transformation network (supplementary Table 1), instance norm
    instead of batch norm (Ulyanov et al. 2016): 9x9 conv (width) -> two stride-2 3x3 convs (2w,
    4w) -> ``blocks`` residual blocks -> two x2 upsamplings (2w, w) -> 9x9 conv to 3 channels ->
    scaled tanh to [0, 1]. ``upsample``: 'transpose' (the paper's stride-1/2 convolutions, torch
    semantics ConvTranspose 3x3/2, padding 1, output padding 1) or 'nearest' (nearest x2 then a 3x3
    conv: no checkerboard artefacts, Odena et al. 2016). Input/output [N, H, W, 3] in [0, 1],
    H and W multiples of 4. 1,679,235 params at width 32 with 5 blocks.
    """

    width: int = 32
    blocks: int = 5
    upsample: str = "nearest"

    @nn.compact
    def __call__(self, x, train: bool = False):
        w = self.width
        h = ConvLayer(w, 9, name="conv1")(x)
        h = ConvLayer(2 * w, 3, 2, name="down1")(h)
        h = ConvLayer(4 * w, 3, 2, name="down2")(h)
        for i in range(self.blocks):
            h = ResidualBlock(4 * w, name=f"res{i + 1}")(h)
        for i, ch in enumerate((2 * w, w)):
            if self.upsample == "transpose":
                h = ConvTranspose(ch, 3, strides=2, padding=1, output_padding=1, name=f"up{i + 1}")(h)
                h = nn.relu(nn.InstanceNorm(epsilon=1e-5, name=f"up{i + 1}_norm")(h))
            elif self.upsample == "nearest":
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = ConvLayer(ch, 3, name=f"up{i + 1}")(h)
            else:
                raise ValueError(f"upsample must be 'nearest' or 'transpose', got {self.upsample!r}")
        h = ConvLayer(3, 9, norm=False, relu=False, name="out")(h)
        return 0.5 * (jnp.tanh(h) + 1.0)


def fast_style_step(params, opt_state, images01, *, net, transformer, tx, style_targets, weights):
    """One Adam step of the transformer on a batch: losses of T(x) against x's features (content)
    and the style image's Gram matrices. Pure; returns (params, opt_state, metrics)."""
    c_t = net.content_targets(images01)

    def loss_fn(p):
        y = transformer.apply({"params": p}, images01)
        return net.losses(y, c_t, style_targets, weights)

    (_, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, parts


def train_fast_style(
    config: ConfigDict, workdir: str | Path, *, show_progress: bool = True
) -> dict[str, Any]:
    """``task='fast_style'``: trains a :class:`TransformerNet` on the ``data`` folder (images in
    [0, 1], resized by ``data.image_size``) for ``train.duration`` with Adam(``optimizer.lr``);
    writes ``transformer.msgpack``, ``stylized.png`` (``style.eval_image`` or ``style.content``
    through the network) and ``panel.png``."""
    from flax import serialization

    from research import data as data_lib
    from research.config import parse_duration, validate_config
    from research.train.reporting import MetricWriter, Progress, format_seconds
    from research.viz.images import load_image, save_png

    validate_config(config)
    sc, tc = config.style, config.train
    if config.data.normalize:
        raise ValueError("fast_style reads images in [0, 1]: set data.normalize=False")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    wall0 = time.perf_counter()
    info = data_lib.get_dataset_info(config.data)
    h, w, c = info.image_shape
    if c != 3 or h % 4 or w % 4:
        raise ValueError(f"fast_style needs RGB images with sides divisible by 4, got {info.image_shape}")
    spe = data_lib.steps_per_epoch(config.data, tc.batch_size)
    total = parse_duration(tc.duration, spe, name="train.duration")
    net, desc = load_loss_network(sc, config.seed, (1, h, w, 3))
    style = load_image(sc.style, max(h, w))
    style_targets = jax.jit(net.style_targets)(jnp.asarray(style)[None])
    transformer = TransformerNet(width=sc.transformer_width, blocks=sc.transformer_blocks)
    params = transformer.init(jax.random.key(config.seed), jnp.zeros((1, h, w, 3)))["params"]
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    tx = optax.adam(config.optimizer.lr)
    opt_state = tx.init(params)
    weights = StyleWeights(sc.content_weight, sc.style_weight, sc.tv_weight)
    step_fn = jax.jit(
        functools.partial(
            fast_style_step,
            net=net,
            transformer=transformer,
            tx=tx,
            style_targets=style_targets,
            weights=weights,
        ),
        donate_argnums=(0, 1),
    )
    it = data_lib.make_train_iterator(config.data, seed=config.seed, global_batch_size=tc.batch_size)
    print(
        f"fast style: TransformerNet {n_params:,} params | loss network {desc} | data {info.name} "
        f"{h}x{w} | {total} steps of batch {tc.batch_size} | workdir {workdir}"
    )
    writer = MetricWriter(workdir)
    progress = Progress(total, 0, tc.batch_size, enabled=show_progress)
    history, window, n = [], {}, 0
    t_start = None
    try:
        for step in range(1, total + 1):
            batch = jnp.asarray(next(it)["image"])
            params, opt_state, parts = step_fn(params, opt_state, batch)
            parts = {k: float(v) for k, v in jax.device_get(parts).items()}
            if not np.isfinite(parts["total"]):
                raise FloatingPointError(f"non-finite style loss at step {step}: {parts}")
            for k, v in parts.items():
                window[k] = window.get(k, 0.0) + v
            n += 1
            if step == 1:
                progress.reset_clock(1)
                t_start = time.perf_counter()
            if step % tc.log_every_steps == 0 or step == total or step == 1:
                row = {k: v / n for k, v in window.items()}
                row["epoch"] = step / spe
                writer.write("train", step, row)
                history.append({"step": step, **row})
                progress.update(
                    step, {"total": row["total"], "content": row["content"], "style": row["style"]}
                )
                window, n = {}, 0
    finally:
        progress.close()
        writer.close()
    train_s = time.perf_counter() - (t_start or wall0)
    (workdir / "transformer.msgpack").write_bytes(serialization.to_bytes({"params": params}))
    content = load_image(sc.eval_image or sc.content, sc.image_size)
    ch, cw = (content.shape[0] // 4) * 4, (content.shape[1] // 4) * 4
    content = content[:ch, :cw]
    out = np.asarray(jax.jit(transformer.apply)({"params": params}, jnp.asarray(content)[None])[0])
    save_png(out, workdir / "stylized.png")
    save_png(panel([content, style, out]), workdir / "panel.png")
    summary = {
        "task": "fast_style",
        "loss_network": desc,
        "transformer_params": n_params,
        "steps": total,
        "train_seconds": train_s,
        "wall_time_s": time.perf_counter() - wall0,
        "history": history,
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"done: fast style | {total} steps in {format_seconds(summary['wall_time_s'])} | loss "
        f"{history[0]['total']:.4g} -> {history[-1]['total']:.4g} | {workdir / 'stylized.png'} "
        f"(one forward pass; network in {workdir / 'transformer.msgpack'})"
    )
    return summary
