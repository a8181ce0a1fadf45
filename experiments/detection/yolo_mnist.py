"""YOLO v1 (Redmon et al. 2016, "You Only Look Once") on ``mnist_det``.

Commands:
  python launch.py --config=experiments/detection/yolo_mnist.py:quick   # CPU: yolov1_mnist, 128 px, S = 8
  python launch.py --config=experiments/detection/yolo_mnist.py         # GPU: the paper's net, 448 px, S = 7

``quick``: ``yolov1_mnist_conv`` (a small conv stack with BatchNorm, 8 x 8 grid, B = 2 boxes per cell), the
paper's sum-squared loss (Eq. 3: lambda_coord 5, lambda_noobj 0.5, sqrt w / h), Adam + cosine, 2,000
canvases, 8 epochs, with ``head='conv'`` (a 3x3 + 1x1 conv head shared by all cells, the direction of
YOLO v2) because the paper's fully connected head, without its ImageNet pre-training, does not learn the
classes in a CPU budget (README: 2-4% mAP@0.5 after 4-8 epochs); ``--config.model.name=yolov1_mnist``
runs the paper's head. Full: ``yolov1`` (24 convs + 2 fc, 7 x 7 x 30 head with our 10 classes) on 448 x 448
canvases with digits scaled 2.5-7x (70-196 px), dropout 0.5 as the paper.
Args: ``quick``, ``epochs``, ``train``, ``test``, ``path``.
"""

from experiments.detection.common import COMMON_ARGS, mnist_det_config
from research.config import parse_arg

ARGS = dict(COMMON_ARGS)


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    c = mnist_det_config(args, quick_epochs=8, lr=1e-3)
    if args['quick']:
        c.model.name = 'yolov1_mnist_conv'
    else:
        c.model.name = 'yolov1'
        c.det.canvas_size = 448
        c.det.min_scale, c.det.max_scale = 2.5, 7.0
        c.train.batch_size = 64
    return c
