"""Yu & Koltun 2016, dilated front end + context module, on ``mnist_seg``; front end vs + context.

Commands:
  python launch.py --config=experiments/segmentation/context_mnist.py:quick                 # front end + context
  python launch.py --config=experiments/segmentation/context_mnist.py:quick --sweep --table # with vs without

The front end is VGG-16 without pool4/pool5, conv5 dilated 2, fc6 dilated 4 (output stride 8); the
basic context module (dilations 1, 1, 2, 4, 8, 16, 1, 1; identity init, so it starts as a pass-through)
refines its score maps. The paper trains the front end first, then the module on its outputs; here
both train jointly from scratch. ``quick``: VGG widths / 8, fc 128, 2,000 canvases, 6 epochs.
Args: ``quick``, ``context`` (default true), ``width``, ``epochs``, ``train``, ``path``.
"""

from experiments.segmentation.common import COMMON_ARGS, mnist_seg_config
from research.config import parse_arg
from research.experiments.sweep import product

ARGS = {**COMMON_ARGS, 'context': True, 'width': 0}


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    quick = args['quick']
    c = mnist_seg_config(args, quick_epochs=6, lr=1e-3 if quick else 1e-4)
    c.model.name = 'dilated_vgg16'
    c.model.context = args['context']
    c.model.base_features = args['width'] or (8 if quick else 64)
    c.model.fc_features = 128 if quick else 4096
    c.model.dropout_rate = 0.0 if quick else 0.5
    return c


def get_sweep(arg=None):
    return product({'model.context': [False, True]})


def get_table(arg=None):
    return dict(
        name='context_module',
        title='Dilated VGG front end on mnist_seg: test mIoU (%) without / with the basic context module',
        rows='model.context',
        row_labels={False: 'front end', True: 'front end + context'},
        metric='test_miou',
        fmt='.2f',
    )
