"""Semantic segmentation: offline datasets (``data``), losses, metrics and pictures.

Models live in ``research.models`` (registered names such as ``unet``, ``fcn8s``); this package
holds everything else; the run is the task ``segmentation`` (``research/tasks/segmentation.py``).
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
