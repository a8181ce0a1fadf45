"""``mnist_det``: an offline detection dataset (TFDS builder, array_record, ``Tensor`` features, no
TensorFlow) of MNIST-10k digits pasted on canvases (read by ``research.detection.data``).

Each canvas (default 128 x 128, black) holds ``min_objects..max_objects`` digits at a random scale
(``min_scale..max_scale`` x 28 px) and position; a digit's paste window overlaps earlier ones by
IoU <= ``max_iou`` (positions are redrawn, a few times at most) and later digits occlude earlier
ones. The pasting is ``research.data.builders.synthetic.paste_digits`` (shared with ``mnist_seg``).
Features, objects in paste order and padded to ``max_objects``:

- ``image`` uint8 [S, S, 1]; ``num_objects`` int32;
- ``boxes`` float32 [M, 4] xyxy pixels, tight around the visible stroke (pixels >= 128):
  (x_min, y_min, x_max + 1, y_max + 1) of the mask, zeros for padding;
- ``labels`` int32 [M]: digit + 1 (1..10), 0 for padding;
- ``masks`` uint8 [M, S, S] (zlib-encoded): 1 on the object's visible stroke.

A digit left with no visible pixel is dropped. Train canvases use the source's train digits, test
canvases its test digits; every example is a pure function of (seed, split, index).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from research.data import roots
from research.data.builders import registry, synthetic

CLASSES = ('background',) + tuple(f'digit_{i}' for i in range(10))


@dataclasses.dataclass(frozen=True)
class DetParams:
    """What ``mnist_det`` is generated from (part of the builder config's name)."""

    canvas_size: int = 128
    min_objects: int = 2
    max_objects: int = 6
    min_scale: float = 0.8
    max_scale: float = 2.0
    max_iou: float = 0.3
    num_train: int = 8000
    num_test: int = 2000
    seed: int = 0

    def validate(self) -> None:
        if self.canvas_size < 28:
            raise ValueError(f'canvas_size must be >= 28, got {self.canvas_size}')
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f'need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}'
            )
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(f'need 0 < min_scale <= max_scale, got {self.min_scale}, {self.max_scale}')
        if self.num_train < 1 or self.num_test < 1:
            raise ValueError('num_train and num_test must be >= 1')


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """float32 [..., 4] tight boxes (x_min, y_min, x_max + 1, y_max + 1) of boolean masks [..., H, W]
    (zeros for empty masks)."""
    masks = np.asarray(masks, bool)
    rows, cols = masks.any(-1), masks.any(-2)
    h, w = masks.shape[-2:]
    y0, y1 = rows.argmax(-1), h - rows[..., ::-1].argmax(-1)
    x0, x1 = cols.argmax(-1), w - cols[..., ::-1].argmax(-1)
    boxes = np.stack([x0, y0, x1, y1], -1).astype(np.float32)
    return np.where(rows.any(-1)[..., None], boxes, 0.0).astype(np.float32)


def make_det_canvas(
    digits: np.ndarray, digit_labels: np.ndarray, rng: np.random.Generator, p: DetParams
) -> dict[str, np.ndarray]:
    """One ``mnist_det`` example (see the module docstring)."""
    image, inst, labels = synthetic.paste_digits(
        digits,
        digit_labels,
        rng,
        canvas_size=p.canvas_size,
        min_objects=p.min_objects,
        max_objects=p.max_objects,
        min_scale=p.min_scale,
        max_scale=p.max_scale,
        max_iou=p.max_iou,
    )
    s, m = p.canvas_size, p.max_objects
    masks = inst[None] == np.arange(1, len(labels) + 1)[:, None, None]
    keep = masks.any((1, 2))
    n = int(keep.sum())
    out_masks = np.zeros((m, s, s), np.uint8)
    out_masks[:n] = masks[keep]
    out_labels = np.zeros((m,), np.int32)
    out_labels[:n] = labels[keep] + 1
    return {
        'image': np.round(image).astype(np.uint8)[..., None],
        'boxes': masks_to_boxes(out_masks),
        'labels': out_labels,
        'num_objects': np.int32(n),
        'masks': out_masks,
    }


class MnistDet(synthetic.MnistSeg, skip_registration=True):
    """MNIST-10k digits on canvases with boxes, labels and instance masks (detection)."""

    name = 'mnist_det'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}
    CLASSES = CLASSES

    def __init__(self, *, path: str, params: DetParams = DetParams(), **kwargs):
        super().__init__(path=path, params=params, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        s, m = self.params.canvas_size, self.params.max_objects
        t = tfds.features.Tensor
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    'image': t(shape=(s, s, 1), dtype=np.uint8, encoding='bytes'),
                    'boxes': t(shape=(m, 4), dtype=np.float32),
                    'labels': t(shape=(m,), dtype=np.int32),
                    'num_objects': t(shape=(), dtype=np.int32),
                    'masks': t(shape=(m, s, s), dtype=np.uint8, encoding='zlib'),
                }
            ),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(
                class_names=list(self.CLASSES),
                params=dataclasses.asdict(self.params),
                source=self.builder_config.source,
            ),
        )

    def example(self, split: str, index: int) -> dict[str, np.ndarray]:
        images, labels = self.digit_split(split)
        return make_det_canvas(
            images, labels, synthetic.example_rng(self.params.seed, split, index), self.params
        )


def _make_mnist_det(path: str, data_dir: str, params: DetParams | None = None, config=None) -> MnistDet:
    del config
    return MnistDet(path=path, params=params or DetParams(), data_dir=data_dir)


registry.register(
    'mnist_det',
    _make_mnist_det,
    kind='detection',
    uses_path=True,
    default_path=roots.MNIST10K_FOLDER,
    description='MNIST digits on canvases: boxes, labels and instance masks',
)
