"""TFDS builder for scikit-learn's bundled 8x8 handwritten digits (offline, TF-free)."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from research.data.builders import registry
from research.data.builders._base import OfflineBuilder

NUM_EXAMPLES = 1797
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 images [N, 8, 8, 1] (0..255) and int64 labels [N]."""
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images[..., None], d.target.astype(np.int64)


def split_indices() -> dict[str, np.ndarray]:
    """Deterministic stratified 80/20 split of the example indices."""
    from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top

    _, labels = digits_arrays()
    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED)
    return {'train': np.sort(train), 'test': np.sort(test)}


class Digits(OfflineBuilder, skip_registration=True):
    """sklearn `load_digits`: 1,797 8x8 grayscale digits, stratified train/test split."""

    name = 'digits'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                'UCI ML hand-written digits (sklearn.datasets.load_digits), '
                'pixel values 0..16 rescaled to 0..255.'
            ),
            features=tfds.features.FeaturesDict(
                {
                    'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8, encoding='bytes'),
                    'label': tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
                }
            ),
            supervised_keys=('image', 'label'),
            metadata=tfds.core.MetadataDict(
                class_names=[str(i) for i in range(10)], split_seed=SPLIT_SEED, test_fraction=TEST_FRACTION
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is inside the sklearn wheel.
        images, labels = digits_arrays()
        return {split: self._generate_examples(images, labels, idx) for split, idx in split_indices().items()}

    def _generate_examples(self, images, labels, indices):
        for i in indices:
            yield int(i), {'image': images[i], 'label': int(labels[i])}


def _make_digits(path: str, data_dir: str, params=None, config=None) -> Digits:
    del path, params, config  # inside the scikit-learn wheel; nothing to set
    return Digits(data_dir=data_dir, file_format='array_record')


registry.register(
    'digits', _make_digits, kind='classification', description="scikit-learn's 1,797 8x8 digits"
)
