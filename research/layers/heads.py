"""Classifier heads (Flax Linen, NHWC)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

__all__ = ['classifier_head']


def classifier_head(x, num_classes, dropout_rate=0.0, train=False, dtype=None, name='fc'):
    """Global average pool -> dropout (``dropout_rate``, active when ``train``) -> linear layer
    ``name`` -> float32 logits: the head of the ResNet-era classifiers. Call it inside a compact
    method; the linear layer is the caller's submodule ``name`` (torchvision's 'fc',
    'classifier', ...), so parameter trees keep their names."""
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(dropout_rate, deterministic=not train)(x)
    return jnp.asarray(nn.Dense(num_classes, dtype=dtype, name=name)(x), jnp.float32)
