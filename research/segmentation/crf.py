"""Fully connected CRF with Gaussian edge potentials (Krähenbühl & Koltun, NeurIPS 2011), as used by
DeepLab v1/v2 for post-processing, and as a differentiable layer (CRF-as-RNN, Zheng et al. 2015).

Energy of a labelling x: sum_i U_i(x_i) + sum_{i<j} mu(x_i, x_j) k(f_i, f_j) with
  U_i(l) = -log softmax(logits)_i(l),
  k(f_i, f_j) = w1 exp(-|p_i-p_j|^2/(2 theta_alpha^2) - |I_i-I_j|^2/(2 theta_beta^2))   (appearance)
              + w2 exp(-|p_i-p_j|^2/(2 theta_gamma^2))                                (smoothness)
p are pixel coordinates (in pixels), I the colour (in the units of theta_beta: DeepLab uses RGB in 0..255),
mu the label compatibility (default Potts: mu(l, l') = [l != l']). Mean-field inference iterates
  Q_i(l) ∝ exp(-U_i(l) - sum_{l'} mu(l, l') sum_{j != i} k(f_i, f_j) Q_j(l')),
starting from Q = softmax(logits). Kernels are unnormalised, as in the paper (pydensecrf normalises them
by default, so its weights are not interchangeable with these).

Two message-passing back ends, both jit-able and differentiable:

- ``'exact'``: the dense O(N^2) sum over all pixel pairs, computed in row chunks (the N x N kernel is
  never held at once; each chunk is rematerialised in the backward pass). For images up to ~64x64.
- ``'approx'``: the smoothness kernel is computed exactly as a separable Gaussian (two dense 1-D
  Gaussian matrices, O(N (H + W))). The appearance kernel is approximated by a 5-D bilateral grid over
  (y/theta_alpha, x/theta_alpha, I/theta_beta): multilinear splat onto a lattice of spacing
  ``grid_spacing`` (in units of the kernel widths), separable Gaussian blur along each lattice axis, and
  multilinear slice. The blur variance is reduced by the variance the two linear interpolations add
  (1/3 lattice cell^2 per axis) and rescaled to keep the kernel's mass; the approximate kernel is then
  divided by sqrt(d_i d_j), d_i its value at (i, i), so its diagonal is exactly 1 and the self term
  (j == i) is removed exactly. *Approximate*: only the appearance kernel; its error comes from the
  interpolation. Measured relative L2 error of the appearance messages vs 'exact' (tests/test_crf.py):
  0.04-0.09 at grid_spacing 1.0 (default), 0.005-0.017 at 0.5. With s = grid_spacing the lattice holds
  (floor((H-1)/(theta_alpha s))+2) (floor((W-1)/(theta_alpha s))+2) (floor(color_range/(theta_beta s))+2)^3
  cells x C floats, e.g. 25 x 21^3 x 21 classes = 4.9M floats for 256x256 RGB at the defaults.

``dense_crf`` is the functional entry point; ``DenseCRF`` is a Flax module whose kernel weights (and
optionally the compatibility matrix) are learnable parameters, for end-to-end training.
"""

import functools
import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

EXACT_MAX_PIXELS = 64 * 64  # 'auto' uses the exact back end up to this many pixels per image


# --------------------------------------------------------------------------- features


def _positions(h, w):
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing='ij')
    return yy, xx


def _bilateral_features(image, theta_alpha, theta_beta):
    """(H, W, 2 + C_img) normalised features: position / theta_alpha, colour / theta_beta."""
    h, w = image.shape[:2]
    yy, xx = _positions(h, w)
    pos = jnp.stack([yy, xx], axis=-1) / theta_alpha
    return jnp.concatenate([pos, image.astype(jnp.float32) / theta_beta], axis=-1)


def _spatial_features(h, w, theta_gamma):
    yy, xx = _positions(h, w)
    return jnp.stack([yy, xx], axis=-1) / theta_gamma


# --------------------------------------------------------------------------- exact messages


