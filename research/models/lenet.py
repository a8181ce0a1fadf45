"""LeNet-5: LeCun, Bottou, Bengio, Haffner 1998, "Gradient-based learning applied to document
recognition", Sec. II.B (architecture), Table I (C3 connections), Appendix A (squashing) and
Appendix C (initialisation); plus the common modern ReLU/max-pool variant.

Both models take 32x32 inputs. Smaller inputs (MNIST's 28x28) are padded to 32x32 with
``pad_value`` (the paper: "this 28x28 field was extended to 32x32 with background pixels");
larger inputs are an error -- resizing is the data pipeline's job (data.image_size=32).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.layers.common import Conv, FlaxConv, conv_general_dilated, resolve_activation, scaled_tanh
from research.layers.pooling import avg_pool, max_pool

INPUT_SIZE = 32

#: Table I: the S2 feature maps combined by each C3 feature map (row = C3 map).
C3_CONNECTIONS: tuple[tuple[int, ...], ...] = (
    (0, 1, 2),
    (1, 2, 3),
    (2, 3, 4),
    (3, 4, 5),
    (4, 5, 0),
    (5, 0, 1),
    (0, 1, 2, 3),
    (1, 2, 3, 4),
    (2, 3, 4, 5),
    (3, 4, 5, 0),
    (4, 5, 0, 1),
    (5, 0, 1, 2),
    (0, 1, 3, 4),
    (1, 2, 4, 5),
    (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


def connection_matrix(table: Sequence[Sequence[int]] = C3_CONNECTIONS, num_inputs: int = 6) -> np.ndarray:
    """Boolean [num_inputs, num_outputs] matrix; True where input map i feeds output map j."""
    m = np.zeros((num_inputs, len(table)), dtype=bool)
    for j, inputs in enumerate(table):
        m[list(inputs), j] = True
    return m


def pad_to_input_size(x: jax.Array, size: int = INPUT_SIZE, value: float = 0.0, model: str = 'LeNet-5'):
    """Centre-pads NHWC inputs smaller than ``size`` x ``size``; rejects larger ones."""
    h, w = x.shape[1], x.shape[2]
    if h > size or w > size:
        raise ValueError(
            f'{model} expects {size}x{size} inputs (smaller ones, e.g. 28x28 MNIST, are padded to '
            f'{size}x{size} as in the paper); got {h}x{w}. Resize in the data pipeline '
            f'(set data.image_size={size}).'
        )
    if (h, w) == (size, size):
        return x
    ph, pw = size - h, size - w
    pads = ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
    return jnp.pad(x, pads, constant_values=value)


def lecun98_uniform(fan_in: int | np.ndarray | None = None):
    """Appendix C: weights ~ U(-2.4/F, 2.4/F), F = fan-in of the unit the weight feeds.

    ``fan_in`` None: prod(shape[:-1]) (conv HWIO / dense IO kernels). An array broadcasts
    against the last axis (per-kernel fan-ins, used for C3's partial connections).
    """

    def init(key, shape, dtype=jnp.float32):
        f = np.prod(shape[:-1]) if fan_in is None else np.asarray(fan_in, np.float32)
        limit = jnp.asarray(2.4 / f, dtype)
        return jax.random.uniform(key, shape, dtype, -1.0, 1.0) * limit

    return init


def rbf_codes(num_classes: int, dim: int = 84) -> np.ndarray:
    """Fixed +-1 RBF centres [num_classes, dim] (deterministic).

    The paper hand-designs 7x12 bitmaps of the ASCII characters. We use rows 1.. of the
    Paley (type I, q = 83) Hadamard matrix of order 84: mutually orthogonal, balanced
    +-1 codes, all at squared distance 2*dim from each other. Beyond 83 classes (or
    dim != 84) the codes are drawn from a fixed-seed RNG.
    """
    q = dim - 1
    if dim == 84 and num_classes <= q:
        squares = {(i * i) % q for i in range(1, q)}
        chi = np.array([0] + [1 if a in squares else -1 for a in range(1, q)])
        idx = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
        s = np.zeros((dim, dim), np.int64)
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, chi[idx]
        hadamard = np.eye(dim, dtype=np.int64) + s
        return hadamard[1 : num_classes + 1].astype(np.float32)
    rng = np.random.default_rng(1998)
    return rng.choice(np.array([-1.0, 1.0], np.float32), size=(num_classes, dim))


class PartialConv(nn.Module):
    """Conv whose output map j sees only the input maps ``table[j]`` (LeNet-5's C3, Table I).

    Only the connected kernels are parameters: 'kernel' has shape (kh, kw, n_connections)
    and is scattered into a dense (kh, kw, in, out) kernel with a static index map, so the
    unconnected entries are exact zeros (zero gradient). ``table=None``: full connections.
    """

    summary_kind = 'conv'  # its row kind in research.layers.summary

    features: int
    kernel_size: tuple[int, int] = (5, 5)
    table: tuple[tuple[int, ...], ...] | None = C3_CONNECTIONS
    paper_init: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        cin = x.shape[-1]
        if self.table is None:
            init = lecun98_uniform() if self.paper_init else nn.initializers.lecun_normal()
            kernel = self.param('kernel', init, (kh, kw, cin, self.features))
        else:
            if len(self.table) != self.features:
                raise ValueError(f'connection table has {len(self.table)} rows, features={self.features}')
            if max(max(t) for t in self.table) >= cin:
                raise ValueError(f'connection table refers to input map >= {cin} (input has {cin} maps)')
            in_idx = np.array([i for t in self.table for i in t])
            out_idx = np.array([j for j, t in enumerate(self.table) for _ in t])
            fan_in = np.array([kh * kw * len(self.table[j]) for j in out_idx])
            if self.paper_init:
                init = lecun98_uniform(fan_in)
            else:  # LeCun normal with each output map's true fan-in.

                def init(key, shape, dtype=jnp.float32):
                    return jax.random.normal(key, shape, dtype) * jnp.asarray(1.0 / np.sqrt(fan_in), dtype)

            packed = self.param('kernel', init, (kh, kw, len(in_idx)))
            kernel = jnp.zeros((kh, kw, cin, self.features), packed.dtype)
            kernel = kernel.at[:, :, in_idx, out_idx].set(packed)
        bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
        x, kernel, bias = (jnp.asarray(a, self.dtype) for a in (x, kernel, bias))
        y = conv_general_dilated(x, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
        return y + bias


class Subsampling(nn.Module):
    """LeNet-5's S2/S4: per map, (sum of a 2x2 window) * trainable coefficient + trainable bias."""

    summary_kind = 'pool'  # its row kind in research.layers.summary

    window: int = 2
    paper_init: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        w = self.window
        init = lecun98_uniform(w * w) if self.paper_init else nn.initializers.constant(1.0 / (w * w))
        coef = self.param('coef', init, (c,))
        bias = self.param('bias', nn.initializers.zeros_init(), (c,))
        b, h, wd, _ = x.shape
        s = jnp.asarray(x, self.dtype).reshape(b, h // w, w, wd // w, w, c).sum(axis=(2, 4))
        return s * jnp.asarray(coef, self.dtype) + jnp.asarray(bias, self.dtype)


class RBFOutput(nn.Module):
    """Euclidean RBF output units with fixed centres; returns logits = -||x - c_i||^2.

    Centres live in the non-trainable 'constants' collection (``rbf_centers``, shape
    [num_classes, dim]). If that collection is not passed to ``apply`` the same
    deterministic default codes (``rbf_codes``) are used.
    """

    summary_kind = 'rbf'  # its row kind in research.layers.summary

    num_classes: int
    collection: str = 'constants'

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]

        def default():
            return jnp.asarray(rbf_codes(self.num_classes, dim))

        if self.is_mutable_collection(self.collection) or self.has_variable(self.collection, 'rbf_centers'):
            centers = self.variable(self.collection, 'rbf_centers', default).value
        else:
            centers = default()
        x = jnp.asarray(x, jnp.float32)
        d2 = jnp.sum(jnp.square(x[:, None, :] - centers[None, :, :]), axis=-1)
        return -d2


class LeNet5(nn.Module):
    """LeNet-5 as in LeCun et al. 1998 (Fig. 2, Sec. II.B), on 32x32 inputs.

    C1 6@5x5 (156 params) -> S2 subsampling (12) -> C3 16@5x5 with Table I's partial
    connections (60 kernels + 16 biases = 1,516) -> S4 (32) -> C5 120@5x5 (48,120) -> F6 84
    (10,164) -> RBF output: 60,000 trainable parameters (single-channel input), plus 840
    fixed RBF centres in the 'constants' collection. All layers up to F6 use the scaled tanh
    1.7159 tanh(2a/3) (Appendix A); weights are initialised U(+-2.4/fan_in) (Appendix C)
    unless ``paper_init=False``.

    Output: logits = -(squared Euclidean distance of F6 to each class centre), to be used with
    softmax cross-entropy. This replaces the paper's MAP criterion (Eq. 9); softmax CE on these
    logits is Eq. 9 without the constant "rubbish class" term e^{-j}.

    Knobs: ``connection_table=False`` gives a fully connected C3 (2,416 params); ``activation``
    (callable or name); ``pad_value`` for the 28->32 padding (the paper pads with background,
    which is -0.1 under its input normalisation).
    """

    num_classes: int = 10
    connection_table: bool = True
    activation: str | Callable = scaled_tanh
    paper_init: bool = True
    pad_value: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        del train  # no batch statistics or dropout in LeNet-5
        act = resolve_activation(self.activation)
        dense_init = lecun98_uniform() if self.paper_init else nn.initializers.lecun_normal()
        x = pad_to_input_size(jnp.asarray(x, self.dtype), value=self.pad_value, model='LeNet5')
        feats = {}
        x = FlaxConv(6, (5, 5), padding='VALID', kernel_init=dense_init, dtype=self.dtype, name='C1')(x)
        x = act(x)
        feats['c1'] = x
        x = act(Subsampling(paper_init=self.paper_init, dtype=self.dtype, name='S2')(x))
        feats['s2'] = x
        table = C3_CONNECTIONS if self.connection_table else None
        x = act(PartialConv(16, (5, 5), table, paper_init=self.paper_init, dtype=self.dtype, name='C3')(x))
        feats['c3'] = x
        x = act(Subsampling(paper_init=self.paper_init, dtype=self.dtype, name='S4')(x))
        feats['s4'] = x
        x = act(
            FlaxConv(120, (5, 5), padding='VALID', kernel_init=dense_init, dtype=self.dtype, name='C5')(x)
        )
        feats['c5'] = x
        x = x.reshape(x.shape[0], -1)
        x = act(nn.Dense(84, kernel_init=dense_init, dtype=self.dtype, name='F6')(x))
        logits = RBFOutput(self.num_classes, name='output')(x)
        return (logits, feats) if return_features else logits


class LeNet5Modern(nn.Module):
    """The common modern LeNet-5: conv 6@5x5 -> pool 2x2 -> conv 16@5x5 -> pool 2x2 ->
    dense 120 -> dense 84 -> dense num_classes (61,706 params for 1-channel input, 10 classes).

    Same 32x32 input rule as ``LeNet5`` (28x28 is padded to 32x32; the first conv is VALID).
    Knobs: ``activation`` (default ReLU), ``pool`` ('max' | 'avg' | callable(x, window, strides)),
    ``dropout_rate`` (after each hidden dense layer; rng 'dropout' when train=True).
    Features: 'c1', 's2', 'c3', 's4', and 'c5' = the 120-unit layer as a [B, 1, 1, 120] map
    (a dense layer on the 5x5x16 map is C5's 5x5 conv).
    """

    num_classes: int = 10
    activation: str | Callable = nn.relu
    pool: str | Callable = 'max'
    dropout_rate: float = 0.0
    pad_value: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        act = resolve_activation(self.activation)
        if callable(self.pool):
            pool = self.pool
        elif self.pool in ('max', 'avg'):
            pool = max_pool if self.pool == 'max' else avg_pool
        else:
            raise ValueError(f"unknown pool {self.pool!r}; expected 'max', 'avg' or a callable")
        conv = functools.partial(Conv, padding='VALID', dtype=self.dtype)
        x = pad_to_input_size(jnp.asarray(x, self.dtype), value=self.pad_value, model='LeNet5Modern')
        feats = {}
        x = feats['c1'] = act(conv(6, (5, 5), name='conv1')(x))
        x = feats['s2'] = pool(x, (2, 2), strides=(2, 2))
        x = feats['c3'] = act(conv(16, (5, 5), name='conv2')(x))
        x = feats['s4'] = pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = act(nn.Dense(120, dtype=self.dtype, name='fc1')(x))
        feats['c5'] = x[:, None, None, :]
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = act(nn.Dense(84, dtype=self.dtype, name='fc2')(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name='fc3')(x)
        logits = jnp.asarray(logits, jnp.float32)
        return (logits, feats) if return_features else logits


REGISTRY_ENTRIES = {'lenet5': LeNet5, 'lenet5_modern': LeNet5Modern}  # LeCun et al. 1998.
