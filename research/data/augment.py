"""Vectorised numpy image ops for the input pipeline: resize and augmentation.

All randomness comes from `uniform_hash(seed, index, n)`, a counter-based
generator: the draws for an example depend only on the seed and the example's
position in the global stream, never on threads, hosts or global RNG state.
"""

from __future__ import annotations

import functools

import numpy as np

# Slots of the per-example uniforms used by `augment_batch`.
_U_CROP_Y, _U_CROP_X, _U_FLIP, _U_ROTATE, _U_SCALE, _U_BRIGHTNESS = range(6)
NUM_UNIFORMS = 6

# Output pixels per chunk of `rotate_scale` (about one 224 px image).
_WARP_PIXELS = 1 << 16

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over='ignore'):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def uniform_hash(seed: int, index: np.ndarray, num: int) -> np.ndarray:
    """Deterministic uniforms in [0, 1), shape [len(index), num].

    Row i depends only on (seed, index[i]): a stateless, counter-based stream.
    """
    key = _splitmix64(np.asarray([int(seed) % 2**64], np.uint64))
    idx = np.asarray(index).astype(np.uint64).reshape(-1, 1)
    with np.errstate(over='ignore'):
        h = _splitmix64(idx ^ key)
        h = _splitmix64(h + np.arange(num, dtype=np.uint64)[None, :] * np.uint64(0xD1B54A32D192ED03))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


@functools.lru_cache(maxsize=64)
def resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] linear-interpolation matrix (half-pixel centres).

    Upsampling is plain bilinear; downsampling widens the triangle kernel
    (antialiasing), like `jax.image.resize(..., 'linear')`.
    """
    scale = in_size / out_size
    support = max(scale, 1.0)
    centres = (np.arange(out_size) + 0.5) * scale - 0.5
    dist = np.abs(np.arange(in_size)[None, :] - centres[:, None]) / support
    w = np.clip(1.0 - dist, 0.0, None)
    w /= w.sum(axis=1, keepdims=True)
    return w.astype(np.float32)


def resize(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes [B, H, W, C] (or [H, W, C]) images; returns float32."""
    single = images.ndim == 3
    x = images[None] if single else images
    x = x.astype(np.float32, copy=False)
    _, h, w, _ = x.shape
    if h != height:
        x = np.einsum('oh,bhwc->bowc', resize_weights(h, height), x)
    if w != width:
        x = np.einsum('pw,bhwc->bhpc', resize_weights(w, width), x)
    return x[0] if single else x