def _exact_message(q, image, w1, w2, theta_alpha, theta_beta, theta_gamma, chunk):
    """sum_{j != i} (w1 k_app + w2 k_smooth)(i, j) Q_j for one image; q (H, W, C), image (H, W, Ci)."""
    h, w, c = q.shape
    n = h * w
    fb = _bilateral_features(image, theta_alpha, theta_beta).reshape(n, -1)
    fs = _spatial_features(h, w, theta_gamma).reshape(n, -1)
    qf = q.reshape(n, c)
    chunk = min(chunk, n)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    fb_rows = jnp.pad(fb, ((0, pad), (0, 0))).reshape(n_chunks, chunk, -1)
    fs_rows = jnp.pad(fs, ((0, pad), (0, 0))).reshape(n_chunks, chunk, -1)

    @jax.checkpoint
    def rows(args):
        fb_i, fs_i = args
        db = jnp.sum(jnp.square(fb_i[:, None, :] - fb[None, :, :]), axis=-1)
        ds = jnp.sum(jnp.square(fs_i[:, None, :] - fs[None, :, :]), axis=-1)
        k = w1 * jnp.exp(-0.5 * db) + w2 * jnp.exp(-0.5 * ds)
        return jnp.dot(k, qf, precision=jax.lax.Precision.HIGHEST)

    msg = jax.lax.map(rows, (fb_rows, fs_rows)).reshape(n_chunks * chunk, c)[:n]
    msg = msg - (w1 + w2) * qf  # k(i, i) = 1 for both kernels: drop the self term
    return msg.reshape(h, w, c)


# --------------------------------------------------------------------------- approximate messages


def _gauss_matrix(size, sigma):
    """Dense (size, size) matrix exp(-(a-b)^2 / (2 sigma^2)) on integer positions."""
    a = jnp.arange(size, dtype=jnp.float32)
    return jnp.exp(-0.5 * jnp.square((a[:, None] - a[None, :]) / sigma))


def _spatial_message(q, theta_gamma):
    """Exact sum_j exp(-|p_i-p_j|^2/(2 theta_gamma^2)) Q_j (self term included), separable."""
    h, w, _ = q.shape
    ky = _gauss_matrix(h, theta_gamma)
    kx = _gauss_matrix(w, theta_gamma)
    hi = jax.lax.Precision.HIGHEST
    return jnp.einsum('ab,bwc->awc', ky, jnp.einsum('xw,hwc->hxc', kx, q, precision=hi), precision=hi)


def _grid_blur_1d(size, spacing):
    """1-D lattice blur for a Gaussian of unit width sampled at ``spacing``, net of the two linear
    interpolations (each adds variance 1/6 cell^2), rescaled so the effective kernel has the target mass."""
    target_var = 1.0 / spacing**2  # kernel variance in lattice cells^2
    var = target_var - 1.0 / 3.0
    if var <= 0:
        raise ValueError(f'grid_spacing must be < sqrt(3) ~ 1.73 kernel widths, got {spacing}')
    scale = math.sqrt(target_var / var)
    a = jnp.arange(size, dtype=jnp.float32)
    d2 = jnp.square(a[:, None] - a[None, :])
    return scale * jnp.exp(-0.5 * d2 / var), (scale, scale * math.exp(-0.5 / var))


def _grid_dims(h, w, ci, theta_alpha, spacing, color_cells):
    """Static lattice shape: spatial extents from the image size, colour extents from the value range."""
    return (
        tuple(int(math.floor((size - 1) / theta_alpha / spacing)) + 2 for size in (h, w))
        + (color_cells,) * ci
    )


def _lattice(image, theta_alpha, theta_beta, spacing, dims):
    """Splat/slice data of one image (independent of Q, so computed once per inference): flat lattice
    indices (2^d, n) of each pixel's cell corners, multilinear weights (2^d, n), and 1/sqrt of each pixel's
    approximate self weight (n, 1)."""
    h, w = image.shape[:2]
    n = h * w
    f = _bilateral_features(image, theta_alpha, theta_beta).reshape(n, -1) / spacing
    d = f.shape[1]
    f = f - jnp.min(f, axis=0, keepdims=True)
    base = jnp.floor(f)
    frac = f - base
    base = base.astype(jnp.int32)
    strides = [int(math.prod(dims[k + 1 :])) for k in range(d)]
    corners = jnp.asarray(list(itertools.product((0, 1), repeat=d)), jnp.int32)  # (2^d, d)
    idx = jnp.einsum('knd,d->kn', base[None] + corners[:, None, :], jnp.asarray(strides, jnp.int32))
    wts = jnp.prod(jnp.where(corners[:, None, :] == 1, frac[None], 1.0 - frac[None]), axis=-1)
    # Approximate kernel's self weight, factorised over axes: sum_{a,b in {0,1}} w_a w_b blur(a - b). The
    # approximate kernel is rescaled to k(i, j) / sqrt(d_i d_j), which makes k(i, i) = 1 exactly and removes
    # most of the amplitude ripple of the interpolation (it depends on each point's offset in its cell).
    _, (g0, g1) = _grid_blur_1d(2, spacing)
    self_w = jnp.prod(jnp.square(1 - frac) * g0 + jnp.square(frac) * g0 + 2 * frac * (1 - frac) * g1, axis=1)
    return idx, wts, jax.lax.rsqrt(self_w)[:, None]


