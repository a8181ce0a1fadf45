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
often) and the mean max-probability (confidence); see :func:`classifier_scores`.
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
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
        raise ValueError(f"image size {image_size} must be base_size ({base_size}) times a power of two")
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
                x = convt(ch, self.base_size, strides=1, padding=0, use_bias=use_bias, name="project")(x)
            else:
                x = convt(ch, 4, strides=2, padding=1, use_bias=use_bias, name=f"up{i}")(x)
            if self.norm is not None:
                x = self.norm(use_running_average=not train, name=f"bn{i}")(x)
            x = self.activation(x)
        x = convt(self.channels, 4, strides=2, padding=1, name=f"up{n}")(x)
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
            x = conv(self.width * 2**i, (4, 4), strides=2, padding=1, use_bias=not use_bn, name=f"conv{i}")(x)
            if use_bn:
                x = self.norm(use_running_average=not train, name=f"bn{i}")(x)
            x = nn.leaky_relu(x, self.leak)
        x = conv(1, (self.base_size, self.base_size), padding="VALID", name="logit")(x)
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
        names = ("step", "g_params", "g_stats", "g_opt", "d_params", "d_stats", "d_opt", "rng")
        return {k: getattr(self, k) for k in names}

    def replace_arrays(self, arrays: dict[str, PyTree]) -> "GANState":
        return self.replace(**arrays)


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
        g_params=gv["params"],
        g_stats=gv.get("batch_stats", {}),
        g_opt=g_tx.init(gv["params"]),
        d_params=dv["params"],
        d_stats=dv.get("batch_stats", {}),
        d_opt=d_tx.init(dv["params"]),
        rng=kr,
        generator=generator,
        discriminator=discriminator,
        g_tx=g_tx,
        d_tx=d_tx,
        latent_dim=latent_dim,
    )


def _vars(params, stats):
    return {"params": params, "batch_stats": stats} if stats else {"params": params}


def _apply_train(module, params, stats, x):
    """Train-mode forward; returns (output, updated batch stats)."""
    if not stats:
        return module.apply({"params": params}, x, train=True), stats
    out, upd = module.apply(_vars(params, stats), x, train=True, mutable=["batch_stats"])
    return out, upd["batch_stats"]


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
        "d_loss": loss,
        "d_real": jax.nn.sigmoid(real_logits).mean(),  # D(x)
        "d_fake": jax.nn.sigmoid(fake_logits).mean(),  # D(G(z)) before D's update
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
    return new, {"g_loss": loss, "d_fake_after": jax.nn.sigmoid(logits).mean()}


def gan_train_step(state: GANState, batch: dict[str, jax.Array], rng: jax.Array | None = None):
    """D step then G step on ``batch['image']`` (in [-1, 1]); returns (state, metrics).

    ``rng`` draws z (default: the state's key folded with the step, so a resumed run draws the
    same z). Pure: compile with ``jax.jit(gan_train_step, donate_argnums=0)``.
    """
    real = batch["image"]
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
        "score": float(np.exp(kl.mean())),
        "confidence": float(p.max(axis=1).mean()),
        "class_entropy": float(-np.sum(py * np.log(py))),
    }


class ClassifierScorer:
    """Softmax of a classifier trained by this codebase (a workdir), on images in [0, 1].

    The images are normalised as that run's dataset was (its config.json), so a LeNet trained on
    the MNIST folder scores generated 28x28 digits exactly as it saw test digits.
    """

    def __init__(self, workdir: str | Path):
        from research import data as data_lib
        from research.train.checkpoint import Checkpointer
        from research.train.loop import build_model

        workdir = Path(workdir)
        saved = json.loads((workdir / "config.json").read_text())
        resolved = saved.pop("_resolved", {})
        self.config = ConfigDict(saved)
        info = data_lib.get_dataset_info(self.config.data)
        self.mean = np.asarray(info.mean, np.float32)
        self.std = np.asarray(info.std, np.float32)
        self.model = build_model(self.config, int(resolved.get("num_classes", info.num_classes)))
        ckpt = Checkpointer(workdir, async_save=False)
        state = ckpt.restore_raw()
        ckpt.close()
        self.variables = {"params": state["params"]}
        if state.get("batch_stats"):
            self.variables["batch_stats"] = state["batch_stats"]
        self.variables.update(state.get("constants") or {})
        self._probs = jax.jit(lambda v, x: jax.nn.softmax(self.model.apply(v, x, train=False), axis=-1))

    def probs(self, images01, batch_size: int = 500) -> np.ndarray:
        out = []
        for i in range(0, len(images01), batch_size):
            x = (np.asarray(images01[i : i + batch_size], np.float32) - self.mean) / self.std
            out.append(np.asarray(self._probs(self.variables, x)))
        return np.concatenate(out)

    def scores(self, images01) -> dict[str, float]:
        return classifier_scores(self.probs(images01))