def resize_uint8(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """`resize` rounded back to uint8 (no-op when the size already matches)."""
    if images.shape[-3:-1] == (height, width):
        return images
    return np.clip(np.rint(resize(images, height, width)), 0, 255).astype(np.uint8)


def pad_crop_flip(
    images: np.ndarray, offset_y: np.ndarray, offset_x: np.ndarray, flip: np.ndarray, padding: int
) -> np.ndarray:
    """Zero-pads by `padding`, crops HxW at (offset_y, offset_x), flips where set.

    Offsets are in [0, 2*padding]; offset == padding and no flip is identity.
    """
    b, h, w, _ = images.shape
    if padding:
        images = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out = np.empty((b, h, w) + images.shape[3:], images.dtype)
    for i, (oy, ox, f) in enumerate(
        zip(np.asarray(offset_y).tolist(), np.asarray(offset_x).tolist(), np.asarray(flip, bool).tolist())
    ):
        crop = images[i, oy : oy + h, ox : ox + w]
        out[i] = crop[:, ::-1] if f else crop
    return out


def warp_grid(xp, b, h, w, angle_deg, zoom, *, offset_y=None, offset_x=None, flip=None, padding=0):
    """Where `rotate_scale`'s output pixels look, up to the per-pixel map.

    One formulation for the host (`xp=numpy`) and the device
    (`xp=jax.numpy`, `research.data.device_augment`). Output pixel (y, x)
    shows the rotated image's pixel (Y, X), with Y = y + offset_y - padding
    and X = x + offset_x - padding (or w - 1 - x + ... when flipped); 0 where
    (Y, X) is off the image. Returns cos/zoom and sin/zoom [B, 1, 1], `inside`
    [B, H, W], and Y, X about the centre as float32 [B, H, 1] and [B, 1, W].
    """
    theta = xp.deg2rad(xp.asarray(angle_deg, xp.float32))
    inv = xp.float32(1.0) / xp.asarray(zoom, xp.float32)
    cos = (xp.cos(theta) * inv)[:, None, None]
    sin = (xp.sin(theta) * inv)[:, None, None]
    rows = xp.broadcast_to(xp.arange(h, dtype=xp.int32), (b, h))
    cols = xp.broadcast_to(xp.arange(w, dtype=xp.int32), (b, w))
    if offset_y is not None:
        rows = rows + (xp.asarray(offset_y).astype(xp.int32) - padding)[:, None]
    if flip is not None:
        cols = xp.where(xp.asarray(flip).astype(bool)[:, None], cols[:, ::-1], cols)
    if offset_x is not None:
        cols = cols + (xp.asarray(offset_x).astype(xp.int32) - padding)[:, None]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    yy = (rows.astype(xp.float32) - xp.float32((h - 1) / 2.0))[:, :, None]
    xx = (cols.astype(xp.float32) - xp.float32((w - 1) / 2.0))[:, None, :]
    return cos, sin, inside, yy, xx


def warp_taps(xp, cos, sin, yy, xx, h, w):
    """The inverse map of `warp_grid`'s pieces: output pixel -> source point.

    Returns the bilinear fractions (fx, fy) and the top-left tap (y0, x0),
    int32 indices into the image with a 2-pixel zero border (clipped, so
    every tap of a point off the image reads the border's 0).
    """
    cy, cx = xp.float32((h - 1) / 2.0), xp.float32((w - 1) / 2.0)
    src_x = cos * xx - sin * yy + cx
    src_y = sin * xx + cos * yy + cy
    x0f = xp.floor(src_x)
    y0f = xp.floor(src_y)
    y0 = xp.clip(y0f, -2, h).astype(xp.int32) + 2
    x0 = xp.clip(x0f, -2, w).astype(xp.int32) + 2
    return src_x - x0f, src_y - y0f, y0, x0


def rotate_scale(
    images: np.ndarray,
    angle_deg: np.ndarray,
    zoom: np.ndarray,
    *,
    offset_y: np.ndarray | None = None,
    offset_x: np.ndarray | None = None,
    flip: np.ndarray | None = None,
    padding: int = 0,
    out_scale: float = 1.0,
) -> np.ndarray:
    """Rotates by `angle_deg` and zooms by `zoom` about the centre (bilinear).

    Positive angles turn the content counter-clockwise (like PIL's
    `Image.rotate`); zoom > 1 enlarges the content; pixels sampled from outside
    the image are 0 (bilinear weights blend towards 0 within one pixel of the
    edge, like `scipy.ndimage.map_coordinates(order=1, mode='grid-constant')`).
    Returns float32 [B, H, W, C].

    The optional crop and flip are fused into the same pass: the result equals
    `pad_crop_flip(rotate_scale(images, ...), offset_y, offset_x, flip,
    padding) * out_scale` bit for bit, without the padded float copy.

    Works through the batch in chunks of about `_WARP_PIXELS` output pixels so
    every temporary stays in cache: at 224 px this is ~4x faster than one
    batched gather, whose 13 MB temporaries are fresh pages each time.
    """
    b, h, w, c = images.shape
    cos_all, sin_all, inside, yy, xx = warp_grid(
        np, b, h, w, angle_deg, zoom, offset_y=offset_y, offset_x=offset_x, flip=flip, padding=padding
    )
    # A 2-pixel zero border lets all four taps use one clipped index: any
    # coordinate outside the image lands on the border and reads 0.
    hp, wp = h + 4, w + 4
    n = max(1, min(b, _WARP_PIXELS // (h * w)))  # images per chunk
    padded = np.zeros((c, n, hp, wp), np.float32)
    planes = padded.reshape(c, n * hp * wp)
    base = (np.arange(n, dtype=np.int32) * (hp * wp))[:, None, None]
    out = np.empty((b, h, w, c), np.float32)
    scale = np.float32(out_scale)
    for lo in range(0, b, n):
        hi = min(lo + n, b)
        k = hi - lo
        fx, fy, y0, x0 = warp_taps(np, cos_all[lo:hi], sin_all[lo:hi], yy[lo:hi], xx[lo:hi], h, w)
        fx, fy = fx.ravel(), fy.ravel()
        gx = 1 - fx
        # Cropped-away pixels read the (zero) top-left corner of the border.
        i00 = np.where(inside[lo:hi], base[:k] + y0 * wp + x0, base[:k]).ravel()
        i01, i10 = i00 + 1, i00 + wp
        i11 = i10 + 1
        padded[:, :k, 2 : h + 2, 2 : w + 2] = np.moveaxis(images[lo:hi], -1, 0)
        dst = out[lo:hi].reshape(k * h * w, c)
        for ch in range(c):
            plane = planes[ch]
            top = plane.take(i00) * gx + plane.take(i01) * fx
            bottom = plane.take(i10) * gx + plane.take(i11) * fx
            dst[:, ch] = top + (bottom - top) * fy
        if out_scale != 1.0:
            dst *= scale
    return out


def augment_params(
    uniforms: np.ndarray,
    *,
    crop_padding: int = 0,
    flip: bool = False,
    rotation: float = 0.0,
    scale: float = 0.0,
    brightness: float = 0.0,
) -> dict[str, np.ndarray]:
    """Each example's augmentation drawn from its `uniforms` row ([B, NUM_UNIFORMS]).

    Keys (only those of the enabled ops): offset_y, offset_x (int32 crop
    offsets in [0, 2 * crop_padding]) and flip (bool) when crop_padding or
    flip; angle (degrees) and zoom (float32) when rotation or scale; delta
    (float32 brightness shift) when brightness. `augment_batch` applies them on
    the host, `research.data.device_augment.augment` in the jitted step.
    """
    out = {}
    if crop_padding or flip:
        n = 2 * int(crop_padding) + 1
        out['offset_y'] = np.minimum((uniforms[:, _U_CROP_Y] * n).astype(np.int64), n - 1).astype(np.int32)
        out['offset_x'] = np.minimum((uniforms[:, _U_CROP_X] * n).astype(np.int64), n - 1).astype(np.int32)
        out['flip'] = (uniforms[:, _U_FLIP] < 0.5) if flip else np.zeros(len(uniforms), bool)
    if rotation or scale:
        out['angle'] = ((2 * uniforms[:, _U_ROTATE] - 1) * rotation).astype(np.float32)
        out['zoom'] = (1.0 + (2 * uniforms[:, _U_SCALE] - 1) * scale).astype(np.float32)
    if brightness:
        out['delta'] = ((2 * uniforms[:, _U_BRIGHTNESS] - 1) * brightness).astype(np.float32)
    return out


def augment_batch(
    images: np.ndarray,
    uniforms: np.ndarray,
    *,
    crop_padding: int = 0,
    flip: bool = False,
    rotation: float = 0.0,
    scale: float = 0.0,
    brightness: float = 0.0,
) -> np.ndarray:
    """Random augmentation of uint8 [B, H, W, C]; returns float32 on 0..1.

    `uniforms` is [B, NUM_UNIFORMS] (see `uniform_hash`; the draws are
    `augment_params`). Order: rotation/zoom, pad-and-crop, horizontal flip,
    brightness (clipped to [0, 1]).
    """
    params = augment_params(
        uniforms, crop_padding=crop_padding, flip=flip, rotation=rotation, scale=scale, brightness=brightness
    )
    x = images
    crop = {}
    if 'flip' in params:
        crop = dict(
            offset_y=params['offset_y'],
            offset_x=params['offset_x'],
            flip=params['flip'],
            padding=int(crop_padding),
        )
    if 'angle' in params:
        # One pass: warp, crop, flip and the 1/255 (see rotate_scale).
        x = rotate_scale(x, params['angle'], params['zoom'], **crop, out_scale=1.0 / 255.0)
    else:
        if crop:
            x = pad_crop_flip(x, **crop)
        x = x.astype(np.float32) * np.float32(1.0 / 255.0)
    if 'delta' in params:
        x = np.clip(x + params['delta'][:, None, None, None], 0.0, 1.0)
    return x


class Normalizer:
    """In-place (x - mean) / std over the channel axis of [B, H, W, C] float32.

    The per-channel constants are tiled over W so numpy broadcasts over long
    rows (broadcasting over a length-3 last axis is several times slower).
    """

    def __init__(self, mean, std, width: int):
        self._sub = np.tile(np.asarray(mean, np.float32), width)
        self._mul = np.tile(1.0 / np.asarray(std, np.float32), width)
        self._identity = not (np.any(self._sub) or np.any(self._mul != 1))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._identity:
            return x
        b, h, w, c = x.shape
        rows = x.reshape(b, h, w * c)
        rows -= self._sub
        rows *= self._mul
        return x
