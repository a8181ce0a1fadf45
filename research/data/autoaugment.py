"""RandAugment and AutoAugment on the host (PIL), with torchvision's ops, magnitudes and policies.

- RandAugment (Cubuk et al. 2020, "RandAugment: Practical automated data augmentation with a
  reduced search space"): ``num_ops`` ops drawn uniformly from 14 (identity included), each at the
  fixed ``magnitude`` bin of ``num_bins`` (torchvision: 2 ops, magnitude 9 of 31 bins), signed ops
  negated with probability 1/2. Config ``data.augment.randaugment='N,M'`` (or ``'N,M,bins'``).
- AutoAugment (Cubuk et al. 2019, "AutoAugment: Learning Augmentation Policies from Data"): one of
  the 25 sub-policies of the ImageNet (or CIFAR-10 / SVHN) policy, each op applied with its
  probability at its magnitude of 10 bins. Config ``data.augment.autoaugment='imagenet'``.

Each op is the Pillow call torchvision's functional API makes on a PIL image
(``torchvision.transforms._functional_pil``: ``Image.transform`` with the inverse affine matrix of
``F._get_inverse_affine_matrix`` for shear / translate, ``Image.rotate``, ``ImageEnhance`` for
brightness / color / contrast / sharpness, ``ImageOps`` for posterize / solarize / autocontrast /
equalize / invert), nearest interpolation and fill 0 as torchvision's defaults; magnitudes are
torchvision's float32 ``torch.linspace`` tables. The random draws come from the pipeline's
counter-based uniforms (one row per example), so an example's augmentation is a pure function of
(seed, stream position): ``uniforms_needed`` says how many a policy uses.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance, ImageOps


def _linspace32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps)`` in float32, bit for bit: torch fills the first half as
    ``start + step * i`` and the second as ``end - step * (steps - 1 - i)`` with a float32 step and
    fused multiply-adds (emulated here exactly: the float64 product of a float32 and a small integer
    is exact, so only the sum rounds)."""
    out = np.empty(steps, np.float32)
    if steps == 1:
        out[0] = start
        return out
    s32, e32 = np.float32(start), np.float32(end)
    step = np.float64((e32 - s32) / np.float32(steps - 1))
    half = steps // 2
    i = np.arange(steps, dtype=np.float64)
    out[:half] = (np.float64(s32) + step * i[:half]).astype(np.float32)
    out[half:] = (np.float64(e32) - step * (steps - 1 - i[half:])).astype(np.float32)
    return out


def magnitude_table(num_bins: int, height: int, width: int) -> dict[str, tuple[np.ndarray | None, bool]]:
    """torchvision's ``_augmentation_space``: op name -> (magnitudes per bin or None, signed)."""
    posterize = 8 - np.round(np.arange(num_bins, dtype=np.float32) / np.float32((num_bins - 1) / 4))
    return {
        'Identity': (None, False),
        'ShearX': (_linspace32(0.0, 0.3, num_bins), True),
        'ShearY': (_linspace32(0.0, 0.3, num_bins), True),
        'TranslateX': (_linspace32(0.0, 150.0 / 331.0 * width, num_bins), True),
        'TranslateY': (_linspace32(0.0, 150.0 / 331.0 * height, num_bins), True),
        'Rotate': (_linspace32(0.0, 30.0, num_bins), True),
        'Brightness': (_linspace32(0.0, 0.9, num_bins), True),
        'Color': (_linspace32(0.0, 0.9, num_bins), True),
        'Contrast': (_linspace32(0.0, 0.9, num_bins), True),
        'Sharpness': (_linspace32(0.0, 0.9, num_bins), True),
        'Posterize': (posterize.astype(np.int32), False),
        'Solarize': (_linspace32(255.0, 0.0, num_bins), False),
        'AutoContrast': (None, False),
        'Equalize': (None, False),
    }


#: RandAugment's ops, in torchvision's order (the op index draws into this list).
RANDAUGMENT_OPS = tuple(magnitude_table(31, 1, 1))


def _inverse_affine(center, angle, translate, scale, shear) -> list[float]:
    """``torchvision.transforms.functional._get_inverse_affine_matrix`` (inverted=True)."""
    rot = math.radians(angle)
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    m = [x / scale for x in (d, -b, 0.0, -c, a, 0.0)]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
    m[2] += cx
    m[5] += cy
    return m


def _fill(img: Image.Image):
    return (0,) * len(img.getbands()) if len(img.getbands()) > 1 else 0


def _affine(img: Image.Image, *, translate=(0, 0), shear=(0.0, 0.0), center=None) -> Image.Image:
    """``F.affine(img, angle=0, translate, scale=1, shear, NEAREST, fill=None, center)`` on PIL."""
    w, h = img.size
    if center is None:
        center = [w * 0.5, h * 0.5]
    matrix = _inverse_affine(center, 0.0, [float(t) for t in translate], 1.0, list(shear))
    return img.transform(img.size, Image.AFFINE, matrix, Image.NEAREST, fillcolor=_fill(img))


def apply_op(img: Image.Image, name: str, magnitude: float) -> Image.Image:
    """torchvision's ``autoaugment._apply_op`` on a PIL image (nearest interpolation, fill 0)."""
    if name == 'ShearX':
        return _affine(img, shear=(math.degrees(math.atan(magnitude)), 0.0), center=[0, 0])
    if name == 'ShearY':
        return _affine(img, shear=(0.0, math.degrees(math.atan(magnitude))), center=[0, 0])
    if name == 'TranslateX':
        return _affine(img, translate=(int(magnitude), 0))
    if name == 'TranslateY':
        return _affine(img, translate=(0, int(magnitude)))
    if name == 'Rotate':
        return img.rotate(magnitude, Image.NEAREST, False, None, fillcolor=_fill(img))
    if name == 'Brightness':
        return ImageEnhance.Brightness(img).enhance(1.0 + magnitude)
    if name == 'Color':
        return ImageEnhance.Color(img).enhance(1.0 + magnitude)
    if name == 'Contrast':
        return ImageEnhance.Contrast(img).enhance(1.0 + magnitude)
    if name == 'Sharpness':
        return ImageEnhance.Sharpness(img).enhance(1.0 + magnitude)
    if name == 'Posterize':
        return ImageOps.posterize(img, int(magnitude))
    if name == 'Solarize':
        return ImageOps.solarize(img, magnitude)
    if name == 'AutoContrast':
        return ImageOps.autocontrast(img)
    if name == 'Equalize':
        return ImageOps.equalize(img)
    if name == 'Invert':
        return ImageOps.invert(img)
    if name == 'Identity':
        return img
    raise ValueError(f'unknown augmentation op {name!r}')


def _pick(u: float, n: int) -> int:
    """``torch.randint(n)`` from a uniform in [0, 1)."""
    return min(int(u * n), n - 1)


class RandAugment:
    """torchvision's ``RandAugment(num_ops, magnitude, num_magnitude_bins)`` with the draws given:
    op t uses uniforms[2t] (which op) and uniforms[2t + 1] (negated if < 1/2, for signed ops)."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_bins: int = 31):
        if num_ops < 0 or not 0 <= magnitude < num_bins:
            raise ValueError(
                f'data.augment.randaugment: need num_ops >= 0 and 0 <= magnitude < bins, '
                f'got {num_ops},{magnitude},{num_bins}'
            )
        self.num_ops, self.magnitude, self.num_bins = int(num_ops), int(magnitude), int(num_bins)

    @property
    def uniforms_needed(self) -> int:
        return 2 * self.num_ops

    def ops(self, uniforms, height: int, width: int) -> list[tuple[str, float]]:
        """The (op, signed magnitude) sequence these draws give on an image of that size."""
        table = magnitude_table(self.num_bins, height, width)
        names = list(table)
        out = []
        for t in range(self.num_ops):
            name = names[_pick(float(uniforms[2 * t]), len(names))]
            mags, signed = table[name]
            magnitude = float(mags[self.magnitude]) if mags is not None else 0.0
            if signed and float(uniforms[2 * t + 1]) < 0.5:
                magnitude = -magnitude
            out.append((name, magnitude))
        return out

    def __call__(self, img: Image.Image, uniforms) -> Image.Image:
        for name, magnitude in self.ops(uniforms, img.height, img.width):
            img = apply_op(img, name, magnitude)
        return img


_IMAGENET_POLICY = (
    (('Posterize', 0.4, 8), ('Rotate', 0.6, 9)),
    (('Solarize', 0.6, 5), ('AutoContrast', 0.6, None)),
    (('Equalize', 0.8, None), ('Equalize', 0.6, None)),
    (('Posterize', 0.6, 7), ('Posterize', 0.6, 6)),
    (('Equalize', 0.4, None), ('Solarize', 0.2, 4)),
    (('Equalize', 0.4, None), ('Rotate', 0.8, 8)),
    (('Solarize', 0.6, 3), ('Equalize', 0.6, None)),
    (('Posterize', 0.8, 5), ('Equalize', 1.0, None)),
    (('Rotate', 0.2, 3), ('Solarize', 0.6, 8)),
    (('Equalize', 0.6, None), ('Posterize', 0.4, 6)),
    (('Rotate', 0.8, 8), ('Color', 0.4, 0)),
    (('Rotate', 0.4, 9), ('Equalize', 0.6, None)),
    (('Equalize', 0.0, None), ('Equalize', 0.8, None)),
    (('Invert', 0.6, None), ('Equalize', 1.0, None)),
    (('Color', 0.6, 4), ('Contrast', 1.0, 8)),
    (('Rotate', 0.8, 8), ('Color', 1.0, 2)),
    (('Color', 0.8, 8), ('Solarize', 0.8, 7)),
    (('Sharpness', 0.4, 7), ('Invert', 0.6, None)),
    (('ShearX', 0.6, 5), ('Equalize', 1.0, None)),
    (('Color', 0.4, 0), ('Equalize', 0.6, None)),
    (('Equalize', 0.4, None), ('Solarize', 0.2, 4)),
    (('Solarize', 0.6, 5), ('AutoContrast', 0.6, None)),
    (('Invert', 0.6, None), ('Equalize', 1.0, None)),
    (('Color', 0.6, 4), ('Contrast', 1.0, 8)),
    (('Equalize', 0.8, None), ('Equalize', 0.6, None)),
)
_CIFAR10_POLICY = (
    (('Invert', 0.1, None), ('Contrast', 0.2, 6)),
    (('Rotate', 0.7, 2), ('TranslateX', 0.3, 9)),
    (('Sharpness', 0.8, 1), ('Sharpness', 0.9, 3)),
    (('ShearY', 0.5, 8), ('TranslateY', 0.7, 9)),
    (('AutoContrast', 0.5, None), ('Equalize', 0.9, None)),
    (('ShearY', 0.2, 7), ('Posterize', 0.3, 7)),
    (('Color', 0.4, 3), ('Brightness', 0.6, 7)),
    (('Sharpness', 0.3, 9), ('Brightness', 0.7, 9)),
    (('Equalize', 0.6, None), ('Equalize', 0.5, None)),
    (('Contrast', 0.6, 7), ('Sharpness', 0.6, 5)),
    (('Color', 0.7, 7), ('TranslateX', 0.5, 8)),
    (('Equalize', 0.3, None), ('AutoContrast', 0.4, None)),
    (('TranslateY', 0.4, 3), ('Sharpness', 0.2, 6)),
    (('Brightness', 0.9, 6), ('Color', 0.2, 8)),
    (('Solarize', 0.5, 2), ('Invert', 0.0, None)),
    (('Equalize', 0.2, None), ('AutoContrast', 0.6, None)),
    (('Equalize', 0.2, None), ('Equalize', 0.6, None)),
    (('Color', 0.9, 9), ('Equalize', 0.6, None)),
    (('AutoContrast', 0.8, None), ('Solarize', 0.2, 8)),
    (('Brightness', 0.1, 3), ('Color', 0.7, 0)),
    (('Solarize', 0.4, 5), ('AutoContrast', 0.9, None)),
    (('TranslateY', 0.9, 9), ('TranslateY', 0.7, 9)),
    (('AutoContrast', 0.9, None), ('Solarize', 0.8, 3)),
    (('Equalize', 0.8, None), ('Invert', 0.1, None)),
    (('TranslateY', 0.7, 9), ('AutoContrast', 0.9, None)),
)
_SVHN_POLICY = (
    (('ShearX', 0.9, 4), ('Invert', 0.2, None)),
    (('ShearY', 0.9, 8), ('Invert', 0.7, None)),
    (('Equalize', 0.6, None), ('Solarize', 0.6, 6)),
    (('Invert', 0.9, None), ('Equalize', 0.6, None)),
    (('Equalize', 0.6, None), ('Rotate', 0.9, 3)),
    (('ShearX', 0.9, 4), ('AutoContrast', 0.8, None)),
    (('ShearY', 0.9, 8), ('Invert', 0.4, None)),
    (('ShearY', 0.9, 5), ('Solarize', 0.2, 6)),
    (('Invert', 0.9, None), ('AutoContrast', 0.8, None)),
    (('Equalize', 0.6, None), ('Rotate', 0.9, 3)),
    (('ShearX', 0.9, 4), ('Solarize', 0.3, 3)),
    (('ShearY', 0.8, 8), ('Invert', 0.7, None)),
    (('Equalize', 0.9, None), ('TranslateY', 0.6, 6)),
    (('Invert', 0.9, None), ('Equalize', 0.6, None)),
    (('Contrast', 0.3, 3), ('Rotate', 0.8, 4)),
    (('Invert', 0.8, None), ('TranslateY', 0.0, 2)),
    (('ShearY', 0.7, 6), ('Solarize', 0.4, 8)),
    (('Invert', 0.6, None), ('Rotate', 0.8, 4)),
    (('ShearY', 0.3, 7), ('TranslateX', 0.9, 3)),
    (('ShearX', 0.1, 6), ('Invert', 0.6, None)),
    (('Solarize', 0.7, 2), ('TranslateY', 0.6, 7)),
    (('ShearY', 0.8, 4), ('Invert', 0.8, None)),
    (('ShearX', 0.7, 9), ('TranslateY', 0.8, 3)),
    (('ShearY', 0.8, 5), ('AutoContrast', 0.7, None)),
    (('ShearX', 0.7, 2), ('Invert', 0.1, None)),
)
POLICIES = {'imagenet': _IMAGENET_POLICY, 'cifar10': _CIFAR10_POLICY, 'svhn': _SVHN_POLICY}


class AutoAugment:
    """torchvision's ``AutoAugment(policy)`` with the draws given: uniforms[0] picks the
    sub-policy, uniforms[1 + i] < p applies its op i, uniforms[3 + i] < 1/2 negates a signed op
    (torchvision's ``signs[i] == 0``)."""

    uniforms_needed = 5

    def __init__(self, policy: str = 'imagenet'):
        key = str(policy).strip().lower()
        if key not in POLICIES:
            raise ValueError(
                f'data.augment.autoaugment={policy!r}: expected one of {sorted(POLICIES)} (or "" for off)'
            )
        self.policy = key
        self.sub_policies = POLICIES[key]

    def ops(self, uniforms, height: int, width: int) -> list[tuple[str, float]]:
        table = magnitude_table(10, height, width)
        table['Invert'] = (None, False)
        sub = self.sub_policies[_pick(float(uniforms[0]), len(self.sub_policies))]
        out = []
        for i, (name, p, bin_) in enumerate(sub):
            if float(uniforms[1 + i]) <= p:
                mags, signed = table[name]
                magnitude = float(mags[bin_]) if bin_ is not None else 0.0
                if signed and float(uniforms[3 + i]) < 0.5:
                    magnitude = -magnitude
                out.append((name, magnitude))
        return out

    def __call__(self, img: Image.Image, uniforms) -> Image.Image:
        for name, magnitude in self.ops(uniforms, img.height, img.width):
            img = apply_op(img, name, magnitude)
        return img


def parse_randaugment(value) -> RandAugment | None:
    """``data.augment.randaugment``: '' / None / 0 = off; 'N,M' or 'N,M,bins' (or a tuple, as the
    command line parses ``2,9``)."""
    if value in (None, '', 0, False, ()):
        return None
    parts = value if isinstance(value, (tuple, list)) else str(value).replace(' ', '').split(',')
    try:
        nums = [int(p) for p in parts]
    except (TypeError, ValueError):
        nums = []
    if len(nums) not in (2, 3):
        raise ValueError(f"data.augment.randaugment={value!r}: expected 'N,M' (e.g. '2,9') or 'N,M,bins'")
    return RandAugment(*nums)


def make_policy(randaugment, autoaugment) -> RandAugment | AutoAugment | None:
    """The host policy of the config (at most one of the two)."""
    ra = parse_randaugment(randaugment)
    aa = AutoAugment(autoaugment) if autoaugment else None
    if ra is not None and aa is not None:
        raise ValueError(
            f'data.augment.randaugment={randaugment!r} and data.augment.autoaugment={autoaugment!r}: pick one'
        )
    return ra or aa
