"""DeepLabv3 / v3+ (Chen et al. 2017, 2018) on ``mnist_seg``, and its output-stride and ASPP-rate ablations.

Commands:
  python launch.py --config=experiments/segmentation/deeplabv3_mnist.py:quick        # CPU: ResNet-18/16 backbone
  python launch.py --config=experiments/segmentation/deeplabv3_mnist.py              # GPU: ResNet-50, 30 epochs
  python launch.py --config=experiments/segmentation/deeplabv3_mnist.py:quick --sweep --table          # output stride 8/16/32
  python launch.py --config=experiments/segmentation/deeplabv3_mnist.py:quick,sweep=rates --sweep --table

Full: torchvision's layout (dilated ResNet-50, output stride 8, ASPP rates (12, 24, 36), aux FCN head
on layer3 with loss weight 0.4), SGD momentum 0.01 with linear decay. ``quick``: a ResNet-18 backbone
(basic blocks) with widths 16-128 (``width=16``), ASPP/head width 64, no aux head, Adam + cosine,
median-frequency class balancing, 2,000 canvases, 20 epochs. ASPP rates scale with the feature map: a 64x64 canvas at output stride 16
is a 4x4 map (VOC's 513 crops give 33x33), so the quick rates are (1, 2, 3) at stride 16, doubled at 8
((2, 4, 6); the paper doubles (6, 12, 18) to (12, 24, 36)) and (1, 1, 1) at 32.

Sweeps (``sweep=``): ``os`` (default) output stride 8 / 16 / 32 (Table 1's axis: stride traded for
dilation in layer3/4; paper numbers are VOC 2012 val mIoU with ResNet-50, shown for the trend only);
``rates`` ASPP rates at output stride 16 (4x4 maps): (1, 2, 3), (2, 4, 6) and the paper's (6, 12, 18)
-- rates past the map size leave only the centre tap of each 3x3 (the paper's Fig. 4 argument), so
(6, 12, 18) here is three 1x1 branches. Both sweeps share the OS 16 / (1, 2, 3) run when they use
the same ``--workdir``.
Args: ``quick``, ``plus`` (DeepLabv3+ decoder), ``os`` (output stride), ``rates`` ('+'-separated),
``sweep``, ``epochs``, ``train``, ``path``.
"""

from experiments.segmentation.common import COMMON_ARGS, mnist_seg_config, tuple_arg
from research.config import parse_arg
from research.experiments import paper
from research.experiments.sweep import product, zip_

ARGS = {**COMMON_ARGS, 'plus': False, 'os': 0, 'rates': '', 'sweep': 'os'}
#: ASPP rates per output stride for 64x64 canvases (quick).
QUICK_RATES = {8: (2, 4, 6), 16: (1, 2, 3), 32: (1, 1, 1)}


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    quick = args['quick']
    c = mnist_seg_config(args, quick_epochs=20, lr=2e-3)
    plus = args['plus']
    if quick:
        c.model.name = 'deeplabv3plus_resnet18' if plus else 'deeplabv3_resnet18'
        c.model.width = 16
        c.model.stem_width = 16
        c.model.head_features = 64
        if plus:
            c.model.low_level_features = 16
            c.model.decoder_features = 64
        else:
            c.model.aux = False
        c.model.output_stride = args['os'] or (16 if plus else 8)
        c.model.rates = tuple_arg(args['rates']) or QUICK_RATES[c.model.output_stride]
    else:
        c.model.name = 'deeplabv3plus_resnet50' if plus else 'deeplabv3_resnet50'
        c.model.output_stride = args['os'] or (16 if plus else 8)
        c.model.rates = tuple_arg(args['rates']) or None  # None: the paper's rates for the output stride
        c.seg.aux_weight = 0.4
        c.optimizer.name = 'momentum'
        c.optimizer.lr = 0.01
        c.optimizer.weight_decay = 1e-4
        c.schedule.name = 'linear'  # torchvision uses poly(0.9); linear decay to 0 is close
        c.train.batch_size = 16
    return c


def get_sweep(arg=None):
    args = parse_arg(arg, ARGS)
    if args['sweep'] == 'os':
        strides = [8, 16, 32]
        if args['quick']:
            return zip_({'model.output_stride': strides, 'model.rates': [QUICK_RATES[s] for s in strides]})
        return product({'model.output_stride': strides})
    if args['sweep'] == 'rates':
        rates = [(1, 2, 3), (2, 4, 6), (6, 12, 18)]
        return product({'model.output_stride': [16], 'model.rates': rates})
    raise ValueError(f"sweep must be 'os' or 'rates'; got {args['sweep']!r}")


def get_table(arg=None):
    args = parse_arg(arg, ARGS)
    common = dict(metric='test_miou', fmt='.2f')
    if args['sweep'] == 'os':
        return dict(
            name='deeplab_output_stride',
            title='DeepLabv3 on mnist_seg: test mIoU (%) vs output stride (paper: VOC12 val, Table 1)',
            rows='model.output_stride',
            row_labels={s: f'OS {s}' for s in (8, 16, 32)},
            paper=paper.DEEPLABV3_OUTPUT_STRIDE,
            paper_label='paper (VOC)',
            **common,
        )
    return dict(
        name='deeplab_aspp_rates',
        title='DeepLabv3 on mnist_seg, output stride 16 (4x4 maps): test mIoU (%) vs ASPP rates',
        rows='model.rates',
        **common,
    )
