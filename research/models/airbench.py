"""airbench94: Keller Jordan 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (arXiv:2404.00498),
code ``airbench94.py`` of github.com/KellerJordan/cifar10-airbench: the network of the CIFAR-10 speed run.

Layout (32x32 input): a 2x2 "patch-whitening" conv (VALID, with bias, 2 * C * 2 * 2 = 24 filters for RGB)
-> GELU -> three conv groups [conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU] of widths
64, 256, 256 (maps 31 -> 15 -> 7 -> 3) -> global max pool (airbench's ``MaxPool2d(3)`` on the 3x3 map)
-> linear head without bias -> logits x 1/9. Note airbench pools *before* the first BatchNorm of a group.

Details as in airbench94: convs without bias, PyTorch's default init (U(+-1/sqrt(fan_in))) with the first
``C_in`` output filters set to the identity (``dirac_``: an implicit residual); BatchNorm with momentum 0.6
(Flax convention; PyTorch ``momentum=0.4``), epsilon 1e-12, no scale (PyTorch's weight frozen at 1), a
trained bias; exact (erf) GELU. The whitening kernel is set from the training data by
:func:`whitening_kernel` (eigenvectors of the 2x2-patch covariance, scaled by 1/sqrt(eigenvalue + eps),
and their negatives) and is frozen (``stop_gradient``; airbench's ``requires_grad=False``); its bias is
trained for the first epochs only (the trainer's job: ``research/train/speedrun.py``).

Parameters (10 classes, RGB): 1,971,640 in 'params', of which 288 are the frozen whitening kernel
(PyTorch counts 1,152 more: the frozen BatchNorm weights, absent here).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.layers.common import BatchNorm, FlaxConv, conv_general_dilated
from research.layers.pooling import max_pool
from research.layers.remat import remat_call

#: PyTorch's default Conv2d / Linear weight init: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def dirac_conv_init(base=torch_default_init):
    """``base`` with the first ``min(C_in, C_out)`` output filters set to the identity (``torch.nn.init.dirac_``
    on ``w[:C_in]``): output map i < C_in starts as a copy of input map i."""

    def init(key, shape, dtype=jnp.float32):
        kh, kw, cin, cout = shape
        w = base(key, shape, dtype)
        n = min(cin, cout)
        w = w.at[:, :, :, :n].set(0.0)
        idx = jnp.arange(n)
        return w.at[kh // 2, kw // 2, idx, idx].set(1.0)

    return init


def patch_covariance(images: np.ndarray, kernel_size: int = 2, chunk: int = 512) -> np.ndarray:
    """Uncentred covariance ``P^T P / n`` of all ``kernel_size`` x ``kernel_size`` patches (stride 1) of
    NHWC float ``images``; rows/columns in (h, w, c) order (float64, [k*k*C, k*k*C])."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    k = kernel_size
    dim = k * k * c
    cov = np.zeros((dim, dim), np.float64)
    count = 0
    for s in range(0, n, chunk):
        x = images[s : s + chunk].astype(np.float64)
        cols = [x[:, i : i + h - k + 1, j : j + w - k + 1, :] for i in range(k) for j in range(k)]
        p = np.stack(cols, axis=3).reshape(-1, dim)  # [patches, (i, j, c)]
        cov += p.T @ p
        count += p.shape[0]
    return cov / count


def whitening_kernel(images: np.ndarray, kernel_size: int = 2, eps: float = 5e-4) -> np.ndarray:
    """airbench's ``init_whitening_conv``: HWIO kernel [k, k, C, 2*k*k*C] whose filters are the eigenvectors
    of the patch covariance (largest eigenvalue first) divided by sqrt(eigenvalue + eps), followed by the
    same filters negated. ``images``: NHWC, normalised as the network sees them (airbench uses 5,000)."""
    cov = patch_covariance(images, kernel_size)
    evals, evecs = np.linalg.eigh(cov)  # ascending
    evals, evecs = evals[::-1], evecs[:, ::-1]
    filters = evecs / np.sqrt(evals + eps)  # column j = filter j, rows in (h, w, c) order
    c = images.shape[-1]
    kernel = filters.reshape(kernel_size, kernel_size, c, -1)
    return np.concatenate([kernel, -kernel], axis=-1).astype(np.float32)


