"""The recipe the ``mnist_det`` experiment configs share (data, schedule, evaluation, logging cadence).

``mnist_det_config(args, ...)`` returns a base config with ``task='detection'`` on the MNIST-10k
detection canvases (128x128, 2-6 digits of 22-56 px, 10 classes + background; generated once into the
TFDS data dir), horizontal flips off (digits are not mirror-symmetric), Adam with a cosine schedule and
a short warm-up, an evaluation (VOC mAP@0.5, COCO AP) and a checkpoint each ``eval_epochs`` epochs, and
``viz/step_NNNNNN.png`` pictures (ground truth | predictions). Each detector's config sets the model.

CPU scale (``quick``): 2,000 train / 500 test canvases, batch 16; full: 8,000 / 2,000, batch 32.
"""

from __future__ import annotations

from experiments.paths import MNIST10K_FOLDER
from research.config import base_config

#: Arguments every detection config accepts (merged with its own).
COMMON_ARGS = {'quick': False, 'epochs': 0, 'train': 0, 'test': 0, 'path': MNIST10K_FOLDER}


def mnist_det_config(
    args: dict, *, quick_epochs: int, full_epochs: int = 24, lr: float = 1e-3, eval_epochs: int = 0
):
    """Base config; ``args`` holds :data:`COMMON_ARGS` (``train`` / ``test``: canvases, 0 = default)."""
    quick = args['quick']
    c = base_config()
    c.task = 'detection'
    c.data.name = 'mnist_det'
    c.data.path = args['path']
    c.data.augment.flip = False
    c.det.num_train = args['train'] or (2000 if quick else 8000)
    c.det.num_test = args['test'] or (500 if quick else 2000)
    c.optimizer.name = 'adam'
    c.optimizer.lr = lr
    c.optimizer.grad_clip_norm = 10.0
    c.schedule.name = 'cosine'
    c.schedule.warmup = '100 steps'
    epochs = args['epochs'] or (quick_epochs if quick else full_epochs)
    c.train.duration = f'{epochs} epochs'
    c.train.batch_size = 16 if quick else 32
    c.train.eval_batch_size = 50
    c.train.log_every_steps = 20
    every = eval_epochs or max(1, epochs // 4)
    c.train.eval_every = f'{every} epochs'
    c.train.checkpoint_every = '1 epochs'
    return c
