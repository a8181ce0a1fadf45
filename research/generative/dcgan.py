"""DCGAN: Radford, Metz & Chintala 2016, "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks" (ICLR), Sec. 3 architecture guidelines:

- no pooling: the generator upsamples with fractionally strided (transposed) convolutions, the
  discriminator downsamples with strided convolutions;
- BatchNorm in both nets, except the generator's output layer and the discriminator's input layer;
- no fully connected hidden layers: z is projected to the first feature map (here by a transposed
  conv from 1x1, which is the paper's "project and reshape"), the discriminator's last conv maps
  the final feature map to one logit;
- ReLU in the generator (tanh at the output), LeakyReLU (slope 0.2) in the discriminator;
- Adam with lr 2e-4 and beta1 0.5 (Sec. 4), weights from N(0, 0.02).

Training (Goodfellow et al. 2014) is one pure function, :func:`gan_train_step`: a discriminator
step (real -> 1, fake -> 0) then a generator step with the non-saturating loss (fake -> 1) through
the *updated* discriminator, each with its own optax optimizer. Images are in [-1, 1].

Sample quality is tracked with a classifier trained by this codebase (LeNet-5 on the MNIST
folder): the Inception-score-style ``exp(E_x KL(p(y|x) || p(y)))`` of its softmax (Salimans et al.
2016, with LeNet in place of Inception; 1 = useless, 10 = confident and all ten digits equally
often) and the mean max-probability (confidence); see :func:`classifier_scores`. The training run
is the task ``gan`` (``research/tasks/gan.py``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from research.layers.common import BatchNorm, FlaxConv
from research.layers.conv import ConvTranspose

PyTree = Any

#: Radford et al. 2016, Sec. 4: "All weights were initialized from a zero-centered Normal
#: distribution with standard deviation 0.02".
dcgan_init = nn.initializers.normal(0.02)


def _num_stages(image_size: int, base_size: int) -> int:
    n = int(round(math.log2(image_size / base_size)))
    if n < 1 or base_size * 2**n != image_size:
        raise ValueError(f'image size {image_size} must be base_size ({base_size}) times a power of two')
    return n


class Generator(nn.Module):
    """z [B, latent_dim] -> images [B, S, S, channels] in (-1, 1) (tanh).

    z (as a 1x1 map) -> ConvT(width * 2^(n-1), base_size x base_size) -> BN -> ReLU -> n-1 times
    [ConvT(4x4, stride 2, padding 1) halving the channels -> BN -> ReLU] -> ConvT(4x4/2) to
    ``channels`` -> tanh, with S = base_size * 2^n. MNIST 28x28: base_size 7, n = 2
    (7 -> 14 -> 28); 64x64 as the paper's LSUN net: base_size 4, n = 4, width 128.
    Knobs: ``width`` (channels of the last hidden layer; the paper's 64x64 net uses 128),
    ``norm`` (BatchNorm; None to ablate), ``activation``.
    """

    image_size: int = 28
    channels: int = 1
    base_size: int = 7
    width: int = 64
    norm: Callable | None = BatchNorm
    activation: Callable = nn.relu

    @nn.compact
    def __call__(self, z, train: bool = False):
        n = _num_stages(self.image_size, self.base_size)
        x = z.reshape(z.shape[0], 1, 1, -1)
        convt = functools.partial(ConvTranspose, kernel_init=dcgan_init)
        use_bias = self.norm is None
        for i in range(n):
            ch = self.width * 2 ** (n - 1 - i)
            if i == 0:
                x = convt(ch, self.base_size, strides=1, padding=0, use_bias=use_bias, name='project')(x)
            else:
                x = convt(ch, 4, strides=2, padding=1, use_bias=use_bias, name=f'up{i}')(x)
            if self.norm is not None:
                x = self.norm(use_running_average=not train, name=f'bn{i}')(x)
            x = self.activation(x)
        x = convt(self.channels, 4, strides=2, padding=1, name=f'up{n}')(x)
        return jnp.tanh(x)


class Discriminator(nn.Module):
    """images [B, S, S, C] -> logits [B] (real vs fake).

    Conv(4x4, stride 2, padding 1) with ``width`` channels -> LeakyReLU (no BN on the input layer)
    -> n-1 times [Conv(4x4/2) doubling the channels -> BN -> LeakyReLU] -> Conv(base_size x
    base_size, valid) to one logit: the mirror of :class:`Generator`. Knobs: ``width``, ``norm``,
    ``leak`` (0.2 as the paper).
    """

    image_size: int = 28
    base_size: int = 7
    width: int = 64
    norm: Callable | None = BatchNorm
    leak: float = 0.2

    @nn.compact
    def __call__(self, x, train: bool = False):
        n = _num_stages(self.image_size, self.base_size)
        conv = functools.partial(FlaxConv, kernel_init=dcgan_init)
        for i in range(n):
            use_bn = i > 0 and self.norm is not None
            x = conv(self.width * 2**i, (4, 4), strides=2, padding=1, use_bias=not use_bn, name=f'conv{i}')(x)
            if use_bn:
                x = self.norm(use_running_average=not train, name=f'bn{i}')(x)
            x = nn.leaky_relu(x, self.leak)
        x = conv(1, (self.base_size, self.base_size), padding='VALID', name='logit')(x)
        return x.reshape(x.shape[0])


@flax.struct.dataclass
class GANState:
    """Both nets' parameters, BatchNorm statistics and optimizer states (a pytree of arrays)."""

    step: jax.Array
    g_params: PyTree
    g_stats: PyTree
    g_opt: PyTree
    d_params: PyTree
    d_stats: PyTree
    d_opt: PyTree
    rng: jax.Array
    generator: nn.Module = flax.struct.field(pytree_node=False)
    discriminator: nn.Module = flax.struct.field(pytree_node=False)
    g_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
    d_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
    latent_dim: int = flax.struct.field(pytree_node=False, default=100)

    def arrays(self) -> dict[str, PyTree]:
        names = ('step', 'g_params', 'g_stats', 'g_opt', 'd_params', 'd_stats', 'd_opt', 'rng')
        return {k: getattr(self, k) for k in names}

    def replace_arrays(self, arrays: dict[str, PyTree]) -> 'GANState':
        return self.replace(**arrays)

    @property
    def params(self) -> dict[str, PyTree]:
        return {'generator': self.g_params, 'discriminator': self.d_params}


def dcgan_adam(lr: float = 2e-4, b1: float = 0.5, b2: float = 0.999) -> optax.GradientTransformation:
    """Radford et al. 2016, Sec. 4: Adam, learning rate 0.0002, beta1 0.5."""
    return optax.adam(lr, b1=b1, b2=b2)


def create_gan_state(
    generator: nn.Module,
    discriminator: nn.Module,
    rng: jax.Array,
    *,
    latent_dim: int = 100,
    g_tx: optax.GradientTransformation | None = None,
    d_tx: optax.GradientTransformation | None = None,
) -> GANState:
    g_tx = g_tx or dcgan_adam()
    d_tx = d_tx or dcgan_adam()
    kg, kd, kr = jax.random.split(rng, 3)
    gv = jax.jit(functools.partial(generator.init, train=False))(kg, jnp.zeros((1, latent_dim)))
    image = jax.eval_shape(lambda v: generator.apply(v, jnp.zeros((1, latent_dim))), gv)
    dv = jax.jit(functools.partial(discriminator.init, train=False))(kd, jnp.zeros(image.shape, image.dtype))
    return GANState(
        step=jnp.asarray(0, jnp.int32),
        g_params=gv['params'],
        g_stats=gv.get('batch_stats', {}),
        g_opt=g_tx.init(gv['params']),
        d_params=dv['params'],
        d_stats=dv.get('batch_stats', {}),
        d_opt=d_tx.init(dv['params']),
        rng=kr,
        generator=generator,
        discriminator=discriminator,
        g_tx=g_tx,
        d_tx=d_tx,
        latent_dim=latent_dim,
    )


def _vars(params, stats):
    return {'params': params, 'batch_stats': stats} if stats else {'params': params}


def _apply_train(module, params, stats, x):
    """Train-mode forward; returns (output, updated batch stats)."""
    if not stats:
        return module.apply({'params': params}, x, train=True), stats
    out, upd = module.apply(_vars(params, stats), x, train=True, mutable=['batch_stats'])
    return out, upd['batch_stats']


def bce_real(logits):
    """-log sigmoid(logits): the loss of calling these logits real (label 1)."""
    return optax.sigmoid_binary_cross_entropy(logits, jnp.ones_like(logits)).mean()


def bce_fake(logits):
    """-log(1 - sigmoid(logits)): the loss of calling these logits fake (label 0)."""
    return optax.sigmoid_binary_cross_entropy(logits, jnp.zeros_like(logits)).mean()


def discriminator_step(
    state: GANState, real: jax.Array, z: jax.Array
) -> tuple[GANState, dict[str, jax.Array]]:
    """One update of D on real (label 1) and G(z) (label 0); G's params and statistics are unchanged.

    G runs in train mode (batch statistics) as in the generator step, but its running statistics
    are only updated by :func:`generator_step`. D sees the real and the fake batch in two calls,
    so each has its own BatchNorm batch statistics (as the reference implementation).
    """
    fake, _ = _apply_train(state.generator, state.g_params, state.g_stats, z)
    fake = jax.lax.stop_gradient(fake)

    def loss_fn(d_params):
        real_logits, stats = _apply_train(state.discriminator, d_params, state.d_stats, real)
        fake_logits, stats = _apply_train(state.discriminator, d_params, stats, fake)
        loss = bce_real(real_logits) + bce_fake(fake_logits)
        return loss, (stats, real_logits, fake_logits)

    (loss, (stats, real_logits, fake_logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.d_params
    )
    updates, d_opt = state.d_tx.update(grads, state.d_opt, state.d_params)
    new = state.replace(d_params=optax.apply_updates(state.d_params, updates), d_opt=d_opt, d_stats=stats)
    metrics = {
        'd_loss': loss,
        'd_real': jax.nn.sigmoid(real_logits).mean(),  # D(x)
        'd_fake': jax.nn.sigmoid(fake_logits).mean(),  # D(G(z)) before D's update
    }
    return new, metrics


def generator_step(state: GANState, z: jax.Array) -> tuple[GANState, dict[str, jax.Array]]:
    """One update of G with the non-saturating loss -log D(G(z)); D's params and statistics are unchanged."""

    def loss_fn(g_params):
        fake, g_stats = _apply_train(state.generator, g_params, state.g_stats, z)
        logits, _ = _apply_train(state.discriminator, state.d_params, state.d_stats, fake)
        return bce_real(logits), (g_stats, logits)

    (loss, (g_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g_params)
    updates, g_opt = state.g_tx.update(grads, state.g_opt, state.g_params)
    new = state.replace(g_params=optax.apply_updates(state.g_params, updates), g_opt=g_opt, g_stats=g_stats)
    return new, {'g_loss': loss, 'd_fake_after': jax.nn.sigmoid(logits).mean()}


def gan_train_step(state: GANState, batch: dict[str, jax.Array], rng: jax.Array | None = None):
    """D step then G step on ``batch['image']`` (in [-1, 1]); returns (state, metrics).

    ``rng`` draws z (default: the state's key folded with the step, so a resumed run draws the
    same z). Pure: compile with ``jax.jit(gan_train_step, donate_argnums=0)``.
    """
    real = batch['image']
    if rng is None:
        rng = jax.random.fold_in(state.rng, state.step)
    z = jax.random.normal(rng, (real.shape[0], state.latent_dim), real.dtype)
    state, d_metrics = discriminator_step(state, real, z)
    state, g_metrics = generator_step(state, z)
    return state.replace(step=state.step + 1), {**d_metrics, **g_metrics}


def generate(state: GANState, z: jax.Array, train: bool = False) -> jax.Array:
    """G(z) in [-1, 1]; eval mode uses G's running BatchNorm statistics."""
    return state.generator.apply(_vars(state.g_params, state.g_stats), z, train=train)


# --------------------------------------------------------------------------- sample quality


def classifier_scores(probs) -> dict[str, float]:
    """From class probabilities p(y|x) [N, K] of generated images:

    - ``score``: exp(E_x KL(p(y|x) || p(y))), p(y) the mean over the N images (the Inception
      score's formula, Salimans et al. 2016, with our own classifier): 1 (every image gets the same
      distribution) to K (confident predictions, classes used equally often);
    - ``confidence``: mean over images of max_y p(y|x);
    - ``class_entropy``: entropy of p(y) in nats (log K = all classes equally often).
    """
    p = np.asarray(probs, np.float64)
    p = np.clip(p, 1e-12, 1.0)
    py = p.mean(axis=0, keepdims=True)
    kl = np.sum(p * (np.log(p) - np.log(py)), axis=1)
    return {
        'score': float(np.exp(kl.mean())),
        'confidence': float(p.max(axis=1).mean()),
        'class_entropy': float(-np.sum(py * np.log(py))),
    }


# --------------------------------------------------------------------------- the run


def build_gan(config: ConfigDict, image_shape: tuple[int, int, int]) -> tuple[Generator, Discriminator]:
    gc = config.gan
    h, w, c = image_shape
    if h != w:
        raise ValueError(f'DCGAN needs square images, got {h}x{w}')
    norm = BatchNorm if gc.batch_norm else None
    g = Generator(image_size=h, channels=c, base_size=gc.base_size, width=gc.g_width, norm=norm)
    d = Discriminator(image_size=h, base_size=gc.base_size, width=gc.d_width, norm=norm, leak=gc.leak)
    return g, d


def _to_unit(x):
    return (np.asarray(x, np.float32) + 1.0) * 0.5
