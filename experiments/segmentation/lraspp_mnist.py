"""LR-ASPP on a dilated MobileNetV3-Large (Howard et al. 2019, Sec. 6.1.1) on ``mnist_seg``.

Commands:
  python launch.py --config=experiments/segmentation/lraspp_mnist.py:quick   # width 0.5, CPU
  python launch.py --config=experiments/segmentation/lraspp_mnist.py         # width 1.0 (torchvision's)

The backbone's last stage trades stride for dilation (output stride 16: a 4x4 map on a 64x64 canvas);
the head gates 128 channels with a global-pool sigmoid and adds a classifier of the stride-8 features.
``quick``: ``width_mult`` 0.5, 2,000 canvases, 8 epochs, Adam + cosine. Args: ``quick``, ``width``
(multiplier), ``epochs``, ``train``, ``path``.
"""

from experiments.segmentation.common import COMMON_ARGS, mnist_seg_config
from research.config import parse_arg

ARGS = {**COMMON_ARGS, 'width': 0.0}


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    quick = args['quick']
    c = mnist_seg_config(args, quick_epochs=8, lr=2e-3 if quick else 1e-3)
    c.model.name = 'lraspp_mobilenet_v3_large'
    c.model.width_mult = args['width'] or (0.5 if quick else 1.0)
    return c
