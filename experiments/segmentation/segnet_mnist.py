"""SegNet (Badrinarayanan et al. 2017) and DeconvNet (Noh et al. 2015) on ``mnist_seg``.

Commands:
  python launch.py --config=experiments/segmentation/segnet_mnist.py:quick             # SegNet, CPU
  python launch.py --config=experiments/segmentation/segnet_mnist.py:quick,deconvnet   # DeconvNet, CPU
  python launch.py --config=experiments/segmentation/segnet_mnist.py                   # full width (GPU)

Both decode with max-unpooling by the encoder's pooling indices (``research.layers.max_unpool``).
SegNet: the VGG-16 encoder (13 convs with BN) mirrored by a decoder of convs, no fc layers.
DeconvNet: VGG-16 + fc6/fc7 as convolutions (``fc_kernel`` = input / 32, 7 at 224 px) mirrored by
transposed convolutions and unpooling. ``quick``: widths / 8 (``base_features`` 8), fc 128, 2,000
canvases, 6 epochs, Adam + cosine. Args: ``quick``, ``deconvnet``, ``width``, ``epochs``, ``train``, ``path``.
"""

from experiments.segmentation.common import COMMON_ARGS, mnist_seg_config
from research.config import parse_arg

ARGS = {**COMMON_ARGS, 'deconvnet': False, 'width': 0}


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    quick = args['quick']
    c = mnist_seg_config(args, quick_epochs=6, lr=2e-3 if quick else 1e-3)
    c.model.name = 'deconvnet' if args['deconvnet'] else 'segnet'
    c.model.base_features = args['width'] or (8 if quick else 64)
    if args['deconvnet']:
        c.model.fc_features = 128 if quick else 4096
        c.model.fc_kernel = c.seg.canvas_size // 32
    return c
