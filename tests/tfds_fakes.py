"""Small raw files in each TFDS dataset's own download format, and TFDS's downloads replaced by them.

The real TFDS builders then parse these files with their own code: CIFAR's binary batches, MNIST's
idx gz files, ImageNet's tar of per-synset JPEG tars plus its validation tar (labels from TFDS's own
label files), VOC's XML/JPEG/PNG layout in the VOC tarballs, COCO's JSON annotations and image zips.

``write_raw(root)`` writes them all (about 1 MB, a second or two). Run as a script, this module is a
launcher: ``python tests/tfds_fakes.py RAW_DIR [--no-tensorflow] -- launch.py --config=...`` replaces
``DownloadManager.download`` / ``download_and_extract`` with a lookup of the URL's file name in
``RAW_DIR`` (extraction stays TFDS's own), records each "download" in ``RAW_DIR/downloads.log``, and
runs ``launch.py`` (or ``-m module ...``); ``--no-tensorflow`` makes ``import tensorflow`` fail as if it were not installed.
ImageNet needs no patch: its tars go to ``<data_dir>/downloads/manual`` (``imagenet_manual``).
"""

from __future__ import annotations

import gzip
import importlib.abc
import io
import json
import os
import runpy
import struct
import sys
import tarfile
import zipfile

import numpy as np
from PIL import Image

MNIST_COUNTS = {'train': 60, 'test': 20}
CIFAR_COUNTS = {'train': 50, 'test': 20}  # CIFAR-10's train is 5 batches of 10
IMAGENET_SYNSETS = 3
IMAGENET_PER_SYNSET = 6
IMAGENET_VAL = 8
VOC_IDS = {
    'train': ['000005', '000007', '000009', '000012'],
    'val': ['000016', '000017', '000019'],
    'test': ['000001', '000002', '000004'],
}
COCO_COUNTS = {'train2017': 8, 'val2017': 4, 'test2017': 2}
VOC_CLASSES = (
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


def _rng(tag: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, tag)))


def _jpeg(rng: np.random.Generator, h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format='JPEG')
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------------------------------------------


def write_mnist(root: str) -> dict[str, str]:
    """The four idx gz files (``train-images-idx3-ubyte.gz``, ...): big-endian headers, then bytes."""
    rng = _rng('mnist')
    out = {}
    for split, prefix in (('train', 'train'), ('test', 't10k')):
        n = MNIST_COUNTS[split]
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = np.zeros((n, 28, 28), np.uint8)
        for i, lab in enumerate(labels):  # a bright bar whose position is the label, plus noise
            images[i, 4:24, 2 + 2 * lab : 5 + 2 * lab] = 255
            images[i] |= rng.integers(0, 40, (28, 28), dtype=np.uint8)
        files = {
            f'{prefix}-images-idx3-ubyte.gz': struct.pack('>IIII', 2051, n, 28, 28) + images.tobytes(),
            f'{prefix}-labels-idx1-ubyte.gz': struct.pack('>II', 2049, n) + labels.tobytes(),
        }
        for name, data in files.items():
            out[name] = os.path.join(root, name)
            with gzip.open(out[name], 'wb') as f:
                f.write(data)
    return out


def _cifar_records(rng, n: int, labels_per_record) -> bytes:
    recs = []
    for i in range(n):
        recs.append(bytes(labels_per_record(i)) + rng.integers(0, 256, 3072, dtype=np.uint8).tobytes())
    return b''.join(recs)


def write_cifar10(root: str) -> dict[str, str]:
    """``cifar-10-binary.tar.gz``: 5 train batches + a test batch of (label byte, 3072 CHW bytes) records."""
    rng = _rng('cifar10')
    path = os.path.join(root, 'cifar-10-binary.tar.gz')
    names = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
    with tarfile.open(path, 'w:gz') as tar:
        _add(tar, 'cifar-10-batches-bin/batches.meta.txt', ('\n'.join(names) + '\n\n').encode())
        per = CIFAR_COUNTS['train'] // 5
        for b in range(5):
            data = _cifar_records(rng, per, lambda i, b=b: [(b * per + i) % 10])
            _add(tar, f'cifar-10-batches-bin/data_batch_{b + 1}.bin', data)
        data = _cifar_records(rng, CIFAR_COUNTS['test'], lambda i: [i % 10])
        _add(tar, 'cifar-10-batches-bin/test_batch.bin', data)
    return {os.path.basename(path): path}


