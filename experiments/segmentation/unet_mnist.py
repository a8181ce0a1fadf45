"""U-Net (Ronneberger et al. 2015) on ``mnist_seg``, and the depth ablation.

Commands:
  python launch.py --config=experiments/segmentation/unet_mnist.py:quick   # a few minutes on 2 CPU cores
  python launch.py --config=experiments/segmentation/unet_mnist.py         # depth 4, width 32, 30 epochs
  python launch.py --config=experiments/segmentation/unet_mnist.py:quick --sweep --table   # depth 2 / 3 / 4

The dataset (see ``common.py``) is generated once into the TFDS data dir from the folder's own
train/test digits. Same padding (the valid-padding original is ``model.name=unet_valid``); dropout
0.5 at the bottom in the full config. Measured on 2 shared CPU cores: ``:quick`` test mIoU 19.26%
(pixel acc 95.11%, 6:26); ``:quick,epochs=10`` 57.30% (pixel acc 97.91%, 12:24). Args: ``quick``
(depth 3, width 16, 2,000 canvases, 4 epochs of batch 16, CE + 0.5 Dice), ``epochs``, ``width``,
``depth``, ``dice`` (Dice loss weight added to CE; default 0.5 quick, 0 full), ``valid`` (the paper's
valid-padding U-Net, input mirror-padded by the overlap-tile strategy), ``train``, ``path``.
Sweep: depth 2, 3, 4 (pooling levels; receptive field and parameters grow with depth).
"""

from experiments.segmentation.common import COMMON_ARGS, mnist_seg_config
from research.config import parse_arg
from research.experiments.sweep import product

ARGS = {**COMMON_ARGS, 'width': 0, 'depth': 0, 'dice': -1.0, 'valid': False}


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    quick = args['quick']
    c = mnist_seg_config(args, quick_epochs=4, lr=2e-3 if quick else 1e-3, balance=False)
    c.seg.dice_weight = args['dice'] if args['dice'] >= 0 else (0.5 if quick else 0.0)
    c.model.name = 'unet'
    if args['valid']:  # the paper's unpadded convs, with its overlap-tile mirroring (Fig. 2)
        c.model.name = 'unet_valid'
        c.model.overlap_tile = True
    c.model.depth = args['depth'] or (3 if quick else 4)
    c.model.base_features = args['width'] or (16 if quick else 32)
    c.model.dropout_rate = 0.0 if quick else 0.5
    return c


def get_sweep(arg=None):
    return product({'model.depth': [2, 3, 4]})


def get_table(arg=None):
    return dict(
        name='unet_depth',
        title='U-Net on mnist_seg: test mIoU (%) vs depth (pooling levels)',
        rows='model.depth',
        row_labels={d: f'depth {d}' for d in (2, 3, 4)},
        metric='test_miou',
        fmt='.2f',
    )
