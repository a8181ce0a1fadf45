"""PSPNet (Zhao et al. 2017) on ``mnist_seg``, and its pyramid-bins ablation (Table 1's axis).

Commands:
  python launch.py --config=experiments/segmentation/pspnet_mnist.py:quick      # CPU: ResNet-18/16, OS 8
  python launch.py --config=experiments/segmentation/pspnet_mnist.py            # GPU: ResNet-50, aux 0.4
  python launch.py --config=experiments/segmentation/pspnet_mnist.py:quick --sweep --table

Full: dilated ResNet-50 (output stride 8), bins (1, 2, 3, 6), head 512, deep supervision on layer3
(aux loss weight 0.4, Sec. 3.3), SGD momentum 0.01, linear decay (the paper's poly). ``quick``: a
ResNet-18 backbone with widths 16-128 (an 8x8 map at stride 8), head 64, no aux, Adam + cosine,
2,000 canvases, 8 epochs. Sweep: bins () (the dilated-FCN baseline), (1,) (global pooling only),
(1, 2, 3, 6) with average pooling and (1, 2, 3, 6) with max pooling; the paper's ADE20K numbers for the
baseline and B1236+AVE+DR are shown for the trend. Args: ``quick``, ``bins`` ('+'-separated, ``none``
for the baseline), ``pooling``, ``epochs``, ``train``, ``path``.
"""

from experiments.segmentation.common import COMMON_ARGS, mnist_seg_config, tuple_arg
from research.config import parse_arg
from research.experiments import paper
from research.experiments.sweep import chain, product

ARGS = {**COMMON_ARGS, 'bins': '1+2+3+6', 'pooling': 'avg'}


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    c = mnist_seg_config(args, quick_epochs=10, lr=2e-3)
    c.model.bins = () if args['bins'] == 'none' else tuple_arg(args['bins'])
    c.model.pooling = args['pooling']
    if args['quick']:
        c.model.name = 'pspnet_resnet18'
        c.model.width = 16
        c.model.stem_width = 16
        c.model.head_features = 64
        c.model.aux = False
    else:
        c.model.name = 'pspnet_resnet50'
        c.seg.aux_weight = 0.4
        c.optimizer.name = 'momentum'
        c.optimizer.lr = 0.01
        c.optimizer.weight_decay = 1e-4
        c.schedule.name = 'linear'
        c.train.batch_size = 16
    return c


def get_sweep(arg=None):
    return chain(
        product({'model.bins': [(), (1,), (1, 2, 3, 6)], 'model.pooling': ['avg']}),
        product({'model.bins': [(1, 2, 3, 6)], 'model.pooling': ['max']}),
    )


def get_table(arg=None):
    return dict(
        name='pspnet_bins',
        title='PSPNet on mnist_seg: test mIoU (%) vs pyramid bins (paper: ADE20K val, Table 1)',
        rows='model.bins',
        cols='model.pooling',
        col_values=['avg', 'max'],
        row_labels={(): 'none (dilated FCN)', (1,): '1', (1, 2, 3, 6): '1, 2, 3, 6'},
        paper={(b, 'avg'): v for b, v in paper.PSPNET_BINS.items()},
        paper_label='paper (ADE20K)',
        metric='test_miou',
        fmt='.2f',
    )
