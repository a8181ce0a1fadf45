"""mixup and CutMix as a pure ``jnp`` batch transform, for use inside the jitted train step.

- mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization"): ``lam ~ Beta(a, a)``,
  ``x = lam * x + (1 - lam) * x_pair``, targets mixed by the same ``lam``.
- CutMix (Yun et al. 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with
  Localizable Features"): a box of area fraction ``1 - lam`` (centre uniform over the image, clipped
  at the borders) is pasted from the paired image; the targets are mixed by the box's actual area,
  ``lam_adjusted = 1 - box_area / image_area``.

Definitions follow ``torchvision.transforms.v2.MixUp`` / ``CutMix`` (torchvision's classification
reference recipe): one ``lam`` per batch, example i paired with example i - 1 (``roll(1, 0)``),
the CutMix box from ``r = 0.5 sqrt(1 - lam)``, half-sizes ``int(r W)`` / ``int(r H)`` about a centre
``(randint(W), randint(H))``; with both enabled one of the two per batch (torchvision's
``RandomChoice``; timm's ``switch_prob``), CutMix with probability ``switch_prob``; a batch is mixed
at all with probability ``prob`` (timm's ``mix_prob``).

Why in the step and not on the host: pairs are taken across the *global* batch (the same pairs on
one device or many, on one host or several: the host pipeline only sees its own slice), the draws
come from the step's key (exact on resume, no extra pipeline state), it costs two elementwise
passes on the accelerator, and it works the same with ``data.on_device``. The loss takes the soft
targets: ``research.train.losses.soft_target_cross_entropy``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from research.data import datasets


@dataclasses.dataclass(frozen=True)
class MixSettings:
    """``data.augment.{mixup, cutmix, mix_prob, mix_switch_prob}`` (alphas 0 = off)."""

    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    @property
    def enabled(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.prob > 0

    @classmethod
    def from_config(cls, data_cfg) -> MixSettings:
        s = cls(
            mixup=float(datasets.field(data_cfg, 'augment.mixup')),
            cutmix=float(datasets.field(data_cfg, 'augment.cutmix')),
            prob=float(datasets.field(data_cfg, 'augment.mix_prob')),
            switch_prob=float(datasets.field(data_cfg, 'augment.mix_switch_prob')),
        )
        for name, v in (('mixup', s.mixup), ('cutmix', s.cutmix)):
            if v < 0:
                raise ValueError(f'data.augment.{name}={v}: expected an alpha >= 0 (0 = off)')
        for name, v in (('mix_prob', s.prob), ('mix_switch_prob', s.switch_prob)):
            if not 0 <= v <= 1:
                raise ValueError(f'data.augment.{name}={v}: expected a probability in [0, 1]')
        return s


def one_hot(labels: jax.Array, num_classes: int) -> jax.Array:
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def mixup(images: jax.Array, targets: jax.Array, lam) -> tuple[jax.Array, jax.Array]:
    """torchvision v2 MixUp with a given ``lam``: ``x * lam + roll(x, 1) * (1 - lam)`` for the
    images [B, H, W, C] and the soft targets [B, K]."""
    lam = jnp.asarray(lam, jnp.float32)
    mix = lambda a: jnp.roll(a, 1, axis=0) * (1.0 - lam) + a * lam
    return mix(images).astype(images.dtype), mix(targets)


def cutmix_box(lam, r_x, r_y, height: int, width: int):
    """torchvision v2 CutMix's box (x1, y1, x2, y2) and ``lam_adjusted`` for ``lam`` and the centre
    draws ``r_x`` in [0, W), ``r_y`` in [0, H) (int32 scalars)."""
    r = 0.5 * jnp.sqrt(1.0 - jnp.asarray(lam, jnp.float32))
    r_w_half = jnp.floor(r * width).astype(jnp.int32)
    r_h_half = jnp.floor(r * height).astype(jnp.int32)
    x1 = jnp.maximum(r_x - r_w_half, 0)
    y1 = jnp.maximum(r_y - r_h_half, 0)
    x2 = jnp.minimum(r_x + r_w_half, width)
    y2 = jnp.minimum(r_y + r_h_half, height)
    lam_adjusted = 1.0 - ((x2 - x1) * (y2 - y1)).astype(jnp.float32) / float(width * height)
    return (x1, y1, x2, y2), lam_adjusted


def cutmix(images: jax.Array, targets: jax.Array, lam, r_x, r_y) -> tuple[jax.Array, jax.Array]:
    """torchvision v2 CutMix with given draws: the box of ``cutmix_box`` is pasted from
    ``roll(x, 1)``; targets mixed by ``lam_adjusted``. Images [B, H, W, C], targets [B, K]."""
    _, h, w, _ = images.shape
    (x1, y1, x2, y2), lam_adj = cutmix_box(lam, r_x, r_y, h, w)
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    inside = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
    mixed = jnp.where(inside[None, :, :, None], jnp.roll(images, 1, axis=0), images)
    return mixed, jnp.roll(targets, 1, axis=0) * (1.0 - lam_adj) + targets * lam_adj


def mix_batch(
    rng: jax.Array, images: jax.Array, labels: jax.Array, num_classes: int, settings: MixSettings
) -> tuple[jax.Array, jax.Array]:
    """The step's transform: (images, soft targets [B, K] float32) for the global batch.

    ``rng``: a key for this step (e.g. ``jax.random.fold_in(step_rng, 1)``); ``labels`` int [B].
    With mixing off (``settings.enabled`` False) the images are returned as they are and the
    targets are one-hot. Otherwise the batch is mixed with probability ``settings.prob``, by mixup
    or CutMix (``settings.switch_prob`` picks CutMix when both alphas are > 0).
    """
    targets = one_hot(labels, num_classes)
    if not settings.enabled:
        return images, targets
    k_apply, k_switch, k_mixup, k_cutmix, k_x, k_y = jax.random.split(rng, 6)
    _, h, w, _ = images.shape
    apply = jax.random.uniform(k_apply) < settings.prob
    if settings.mixup > 0 and settings.cutmix > 0:
        use_cutmix = jax.random.uniform(k_switch) < settings.switch_prob
    else:
        use_cutmix = jnp.asarray(settings.cutmix > 0)
    lam_mixup = jax.random.beta(k_mixup, settings.mixup, settings.mixup) if settings.mixup > 0 else 1.0
    lam_cutmix = jax.random.beta(k_cutmix, settings.cutmix, settings.cutmix) if settings.cutmix > 0 else 1.0
    # A batch left alone is lam = 1: mixup's x * 1 + x' * 0 and an empty CutMix box are exact no-ops.
    lam_mixup = jnp.where(apply, lam_mixup, 1.0)
    lam_cutmix = jnp.where(apply, lam_cutmix, 1.0)
    r_x = jax.random.randint(k_x, (), 0, w)
    r_y = jax.random.randint(k_y, (), 0, h)
    return jax.lax.cond(
        use_cutmix,
        lambda: cutmix(images, targets, lam_cutmix, r_x, r_y),
        lambda: mixup(images, targets, lam_mixup),
    )
