"""SSD (Liu et al. 2016, "SSD: Single Shot MultiBox Detector") on ``mnist_det``.

Commands:
  python launch.py --config=experiments/detection/ssd_mnist.py:quick   # CPU: ssd_mnist, 128 px, 4 maps
  python launch.py --config=experiments/detection/ssd_mnist.py         # GPU: ssd300_vgg16, 300 px, 6 maps

``quick``: ``ssd_mnist`` (a VGG-like trunk 16-128 wide, feature maps 16/8/4/2, default-box scales
0.15-0.6, aspect ratios {1, 2, 1/2} + the extra scale), matching at IoU 0.5 with each object's best
default box forced, smooth L1 + softmax cross-entropy with hard negative mining 3:1 (Sec. 2.2), Adam +
cosine, 2,000 canvases, 8 epochs. Full: ``ssd300_vgg16`` (torchvision's layout, 35.6M params at 91
classes) on 300 x 300 canvases with digits scaled 1.5-4.5x. Args: ``quick``, ``epochs``, ``train``,
``test``, ``path``.
"""

from experiments.detection.common import COMMON_ARGS, mnist_det_config
from research.config import parse_arg

ARGS = dict(COMMON_ARGS)


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    c = mnist_det_config(args, quick_epochs=8, lr=1e-3)
    if args['quick']:
        c.model.name = 'ssd_mnist'
    else:
        c.model.name = 'ssd300_vgg16'
        c.det.canvas_size = 300
        c.det.min_scale, c.det.max_scale = 1.5, 4.5
    return c
