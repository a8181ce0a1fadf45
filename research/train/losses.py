"""Classification losses on soft targets (mixup / CutMix, label smoothing).

``soft_target_cross_entropy(logits, targets, label_smoothing)`` is the loss of a batch whose
targets are distributions ([B, K], rows summing to 1), as made by ``research.data.mix.mix_batch``:
``-sum_k t_k log softmax(logits)_k`` per example, with label smoothing applied to the targets as
torch's ``CrossEntropyLoss(label_smoothing=e)`` does for probability targets
(``t (1 - e) + e / K``). With one-hot targets it equals the integer-label cross-entropy (and
``optax.smooth_labels`` for e > 0): tested against ``torch.nn.functional.cross_entropy``.

Wiring (the classification step; ``research.train.state`` owns it)::

    mix = MixSettings.from_config(config.data)            # once, outside jit
    ...
    images, targets = mix_lib.mix_batch(jax.random.fold_in(step_rng, 1), batch['image'],
                                        batch['label'], num_classes, mix)   # inside the step
    logits = apply(images)
    loss = losses.soft_target_cross_entropy(logits, targets, label_smoothing).mean()
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def soft_target_cross_entropy(
    logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """Per-example cross-entropy [B] of ``logits`` [B, K] against soft ``targets`` [B, K] (float32
    log-softmax whatever the logits' dtype)."""
    targets = targets.astype(jnp.float32)
    if label_smoothing:
        k = targets.shape[-1]
        targets = targets * (1.0 - label_smoothing) + label_smoothing / k
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(targets * logp, axis=-1)