class Whitening(nn.Module):
    """The k x k VALID conv with bias and 2*C*k*k filters; ``trainable=False`` stops the kernel's gradient."""

    kernel_size: int = 2
    trainable: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k, c = self.kernel_size, x.shape[-1]
        width = 2 * c * k * k
        kernel = self.param('kernel', torch_default_init, (k, k, c, width))
        bias = self.param('bias', nn.initializers.zeros_init(), (width,))
        if not self.trainable:
            kernel = jax.lax.stop_gradient(kernel)
        y = conv_general_dilated(  # the project's CPU first-layer path (shift-and-add), lax elsewhere
            jnp.asarray(x, self.dtype),
            jnp.asarray(kernel, self.dtype),
            (1, 1),
            'VALID',
            dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        )
        return y + jnp.asarray(bias, self.dtype)


class ConvGroup(nn.Module):
    """conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU (airbench's ``ConvGroup``)."""

    features: int
    bn_momentum: float = 0.6
    bn_epsilon: float = 1e-12
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = functools.partial(
            FlaxConv,
            self.features,
            (3, 3),
            padding='SAME',
            use_bias=False,
            kernel_init=dirac_conv_init(),
            dtype=self.dtype,
        )
        norm = functools.partial(
            BatchNorm,  # torch's running-variance rule (unbiased batch variance), as airbench's BatchNorm2d
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            use_scale=False,
            use_fast_variance=False,
            dtype=self.dtype,
        )
        gelu = functools.partial(nn.gelu, approximate=False)
        x = conv(name='conv1')(x)
        x = max_pool(x, 2)  # floor mode (31 -> 15); the project's fast-backward non-overlapping pool
        x = gelu(norm(name='norm1')(x))
        x = conv(name='conv2')(x)
        return gelu(norm(name='norm2')(x))


class AirbenchNet(nn.Module):
    """airbench94's network: Jordan 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (arXiv:2404.00498).

    Fields: ``widths`` of the three conv groups (64, 256, 256; airbench's ``base_width`` 64 times 1, 4, 4),
    ``whiten_kernel_size`` (2), ``whiten_trainable`` (False: the whitening kernel is frozen by
    ``stop_gradient``; its bias always gets a gradient), ``logit_scale`` (1/9), ``bn_momentum`` (0.6),
    ``bn_epsilon`` (1e-12), ``dtype`` (compute dtype; BN statistics and logits stay float32).
    Parameter paths: ``whiten/{kernel,bias}``, ``block{1,2,3}/{conv1,conv2}/kernel``,
    ``block{1,2,3}/{norm1,norm2}/bias``, ``head/kernel``.
    """

    num_classes: int = 10
    widths: Sequence[int] = (64, 256, 256)
    whiten_kernel_size: int = 2
    whiten_trainable: bool = False
    logit_scale: float = 1.0 / 9.0
    bn_momentum: float = 0.6
    bn_epsilon: float = 1e-12
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        x = Whitening(self.whiten_kernel_size, self.whiten_trainable, self.dtype, name='whiten')(x)
        x = nn.gelu(x, approximate=False)
        feats = {'whiten': x}
        for i, width in enumerate(self.widths, start=1):
            unit = functools.partial(
                ConvGroup, width, self.bn_momentum, self.bn_epsilon, self.dtype, name=f'block{i}'
            )
            x = remat_call(self.remat, self, lambda h: unit()(h, train), x)
            feats[f'block{i}'] = x
        x = jnp.max(x, axis=(1, 2))
        x = nn.Dense(
            self.num_classes, use_bias=False, kernel_init=torch_default_init, dtype=self.dtype, name='head'
        )(x)
        logits = jnp.asarray(x, jnp.float32) * self.logit_scale
        return (logits, feats) if return_features else logits


REGISTRY_ENTRIES = {  # Jordan 2024 (cifar10-airbench).
    'airbench94_cifar': AirbenchNet,
    # airbench95.py: the same net at widths 128, 384, 384 (95.01% in 15 epochs, 10.4 s on an A100).
    'airbench95_cifar': functools.partial(AirbenchNet, widths=(128, 384, 384)),
}
