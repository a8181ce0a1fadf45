"""Datasets and grain input pipelines.

This project's TFDS builders (`research.data.builders`, registered by name: `digits`,
`image_folder`, `mnist_seg`, `shapes_seg`, `mnist_det`, `voc_seg`) plus any TFDS catalog dataset
(`tfds_catalog`), read as array_record with `as_data_source` (no TensorFlow). See `datasets` for
the lookup by `data.name`, `pipeline` for the train/eval iterators, `roots` for the data root
`$RESEARCH_DATA_DIR` and `make_folders` for the CIFAR-10 / MNIST class folders.
"""

from research.data.datasets import DatasetInfo
from research.data.datasets import OFFLINE_BUILDERS
from research.data.datasets import data_config_defaults
from research.data.datasets import get_builder
from research.data.datasets import get_dataset_info
from research.data.pipeline import make_eval_iterator
from research.data.pipeline import make_train_iterator
from research.data.pipeline import steps_per_epoch

__all__ = [
    'DatasetInfo',
    'OFFLINE_BUILDERS',
    'data_config_defaults',
    'get_builder',
    'get_dataset_info',
    'make_eval_iterator',
    'make_train_iterator',
    'steps_per_epoch',
]
