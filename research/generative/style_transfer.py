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
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.layers.common import FlaxConv
from research.layers.conv import ConvTranspose
from research.viz.feature_maps import layer_outputs
from research.viz.images import to_uint8

PyTree = Any

# --------------------------------------------------------------------------- losses


def gram_matrix(features: jax.Array) -> jax.Array:
    """[N, H, W, C] -> [N, C, C]: G_ij = sum_p F_pi F_pj / (H W) over the H W positions p."""
    n, h, w, c = features.shape
    f = features.reshape(n, h * w, c).astype(jnp.float32)
    return jnp.einsum('npi,npj->nij', f, f) / (h * w)


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
        return total, {'content': jnp.asarray(lc), 'style': ls, 'tv': ltv, 'total': total}


# --------------------------------------------------------------------------- mode 1: optimise the image


def stylize(
    net: LossNetwork,
    content01: jax.Array,
    style01: jax.Array,
    *,
    weights: StyleWeights = StyleWeights(),
    steps: int = 200,
    lr: float = 0.02,
    init: str = 'content',
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
    if init == 'content':
        x = content
    elif init == 'noise':
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
    history = [{'step': 0, **{k: float(v) for k, v in loss_fn(x).items()}}]
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        x, opt_state, parts = step(x, opt_state)
        if log_every and (i % log_every == 0 or i == steps):
            row = {'step': i, **{k: float(v) for k, v in jax.device_get(parts).items()}}
            row['seconds'] = time.perf_counter() - t0
            history.append(row)  # losses of the image before step i's update
            log(
                f'step {i}/{steps} | total {row["total"]:.4g} content {row["content"]:.4g} '
                f'style {row["style"]:.4g} | {i / row["seconds"]:.2f} it/s'
            )
    final = {'step': steps, **{k: float(v) for k, v in loss_fn(x).items()}}
    final['seconds'] = time.perf_counter() - t0
    final['final'] = True  # the losses of the returned image (logged rows: before that step's update)
    history.append(final)
    return np.asarray(x[0]), history


def panel(images: Sequence[np.ndarray], height: int | None = None, gap: int = 4) -> np.ndarray:
    """Images side by side, each resized to a common ``height`` (default: the first's)."""
    from PIL import Image

    height = height or images[0].shape[0]
    tiles = []
    for im in images:
        pil = Image.fromarray(to_uint8(im))
        w = max(int(round(pil.width * height / pil.height)), 1)
        tiles.append(np.asarray(pil.convert('RGB').resize((w, height), Image.BILINEAR), np.float32) / 255.0)
        tiles.append(np.ones((height, gap, 3), np.float32))
    return np.concatenate(tiles[:-1], axis=1)


# --------------------------------------------------------------------------- mode 2: feed-forward network


def reflect_pad(x: jax.Array, p: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode='reflect') if p else x


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
        x = FlaxConv(self.features, (self.kernel, self.kernel), strides=self.stride, padding='VALID')(x)
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
    upsample: str = 'nearest'

    @nn.compact
    def __call__(self, x, train: bool = False):
        w = self.width
        h = ConvLayer(w, 9, name='conv1')(x)
        h = ConvLayer(2 * w, 3, 2, name='down1')(h)
        h = ConvLayer(4 * w, 3, 2, name='down2')(h)
        for i in range(self.blocks):
            h = ResidualBlock(4 * w, name=f'res{i + 1}')(h)
        for i, ch in enumerate((2 * w, w)):
            if self.upsample == 'transpose':
                h = ConvTranspose(ch, 3, strides=2, padding=1, output_padding=1, name=f'up{i + 1}')(h)
                h = nn.relu(nn.InstanceNorm(epsilon=1e-5, name=f'up{i + 1}_norm')(h))
            elif self.upsample == 'nearest':
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = ConvLayer(ch, 3, name=f'up{i + 1}')(h)
            else:
                raise ValueError(f"upsample must be 'nearest' or 'transpose', got {self.upsample!r}")
        h = ConvLayer(3, 9, norm=False, relu=False, name='out')(h)
        return 0.5 * (jnp.tanh(h) + 1.0)


def fast_style_step(params, opt_state, images01, *, net, transformer, tx, style_targets, weights):
    """One Adam step of the transformer on a batch: losses of T(x) against x's features (content)
    and the style image's Gram matrices. Pure; returns (params, opt_state, metrics)."""
    c_t = net.content_targets(images01)

    def loss_fn(p):
        y = transformer.apply({'params': p}, images01)
        return net.losses(y, c_t, style_targets, weights)

    (_, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, parts