def write_cifar100(root: str) -> dict[str, str]:
    """``cifar-100-binary.tar.gz``: train.bin / test.bin of (coarse, fine, 3072 bytes) records."""
    rng = _rng('cifar100')
    path = os.path.join(root, 'cifar-100-binary.tar.gz')
    with tarfile.open(path, 'w:gz') as tar:
        _add(
            tar,
            'cifar-100-binary/coarse_label_names.txt',
            '\n'.join(f'coarse{i}' for i in range(20)).encode(),
        )
        _add(tar, 'cifar-100-binary/fine_label_names.txt', '\n'.join(f'fine{i}' for i in range(100)).encode())
        for split in ('train', 'test'):
            data = _cifar_records(rng, CIFAR_COUNTS[split], lambda i: [(7 * i) % 100 // 5, (7 * i) % 100])
            _add(tar, f'cifar-100-binary/{split}.bin', data)
    return {os.path.basename(path): path}


def imagenet_manual(manual_dir: str) -> dict[str, int]:
    """``ILSVRC2012_img_train.tar`` (one ``<synset>.tar`` of JPEGs per synset) and
    ``ILSVRC2012_img_val.tar`` (``ILSVRC2012_val_<n>.JPEG``, labelled by TFDS's validation_labels.txt
    in sorted order) in ``manual_dir``. Returns the number of images per split."""
    from tensorflow_datasets.datasets.imagenet2012 import imagenet_common  # pylint: disable=g-import-not-at-top

    rng = _rng('imagenet')
    os.makedirs(manual_dir, exist_ok=True)
    synsets = imagenet_common.label_names_file().read_text().split()[:IMAGENET_SYNSETS]
    with tarfile.open(os.path.join(manual_dir, 'ILSVRC2012_img_train.tar'), 'w') as tar:
        for s in synsets:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode='w') as sub:
                for i in range(IMAGENET_PER_SYNSET):  # full-size images of several aspect ratios
                    h, w = [(60, 80), (80, 60), (64, 64)][i % 3]
                    _add(sub, f'{s}_{i + 1}.JPEG', _jpeg(rng, h, w))
            _add(tar, f'{s}.tar', inner.getvalue())
    with tarfile.open(os.path.join(manual_dir, 'ILSVRC2012_img_val.tar'), 'w') as tar:
        for i in range(IMAGENET_VAL):
            _add(tar, f'ILSVRC2012_val_{i + 1:08d}.JPEG', _jpeg(rng, 48 + 4 * i, 56))
    return {'train': IMAGENET_SYNSETS * IMAGENET_PER_SYNSET, 'validation': IMAGENET_VAL}


def voc_example(rng, image_id: str) -> tuple[bytes, str, bytes, list[tuple[str, tuple[int, int, int, int]]]]:
    """(JPEG, annotation XML, class-mask palette PNG, objects) of one VOC image: 2 boxes, the mask
    filling each box with its class index and a 255 "void" border around it."""
    h, w = 48 + int(image_id) % 3 * 8, 64
    objs = []
    mask = np.zeros((h, w), np.uint8)
    for k in range(2):
        cls = VOC_CLASSES[(int(image_id) + 5 * k) % 20]
        x0, y0 = int(rng.integers(1, w // 2)), int(rng.integers(1, h // 2))
        x1, y1 = x0 + int(rng.integers(8, w // 2)), y0 + int(rng.integers(8, h // 2))
        objs.append((cls, (x0, y0, x1, y1)))
        mask[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = 255
        mask[y0:y1, x0:x1] = VOC_CLASSES.index(cls) + 1
    xml = (
        f'<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>'
        f'<size><width>{w}</width><height>{h}</height><depth>3</depth></size><segmented>1</segmented>'
        + ''.join(
            f'<object><name>{c}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>'
            f'<bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>'
            for c, (x0, y0, x1, y1) in objs
        )
        + '</annotation>'
    )
    png = Image.fromarray(mask, 'P')
    png.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    buf = io.BytesIO()
    png.save(buf, format='PNG')
    return _jpeg(rng, h, w), xml, buf.getvalue(), objs


def write_voc2007(root: str) -> dict[str, str]:
    """``VOCtrainval_06-Nov-2007.tar`` and ``VOCtest_06-Nov-2007.tar``: ``VOCdevkit/VOC2007/`` with
    ``Annotations`` (XML), ``JPEGImages``, ``SegmentationClass`` (palette PNGs) and the
    ``ImageSets/{Main,Segmentation}`` lists."""
    rng = _rng('voc')
    out = {}
    for name, sets in (
        ('VOCtrainval_06-Nov-2007.tar', ('train', 'val')),
        ('VOCtest_06-Nov-2007.tar', ('test',)),
    ):
        path = out[name] = os.path.join(root, name)
        base = 'VOCdevkit/VOC2007'
        with tarfile.open(path, 'w') as tar:
            for s in sets:
                listing = ('\n'.join(VOC_IDS[s]) + '\n').encode()
                _add(tar, f'{base}/ImageSets/Main/{s}.txt', listing)
                _add(tar, f'{base}/ImageSets/Segmentation/{s}.txt', listing)
                for image_id in VOC_IDS[s]:
                    jpeg, xml, png, _ = voc_example(rng, image_id)
                    _add(tar, f'{base}/JPEGImages/{image_id}.jpg', jpeg)
                    _add(tar, f'{base}/Annotations/{image_id}.xml', xml.encode())
                    _add(tar, f'{base}/SegmentationClass/{image_id}.png', png)
    return out


def coco_categories() -> list[dict]:
    """80 categories with COCO's sparse ids (1..90, 11 ids unused)."""
    unused = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91}
    ids = [i for i in range(1, 92) if i not in unused][:80]
    return [{'id': i, 'name': f'category_{i}', 'supercategory': 'thing'} for i in ids]


def write_coco2017(root: str) -> dict[str, str]:
    """``train2017.zip`` / ``val2017.zip`` / ``test2017.zip`` (images), ``annotations_trainval2017.zip``
    (``annotations/instances_{train,val}2017.json``) and ``image_info_test2017.zip``."""
    rng = _rng('coco')
    cats = coco_categories()
    out = {}
    annotations = {}
    next_image, next_ann = 1, 1
    for split, n in COCO_COUNTS.items():
        path = out[f'{split}.zip'] = os.path.join(root, f'{split}.zip')
        images, anns = [], []
        with zipfile.ZipFile(path, 'w') as z:
            for _ in range(n):
                h, w = 40 + next_image % 4 * 8, 56
                name = f'{next_image:012d}.jpg'
                z.writestr(f'{split}/{name}', _jpeg(rng, h, w))
                images.append({'id': next_image, 'file_name': name, 'height': h, 'width': w})
                for k in range(1 + next_image % 3):  # the third object of an image is a crowd box
                    x, y = float(rng.uniform(0, w / 2)), float(rng.uniform(0, h / 2))
                    bw, bh = float(rng.uniform(6, w / 2)), float(rng.uniform(6, h / 2))
                    anns.append(
                        {
                            'id': next_ann,
                            'image_id': next_image,
                            'bbox': [x, y, bw, bh],
                            'area': bw * bh,
                            'iscrowd': int(k == 2),
                            'segmentation': [],
                            'category_id': cats[(next_image * 7 + k) % 80]['id'],
                        }
                    )
                    next_ann += 1
                next_image += 1
        annotations[split] = {'images': images, 'annotations': anns, 'categories': cats}
    path = out['annotations_trainval2017.zip'] = os.path.join(root, 'annotations_trainval2017.zip')
    with zipfile.ZipFile(path, 'w') as z:
        for split in ('train2017', 'val2017'):
            z.writestr(f'annotations/instances_{split}.json', json.dumps(annotations[split]))
    path = out['image_info_test2017.zip'] = os.path.join(root, 'image_info_test2017.zip')
    with zipfile.ZipFile(path, 'w') as z:
        test = {'images': annotations['test2017']['images'], 'categories': cats}
        z.writestr('annotations/image_info_test2017.json', json.dumps(test))
    return out


def write_raw(root: str) -> dict[str, str]:
    """Every dataset's raw download files in ``root`` (file name -> path; ImageNet's are manual)."""
    os.makedirs(root, exist_ok=True)
    files = {}
    for write in (write_mnist, write_cifar10, write_cifar100, write_voc2007, write_coco2017):
        files.update(write(root))
    return files


# ---------------------------------------------------------------------------------------------------


def patch_downloads(raw_dir: str) -> None:
    """TFDS's downloads become lookups of the URL's file name in ``raw_dir`` (logged to
    ``raw_dir/downloads.log``); extraction is TFDS's own. MNIST's builder reads a fixed number of
    examples: set to the generated counts (as TFDS's own mnist_test does)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from etils import epath  # pylint: disable=g-import-not-at-top
    from tensorflow_datasets.image_classification import mnist  # pylint: disable=g-import-not-at-top

    mnist._TRAIN_EXAMPLES, mnist._TEST_EXAMPLES = MNIST_COUNTS['train'], MNIST_COUNTS['test']  # pylint: disable=protected-access

    def local(url) -> epath.Path:
        name = os.path.basename(str(getattr(url, 'url', url)))
        path = os.path.join(raw_dir, name)
        if not os.path.exists(path):
            raise ConnectionError(f'no network in this test: {url}')
        with open(os.path.join(raw_dir, 'downloads.log'), 'a') as f:
            f.write(f'{url}\n')
        return epath.Path(path)

    def download(self, url_or_urls):
        return tfds.core.utils.map_nested(local, url_or_urls)

    def download_and_extract(self, url_or_urls):
        return self.extract(download(self, url_or_urls))

    tfds.download.DownloadManager.download = download
    tfds.download.DownloadManager.download_and_extract = download_and_extract


class _HideTensorFlow(importlib.abc.MetaPathFinder):
    """Wraps a finder so that it finds no ``tensorflow`` (nor its submodules)."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, fullname, path, target=None):
        if fullname.split('.')[0] == 'tensorflow' or not hasattr(self.finder, 'find_spec'):
            return None
        return self.finder.find_spec(fullname, path, target)

    def invalidate_caches(self):
        if hasattr(self.finder, 'invalidate_caches'):
            self.finder.invalidate_caches()


def block_tensorflow() -> None:
    """From now on this process finds no TensorFlow (``import tensorflow`` raises ModuleNotFoundError,
    ``importlib.util.find_spec('tensorflow')`` is None), as if it were not installed."""
    assert 'tensorflow' not in sys.modules
    sys.meta_path[:] = [_HideTensorFlow(f) for f in sys.meta_path]


def main(argv: list[str]) -> None:
    sep = argv.index('--')
    raw_dir, flags, launch = argv[1], argv[2:sep], argv[sep + 1 :]
    if '--no-tensorflow' in flags:
        block_tensorflow()
    if raw_dir != '-':
        patch_downloads(raw_dir)
    if launch[0] == '-m':  # python -m <module> ...
        sys.argv = [launch[1], *launch[2:]]
        runpy.run_module(launch[1], run_name='__main__', alter_sys=True)
    else:
        sys.argv = launch
        runpy.run_path(launch[0], run_name='__main__')


if __name__ == '__main__':
    main(sys.argv)
