"""FCN-32s/16s/8s (Long et al. 2015) on ``mnist_seg``, and the 32s vs 16s vs 8s comparison (Table 2's axis).

Commands:
  python launch.py --config=experiments/segmentation/fcn_mnist.py:quick            # FCN-8s, narrow VGG, CPU
  python launch.py --config=experiments/segmentation/fcn_mnist.py:stride=32,quick  # FCN-32s
  python launch.py --config=experiments/segmentation/fcn_mnist.py                  # full-width VGG-16 (GPU)
  python launch.py --config=experiments/segmentation/fcn_mnist.py:quick --sweep --table   # 32s / 16s / 8s

The VGG-16 trunk pads conv1_1 by 100 (the paper's Caffe layout), so a 64x64 canvas runs at 262x262
in the first block: slow on CPU even when narrow. ``quick``: ``base_features`` 8 (VGG widths / 8),
``fc_features`` 128, no dropout, 1,000 canvases, 4 epochs of batch 16 (~13 img/s on 2 cores).
Learned upsampling starts bilinear and the skip scores start at zero (Sec. 3.3, 4.2), so each net
starts as its coarser parent; Adam instead of the paper's fixed-lr SGD with momentum 0.99, and all
three trained from scratch (the paper fine-tunes 16s from 32s and 8s from 16s). The paper's VOC 2011
mean IU is shown beside ours for the trend. Args: ``quick``, ``stride`` (8/16/32), ``width``,
``epochs``, ``train``, ``path``.
"""

from experiments.segmentation.common import COMMON_ARGS, mnist_seg_config
from research.config import parse_arg
from research.experiments import paper
from research.experiments.sweep import product

ARGS = {**COMMON_ARGS, 'stride': 8, 'width': 0}


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    quick = args['quick']
    if quick and not args['train']:
        args['train'] = 1000
    c = mnist_seg_config(args, quick_epochs=4, lr=1e-3 if quick else 1e-4)
    c.model.name = f'fcn{args["stride"]}s'
    c.model.base_features = args['width'] or (8 if quick else 64)
    c.model.fc_features = 128 if quick else 4096
    c.model.dropout_rate = 0.0 if quick else 0.5
    return c


def get_sweep(arg=None):
    return product({'model.name': ['fcn32s', 'fcn16s', 'fcn8s']})


def get_table(arg=None):
    names = {'fcn32s': 32, 'fcn16s': 16, 'fcn8s': 8}
    return dict(
        name='fcn_strides',
        title='FCN on mnist_seg: test mIoU (%) of FCN-32s / 16s / 8s (paper: VOC11 val mean IU, Table 2)',
        rows='model.name',
        row_values=list(names),
        row_labels={n: f'FCN-{s}s' for n, s in names.items()},
        paper={n: paper.FCN_VOC11[s] for n, s in names.items()},
        paper_label='paper (VOC11)',
        metric='test_miou',
        fmt='.2f',
    )
