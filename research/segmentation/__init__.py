"""Semantic segmentation: offline datasets (``data``), losses, metrics, the training task and pictures.

Models live in ``research.models`` (registered names such as ``unet``, ``fcn8s``); this package
holds everything else. ``train.train_segmentation(config, workdir)`` is ``config.task ==
'segmentation'`` in ``launch.py``.
"""

from research.segmentation.losses import IGNORE_LABEL, cross_entropy_loss, dice_loss, segmentation_loss
from research.segmentation.metrics import confusion_matrix, metrics_from_confusion

__all__ = [
    'IGNORE_LABEL',
    'confusion_matrix',
    'cross_entropy_loss',
    'dice_loss',
    'metrics_from_confusion',
    'segmentation_loss',
]