def _grid_filter(q, lattice, spacing, dims):
    """Bilateral-grid approximation of sum_{j != i} k_app(i, j) Q_j for one image: splat, blur, slice."""
    h, w, c = q.shape
    idx, wts, inv_sqrt = lattice
    qf = q.reshape(h * w, c)
    values = wts[:, :, None] * (inv_sqrt * qf)[None]  # (2^d, n, c)
    grid = jnp.zeros((math.prod(dims), c), jnp.float32).at[idx.reshape(-1)].add(values.reshape(-1, c))
    grid = grid.reshape(*dims, c)
    for k in range(len(dims)):
        blur, _ = _grid_blur_1d(dims[k], spacing)
        grid = jnp.moveaxis(
            jnp.tensordot(blur, grid, axes=([1], [k]), precision=jax.lax.Precision.HIGHEST), 0, k
        )
    out = jnp.einsum('kn,knc->nc', wts, grid.reshape(-1, c)[idx], precision=jax.lax.Precision.HIGHEST)
    return (inv_sqrt * out - qf).reshape(h, w, c)


def _approx_message_lattice(q, lattice, w1, w2, theta_gamma, spacing, dims):
    spatial = _spatial_message(q, theta_gamma) - q
    return w1 * _grid_filter(q, lattice, spacing, dims) + w2 * spatial


def _approx_message(q, image, w1, w2, theta_alpha, theta_beta, theta_gamma, spacing, color_cells):
    """Approximate sum_{j != i} (w1 k_app + w2 k_smooth)(i, j) Q_j for one image (see module docstring)."""
    h, w, _ = q.shape
    dims = _grid_dims(h, w, image.shape[-1], theta_alpha, spacing, color_cells)
    lattice = _lattice(image, theta_alpha, theta_beta, spacing, dims)
    return _approx_message_lattice(q, lattice, w1, w2, theta_gamma, spacing, dims)


# --------------------------------------------------------------------------- inference


def _potts(num_classes):
    return 1.0 - jnp.eye(num_classes, dtype=jnp.float32)


def dense_crf(
    logits,
    image,
    *,
    num_iterations=5,
    theta_alpha=80.0,
    theta_beta=13.0,
    theta_gamma=3.0,
    w1=10.0,
    w2=3.0,
    compatibility=None,
    method='auto',
    output='probs',
    chunk=512,
    grid_spacing=1.0,
    color_range=255.0,
):
    """Mean-field inference of the fully connected CRF, batched over N.

    Args:
      logits: (N, H, W, C) network logits (unary = -log softmax(logits)).
      image: (N, H, W, Ci) reference image in the units of ``theta_beta`` (DeepLab: RGB in 0..255).
      num_iterations: mean-field steps (0 returns softmax(logits)).
      theta_alpha, theta_beta, theta_gamma: kernel widths (pixels, colour units, pixels).
      w1, w2: appearance and smoothness kernel weights (floats or traced scalars: differentiable).
      compatibility: (C, C) label compatibility mu; None = Potts (1 - I).
      method: 'exact' (dense O(N^2), chunked), 'approx' (separable smoothness + bilateral grid), or
        'auto' (exact up to ``EXACT_MAX_PIXELS`` pixels per image).
      output: 'probs' for Q (N, H, W, C), or 'logits' for the final negative energies (softmax of which
        is Q; usable with a softmax cross-entropy loss).
      chunk: rows of the dense kernel computed at once by the exact method.
      grid_spacing: bilateral-grid lattice spacing in kernel widths (approx method; < sqrt(3)).
      color_range: max - min of the image values, sizing the colour axes of the grid (approx method;
        values outside it are clipped onto the lattice border).
    """
    if logits.ndim != 4 or image.ndim != 4 or logits.shape[:3] != image.shape[:3]:
        raise ValueError(
            f'need logits (N, H, W, C) and image (N, H, W, Ci); got {logits.shape}, {image.shape}'
        )
    if output not in ('probs', 'logits'):
        raise ValueError(f"output must be 'probs' or 'logits', got {output!r}")
    _, h, w, c = logits.shape
    if method == 'auto':
        method = 'exact' if h * w <= EXACT_MAX_PIXELS else 'approx'
    if method not in ('exact', 'approx'):
        raise ValueError(f"method must be 'exact', 'approx' or 'auto', got {method!r}")
    if method == 'approx':
        _grid_blur_1d(2, grid_spacing)  # validates the spacing
    mu = _potts(c) if compatibility is None else jnp.asarray(compatibility, jnp.float32)
    if mu.shape != (c, c):
        raise ValueError(f'compatibility must be ({c}, {c}), got {mu.shape}')
    return _dense_crf(
        logits,
        image,
        jnp.asarray(w1, jnp.float32),
        jnp.asarray(w2, jnp.float32),
        mu,
        num_iterations=int(num_iterations),
        theta_alpha=float(theta_alpha),
        theta_beta=float(theta_beta),
        theta_gamma=float(theta_gamma),
        method=method,
        output=output,
        chunk=int(chunk),
        grid_spacing=float(grid_spacing),
        color_range=float(color_range),
    )