def ensure_score_classifier(gc: ConfigDict, data_cfg: ConfigDict, *, show_progress: bool = True) -> Path:
    """The scoring classifier's workdir; trains it first (LeNet-5 modern, ``gan.classifier_epochs``
    on the GAN's dataset, with the trainer of this codebase) when it holds no finished run."""
    from research.config import base_config, with_model
    from research.train.loop import train_and_evaluate

    workdir = Path(gc.classifier_workdir)
    if (workdir / "summary.json").exists() and json.loads((workdir / "summary.json").read_text()).get(
        "complete"
    ):
        return workdir
    c = base_config()
    with_model(c, gc.classifier_model)
    c.data = ConfigDict(data_cfg.to_dict())
    c.data.normalize = True
    c.optimizer.name = "adam"
    c.optimizer.lr = 2e-3
    c.train.duration = f"{gc.classifier_epochs} epochs"
    c.train.batch_size = 64
    c.train.eval_batch_size = 500
    c.train.log_every_steps = 100
    c.train.eval_every = ""
    c.train.checkpoint_every = ""
    print(
        f"training the scoring classifier {gc.classifier_model} into {workdir} ({gc.classifier_epochs} epochs)"
    )
    train_and_evaluate(c, workdir, show_progress=show_progress)
    return workdir


# --------------------------------------------------------------------------- the run


def build_gan(config: ConfigDict, image_shape: tuple[int, int, int]) -> tuple[Generator, Discriminator]:
    gc = config.gan
    h, w, c = image_shape
    if h != w:
        raise ValueError(f"DCGAN needs square images, got {h}x{w}")
    norm = BatchNorm if gc.batch_norm else None
    g = Generator(image_size=h, channels=c, base_size=gc.base_size, width=gc.g_width, norm=norm)
    d = Discriminator(image_size=h, base_size=gc.base_size, width=gc.d_width, norm=norm, leak=gc.leak)
    return g, d


def _to_unit(x):
    return (np.asarray(x, np.float32) + 1.0) * 0.5


