"""Per-example image transforms on full-resolution images, with torchvision's semantics (PIL).

The ImageNet recipe's geometry (Szegedy et al. 2015's "Inception" crop as torchvision implements
it; He et al. 2016 / Goyal et al. 2017's resize-256 / center-crop-224 evaluation) is defined on the
decoded full-size image, so it runs one example at a time, with the same Pillow calls that
``torchvision.transforms`` makes on PIL images:

- :func:`rrc_box`: ``RandomResizedCrop.get_params`` (scale 0.08-1, log-uniform ratio 3/4-4/3, ten
  tries, then the center-crop fallback), with the uniforms supplied by the caller (the pipeline's
  counter-based draws) instead of torch's global generator;
- :func:`resized_crop`: ``F.resized_crop`` on a PIL image: ``crop`` then ``resize`` with
  ``Image.BILINEAR`` (Pillow's bilinear filter widens with the scale factor: it is antialiased, as
  torchvision's ``antialias=True``);
- :func:`resize_shorter` and :func:`center_crop`: ``F.resize(img, [size])`` (shorter side to
  ``size``, the longer ``int(size * long / short)``) and ``F.center_crop`` (rounded offsets, zero
  padding when the crop is larger than the image).

No torch here: the runtime never imports it (the tests compare against torchvision).
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

# Uniforms used by rrc_box: ten tries of (scale, log-ratio, top, left).
RRC_TRIES = 10
RRC_UNIFORMS = 4 * RRC_TRIES

_GRAY_MODES = frozenset({'1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'})


def open_image(ref, channels: int = 3) -> Image.Image:
    """A decoded PIL image in mode 'RGB' (channels 3) or 'L' (channels 1) from encoded file bytes
    (``bytes`` or a 1-D uint8 array), a file path, a PIL image or decoded uint8 [H, W(, C)] pixels. RGB JPEGs are decoded as is (what
    torchvision's ``pil_loader`` gives after its ``convert('RGB')``, without that copy)."""
    if isinstance(ref, Image.Image):
        img = ref
    elif isinstance(ref, np.ndarray) and ref.ndim >= 2:  # decoded pixels
        img = Image.fromarray(ref[..., 0] if ref.ndim == 3 and ref.shape[-1] == 1 else ref)
    else:
        if isinstance(ref, np.ndarray):  # encoded file bytes stored as a uint8 vector
            ref = ref.tobytes()
        img = Image.open(io.BytesIO(ref) if isinstance(ref, (bytes, bytearray, memoryview)) else ref)
    if channels == 3:
        if img.mode != 'RGB':
            img = img.convert('RGB')
        else:
            img.load()
        return img
    if img.mode.startswith('I'):  # 16/32-bit grayscale: 0..65535 -> 0..255 (as the image_folder builder)
        arr = np.round(np.asarray(img).astype(np.float64) / 257.0).clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr)
    if img.mode == 'F':
        return Image.fromarray(np.round(np.asarray(img)).clip(0, 255).astype(np.uint8))
    return img if img.mode == 'L' else img.convert('L')


def rrc_box(
    height: int,
    width: int,
    uniforms,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) of torchvision's ``RandomResizedCrop.get_params``.

    ``uniforms``: at least :data:`RRC_UNIFORMS` numbers in [0, 1); try t uses
    ``uniforms[4t : 4t + 4]`` as torch's ``uniform_(scale)``, ``uniform_(log ratio)`` and the two
    ``randint`` draws (``floor(u * n)``). After ten tries that do not fit, the center crop of the
    largest box within ``ratio`` (the whole image if its own ratio is inside).
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for t in range(RRC_TRIES):
        u_scale, u_ratio, u_top, u_left = (float(v) for v in uniforms[4 * t : 4 * t + 4])
        target_area = area * (scale[0] + u_scale * (scale[1] - scale[0]))
        aspect = math.exp(log_lo + u_ratio * (log_hi - log_lo))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u_top * (height - h + 1)), height - h)
            left = min(int(u_left * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = round(w / min(ratio))
    elif in_ratio > max(ratio):
        h = height
        w = round(h * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(img: Image.Image, box: tuple[int, int, int, int], size: tuple[int, int]) -> Image.Image:
    """``F.resized_crop(img, top, left, h, w, size)`` on a PIL image: crop, then bilinear
    (antialiased) resize to ``size`` = (height, width); no resize if the crop already has that size."""
    top, left, h, w = box
    img = img.crop((left, top, left + w, top + h))
    if (h, w) == tuple(size):
        return img
    return img.resize((size[1], size[0]), Image.BILINEAR)


def shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(new_height, new_width) of ``F.resize(img, [size])``: the shorter side becomes ``size``, the
    longer ``int(size * long / short)`` (truncated, as torchvision)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return new_h, new_w


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """``F.resize(img, [size])`` with ``InterpolationMode.BILINEAR`` on a PIL image."""
    w, h = img.size
    nh, nw = shorter_side_size(h, w, size)
    if (nh, nw) == (h, w):
        return img
    return img.resize((nw, nh), Image.BILINEAR)


def center_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``F.center_crop(img, size)`` on a PIL image: offsets ``int(round((H - h) / 2))`` (Python's
    round: half to even), zero padding first where the image is smaller than the crop."""
    ch, cw = size
    w, h = img.size
    if cw > w or ch > h:
        pad_l = (cw - w) // 2 if cw > w else 0
        pad_t = (ch - h) // 2 if ch > h else 0
        pad_r = (cw - w + 1) // 2 if cw > w else 0
        pad_b = (ch - h + 1) // 2 if ch > h else 0
        canvas = Image.new(img.mode, (w + pad_l + pad_r, h + pad_t + pad_b), 0)
        canvas.paste(img, (pad_l, pad_t))
        img = canvas
        w, h = img.size
        if (cw, ch) == (w, h):
            return img
    top = round((h - ch) / 2.0)
    left = round((w - cw) / 2.0)
    return img.crop((left, top, left + cw, top + ch))


def eval_transform(img: Image.Image, resize: int, crop: tuple[int, int]) -> Image.Image:
    """Resize the shorter side to ``resize`` (0 = no resize), then center-crop ``crop``: torchvision's
    ``Resize(resize)`` + ``CenterCrop(crop)`` (``ResNet50_Weights.IMAGENET1K_V2.transforms()`` is
    ``resize=232, crop=224``; the classic recipe ``resize=256, crop=224``)."""
    if resize:
        img = resize_shorter(img, resize)
    return center_crop(img, crop)


def to_array(img: Image.Image, channels: int) -> np.ndarray:
    """uint8 [H, W, channels] view of a PIL image."""
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr
