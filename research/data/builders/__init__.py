"""Offline TFDS builders (no network, no TensorFlow): `digits`, `image_folder`."""

from research.data.builders.digits import Digits
from research.data.builders.image_folder import ImageFolder

__all__ = ['Digits', 'ImageFolder']