def train_gan(config: ConfigDict, workdir: str | Path, *, show_progress: bool = True, stop_after_steps=None):
    """Trains the DCGAN of ``config.gan`` on ``config.data`` (resumable from ``workdir``).

    Per epoch: ``samples/epoch_NNN.png`` (a grid of G(z) for fixed z), the classifier score of
    ``gan.score_samples`` samples (``metrics.jsonl``, split 'samples'). Returns the summary dict.
    """
    from research import data as data_lib
    from research.config import parse_duration, to_dict, validate_config
    from research.train import checkpoint as ckpt_lib
    from research.train.reporting import MetricWriter, Progress, format_seconds
    from research.viz.images import make_grid, save_png

    validate_config(config)
    wall0 = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    gc, tc = config.gan, config.train
    if config.data.normalize:
        raise ValueError("the GAN reads images in [0, 1] (mapped to [-1, 1]): set data.normalize=False")
    info = data_lib.get_dataset_info(config.data)
    spe = data_lib.steps_per_epoch(config.data, tc.batch_size)
    total = parse_duration(tc.duration, spe, name="train.duration")
    ckpt_every = parse_duration(tc.checkpoint_every or 0, spe, name="train.checkpoint_every")
    generator, discriminator = build_gan(config, info.image_shape)
    g_tx = dcgan_adam(gc.g_lr, gc.b1, gc.b2)
    d_tx = dcgan_adam(gc.d_lr, gc.b1, gc.b2)
    state = create_gan_state(
        generator, discriminator, jax.random.key(config.seed), latent_dim=gc.latent_dim, g_tx=g_tx, d_tx=d_tx
    )
    step_fn = jax.jit(gan_train_step, donate_argnums=0)
    gen_fn = jax.jit(generate, static_argnames="train")
    scorer = None
    if gc.score_samples:
        scorer = ClassifierScorer(ensure_score_classifier(gc, config.data, show_progress=show_progress))
    z_grid = jax.random.normal(jax.random.key(config.seed + 1), (gc.grid_samples, gc.latent_dim))
    z_score = jax.random.normal(jax.random.key(config.seed + 2), (gc.score_samples, gc.latent_dim))

    train_it = data_lib.make_train_iterator(config.data, seed=config.seed, global_batch_size=tc.batch_size)
    ckpt = ckpt_lib.Checkpointer(workdir, keep=tc.keep_checkpoints, async_save=tc.async_checkpoints)
    start = ckpt.latest_step() or 0
    if start:
        arrays, data_state, _ = ckpt.restore(start, ckpt_lib.abstract_like(state.arrays()))
        state = state.replace_arrays(arrays)
        train_it.set_state(ckpt_lib.from_jsonable(data_state))
        print(f"resumed from {ckpt.directory / str(start)} (step {start}, epoch {start / spe:.2f})")
    resolved = to_dict(config)
    g_count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.g_params))
    d_count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.d_params))
    resolved["_resolved"] = dict(
        steps_per_epoch=spe,
        total_steps=total,
        g_params=g_count,
        d_params=d_count,
        image_shape=list(info.image_shape),
    )
    (workdir / "config.json").write_text(json.dumps(resolved, indent=2, default=str))
    print(
        f"DCGAN: G {g_count:,} params, D {d_count:,} params | data {info.name} {info.num_examples} "
        f"{'x'.join(map(str, info.image_shape))} | {spe} steps/epoch, {total} steps | workdir {workdir}"
    )
    writer = MetricWriter(workdir, resume_step=start)
    progress = Progress(total, start, tc.batch_size, enabled=show_progress)
    history = []

    def end_of_epoch(step: int) -> None:
        epoch = step / spe
        grid = _to_unit(gen_fn(state, z_grid))
        save_png(
            make_grid(grid, padding=2), workdir / "samples" / f"epoch_{int(round(epoch)):03d}.png", scale=2
        )
        row = {"epoch": epoch}
        if scorer is not None:
            samples = np.concatenate(
                [_to_unit(gen_fn(state, z_score[i : i + 500])) for i in range(0, len(z_score), 500)]
            )
            row.update(scorer.scores(samples))
        writer.write("samples", step, row)
        history.append({"step": step, **row})
        progress.message(
            f"epoch {epoch:.0f} (step {step}): samples/epoch_{int(round(epoch)):03d}.png"
            + (
                f" | score {row['score']:.2f} confidence {row['confidence']:.3f}"
                if scorer is not None
                else ""
            )
        )

    step, window, n_window, t_train, n_timed = start, {}, 0, 0.0, 0
    t0 = time.perf_counter()
    stop = total if stop_after_steps is None else min(total, stop_after_steps)
    try:
        while step < stop:
            batch = next(train_it)
            real = jnp.asarray(batch["image"]) * 2.0 - 1.0
            state, metrics = step_fn(state, {"image": real})
            step += 1
            metrics = jax.device_get(metrics)
            if not all(math.isfinite(float(v)) for v in metrics.values()):
                raise FloatingPointError(f"non-finite GAN loss at step {step}: {metrics}")
            for k, v in metrics.items():
                window[k] = window.get(k, 0.0) + float(v)
            n_window += 1
            if step == start + 1:  # the first step compiled: restart the clocks
                progress.reset_clock(step)
                t0, window, n_window = time.perf_counter(), {}, 0
            elif step % tc.log_every_steps == 0 or step == stop:
                dt = time.perf_counter() - t0
                t_train += dt
                n_timed += n_window
                row = {k: v / n_window for k, v in window.items()}
                row.update(epoch=step / spe, images_per_sec=n_window * tc.batch_size / dt)
                writer.write("train", step, row)
                progress.update(
                    step, {"d_loss": row["d_loss"], "g_loss": row["g_loss"], "D(x)": row["d_real"]}
                )
                window, n_window, t0 = {}, 0, time.perf_counter()
            if step % spe == 0 or step == total:
                end_of_epoch(step)
                t0 = time.perf_counter()
                progress.reset_clock(step)
            if (ckpt_every and step % ckpt_every == 0) or step == stop:
                ckpt.save(step, state.arrays(), train_it.get_state(), {"step": step, "model": "dcgan"})
    finally:
        progress.close()
        ckpt.close()
        writer.close()
    summary = {
        "task": "gan",
        "step": step,
        "total_steps": total,
        "complete": step >= total,
        "g_params": g_count,
        "d_params": d_count,
        "samples": history,
        "images_per_sec": n_timed * tc.batch_size / t_train if t_train > 0 else None,
        "wall_time_s": time.perf_counter() - wall0,
        "workdir": str(workdir),
    }
    if scorer is not None:
        test = data_lib.make_eval_iterator(config.data, config.data.eval_split, global_batch_size=500)
        real = np.concatenate([b["image"][b["mask"]] for b in test])
        summary["real_test_scores"] = scorer.scores(real)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    last = history[-1] if history else {}
    msg = f"done: DCGAN | {step} steps ({step / spe:.1f} epochs) in {format_seconds(summary['wall_time_s'])}"
    if "score" in last:
        msg += (
            f" | score {last['score']:.2f} (real test images {summary['real_test_scores']['score']:.2f})"
            f" confidence {last['confidence']:.3f}"
        )
    if summary["images_per_sec"]:
        msg += f" | {summary['images_per_sec']:.0f} img/s"
    print(msg + f" | workdir {workdir}")
    return summary
