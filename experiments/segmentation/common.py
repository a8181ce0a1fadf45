"""The recipe the ``mnist_seg`` experiment configs share (data, loss, schedule, logging cadence).

``mnist_seg_config(...)`` returns a base config with ``task='segmentation'`` on the MNIST-10k canvases
(64x64, 11 classes: 0 = background, 1..10 = digits 0..9; generated once into the TFDS data dir), or
with the config argument ``data=shapes`` on ``shapes_seg`` (textured circles / squares / triangles, 4
classes, RGB), with
random crops (pad 4, padded label pixels ignored, no flip), Adam and a cosine schedule, an evaluation
and a checkpoint each epoch, and ``viz/step_NNNNNN.png`` pictures. Each model's config sets the model.

CPU scale (``quick``): 2,000 train / 500 test canvases, batch 16; full: 8,000 / 2,000, batch 32.
"""

from __future__ import annotations

from experiments.paths import MNIST10K_FOLDER
from research.config import base_config

#: Arguments every segmentation config accepts (merged with its own).
COMMON_ARGS = {'quick': False, 'epochs': 0, 'train': 0, 'data': 'mnist', 'path': MNIST10K_FOLDER}
DATASETS = {'mnist': 'mnist_seg', 'shapes': 'shapes_seg'}


def mnist_seg_config(
    args: dict, *, quick_epochs: int, full_epochs: int = 30, lr: float = 1e-3, balance: bool = True
):
    """Base config; ``args`` holds :data:`COMMON_ARGS` (``train``: number of train canvases, 0 = default).

    ``balance``: in ``quick`` runs, weight the cross-entropy by median frequency balancing (SegNet
    Sec. 3.1; ``seg.class_balance``): background is ~93% of the pixels, and without it the
    ResNet-backbone models sit at "all background" (mIoU ~8.6%) for most of a short CPU run.
    """
    quick = args['quick']
    c = base_config()
    c.task = 'segmentation'
    if args['data'] not in DATASETS:
        raise ValueError(f'data must be one of {sorted(DATASETS)}; got {args["data"]!r}')
    c.data.name = DATASETS[args['data']]
    if args['data'] == 'mnist':
        c.data.path = args['path']
    c.data.augment.crop_padding = 4
    c.seg.canvas_size = 64
    c.seg.num_train = args['train'] or (2000 if quick else 8000)
    c.seg.num_test = 500 if quick else 2000
    c.seg.class_balance = 'median_frequency' if (quick and balance) else 'none'
    c.optimizer.name = 'adam'
    c.optimizer.lr = lr
    c.schedule.name = 'cosine'
    c.train.duration = f'{args["epochs"] or (quick_epochs if quick else full_epochs)} epochs'
    c.train.batch_size = 16 if quick else 32
    c.train.eval_batch_size = 100
    c.train.log_every_steps = 20
    c.train.eval_every = '1 epochs'
    c.train.checkpoint_every = '1 epochs'
    return c


def tuple_arg(text: str) -> tuple[int, ...]:
    """``'6+12+18'`` -> (6, 12, 18); ``''`` -> ()."""
    return tuple(int(t) for t in text.split('+') if t)
