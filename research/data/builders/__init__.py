"""This project's own TFDS builders (no TensorFlow), registered by ``data.name``.

Importing this package registers every builder module below in :mod:`.registry`:

- ``digits`` (scikit-learn's 8x8 digits) and ``image_folder`` (a ``<split>/<class>/<image>`` folder or
  tarball): classification;
- ``mnist_seg`` and ``shapes_seg`` (synthetic canvases): segmentation;
- ``mnist_det`` (synthetic canvases with boxes and masks): detection;
- ``voc_seg`` (PASCAL VOC's segmentation masks, downloaded from the VOC tarballs): segmentation.

Any other ``data.name`` is a TFDS catalog name (``research.data.tfds_catalog``).
"""

from research.data.builders import digits, image_folder, mnist_det, synthetic, voc_seg
from research.data.builders.digits import Digits
from research.data.builders.image_folder import ImageFolder
from research.data.builders.registry import Entry, lookup, names, register

__all__ = [
    'Digits',
    'Entry',
    'ImageFolder',
    'digits',
    'image_folder',
    'lookup',
    'mnist_det',
    'names',
    'register',
    'synthetic',
    'voc_seg',
]