_STATIC = (
    'num_iterations',
    'theta_alpha',
    'theta_beta',
    'theta_gamma',
    'method',
    'output',
    'chunk',
    'grid_spacing',
    'color_range',
)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _dense_crf(
    logits,
    image,
    w1,
    w2,
    mu,
    *,
    num_iterations,
    theta_alpha,
    theta_beta,
    theta_gamma,
    method,
    output,
    chunk,
    grid_spacing,
    color_range,
):
    logits = logits.astype(jnp.float32)
    image = image.astype(jnp.float32)
    if method == 'exact':
        aux = image

        def message(q, img):
            return _exact_message(q, img, w1, w2, theta_alpha, theta_beta, theta_gamma, chunk)

    else:
        color_cells = int(math.floor(color_range / theta_beta / grid_spacing)) + 2
        lo = jnp.min(image, axis=(1, 2), keepdims=True)
        image = jnp.clip(image, lo, lo + color_range)
        _, h, w, ci = image.shape
        dims = _grid_dims(h, w, ci, theta_alpha, grid_spacing, color_cells)
        aux = jax.vmap(lambda img: _lattice(img, theta_alpha, theta_beta, grid_spacing, dims))(image)

        def message(q, lattice):
            return _approx_message_lattice(q, lattice, w1, w2, theta_gamma, grid_spacing, dims)

    unary = jax.nn.log_softmax(logits, axis=-1)  # = -U

    def step(energy, _):
        q = jax.nn.softmax(energy, axis=-1)
        msg = jax.vmap(message)(q, aux)
        pairwise = jnp.einsum('nhwk,lk->nhwl', msg, mu, precision=jax.lax.Precision.HIGHEST)
        return unary - pairwise, None

    energy, _ = jax.lax.scan(step, unary, None, length=num_iterations)
    return jax.nn.softmax(energy, axis=-1) if output == 'probs' else energy


class DenseCRF(nn.Module):
    """Mean-field dense CRF as a layer (CRF-as-RNN). ``__call__(logits, image)`` returns refined logits
    (N, H, W, C) whose softmax is the mean-field marginal Q.

    With ``learnable=True`` the kernel weights w1, w2 are parameters (initialised to the given values);
    with ``learn_compatibility=True`` so is the (C, C) compatibility matrix (initialised to Potts).
    Kernel widths stay fixed (the exact features and the approximate lattice are built from them).
    """

    num_classes: int = 21
    num_iterations: int = 5
    theta_alpha: float = 80.0
    theta_beta: float = 13.0
    theta_gamma: float = 3.0
    w1: float = 10.0
    w2: float = 3.0
    learnable: bool = True
    learn_compatibility: bool = False
    method: str = 'auto'
    chunk: int = 512
    grid_spacing: float = 1.0
    color_range: float = 255.0

    @nn.compact
    def __call__(self, logits, image):
        if logits.shape[-1] != self.num_classes:
            raise ValueError(f'expected {self.num_classes} classes, got logits {logits.shape}')
        if self.learnable:
            w1 = self.param('w1', lambda _: jnp.asarray(self.w1, jnp.float32))
            w2 = self.param('w2', lambda _: jnp.asarray(self.w2, jnp.float32))
        else:
            w1, w2 = self.w1, self.w2
        mu = None
        if self.learn_compatibility:
            mu = self.param('compatibility', lambda _: _potts(self.num_classes))
        return dense_crf(
            logits,
            image,
            num_iterations=self.num_iterations,
            theta_alpha=self.theta_alpha,
            theta_beta=self.theta_beta,
            theta_gamma=self.theta_gamma,
            w1=w1,
            w2=w2,
            compatibility=mu,
            method=self.method,
            output='logits',
            chunk=self.chunk,
            grid_spacing=self.grid_spacing,
            color_range=self.color_range,
        )
