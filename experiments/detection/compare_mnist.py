"""Detectors side by side on ``mnist_det``, the same data, schedule and evaluation: the R-CNN lineage
(R-CNN -> SPPNet -> Fast R-CNN -> Faster R-CNN) and one-stage vs two-stage (YOLO v1, SSD, RetinaNet,
Faster R-CNN), each as test mAP@0.5 and time per image.

Commands:
  python launch.py --config=experiments/detection/compare_mnist.py:quick --sweep --table                # lineage
  python launch.py --config=experiments/detection/compare_mnist.py:quick,sweep=stages --sweep --table   # 1 vs 2 stages

Every run: the model's CPU variant (``*_mnist`` / ``*_resnet18_fpn``, about 0.7-1.4M params), Adam
1e-3 + cosine, 2,000 canvases, 8 epochs of batch 16 (the settings of each model's own config). Time
per image (``total_ms``) = the jitted network at batch 1 (``latency_ms``, median over 20 test images)
+ the host's selective search for the proposal-based models (``proposal_ms``); both tables are
written (``*_map`` and ``*_time``). Args: ``quick``, ``sweep`` (lineage | stages), ``epochs``,
``train``, ``test``, ``path``.
"""

from experiments.detection.common import COMMON_ARGS, mnist_det_config
from research.config import parse_arg

ARGS = {**COMMON_ARGS, 'sweep': 'lineage'}
LINEAGE = ('rcnn_mnist', 'sppnet_mnist', 'fast_rcnn_mnist', 'fasterrcnn_resnet18_fpn')
STAGES = (
    'yolov1_mnist',
    'yolov1_mnist_conv',
    'ssd_mnist',
    'retinanet_resnet18_fpn',
    'fasterrcnn_resnet18_fpn',
)
LABELS = {
    'rcnn_mnist': 'R-CNN (2014)',
    'sppnet_mnist': 'SPPNet (2014)',
    'fast_rcnn_mnist': 'Fast R-CNN (2015)',
    'fasterrcnn_resnet18_fpn': 'Faster R-CNN + FPN (2 stages)',
    'yolov1_mnist': 'YOLO v1 (1 stage)',
    'yolov1_mnist_conv': 'YOLO v1, conv head (1 stage)',
    'ssd_mnist': 'SSD (1 stage)',
    'retinanet_resnet18_fpn': 'RetinaNet (1 stage)',
}


def _names(args):
    if args['sweep'] not in ('lineage', 'stages'):
        raise ValueError(f"sweep must be 'lineage' or 'stages'; got {args['sweep']!r}")
    return LINEAGE if args['sweep'] == 'lineage' else STAGES


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    c = mnist_det_config(args, quick_epochs=8, lr=1e-3)
    if not args['quick']:
        raise ValueError("compare_mnist compares the CPU variants: pass 'quick'")
    c.model.name = _names(args)[-1]
    return c


def get_sweep(arg=None):
    return [{'model.name': n} for n in _names(parse_arg(arg, ARGS))]


def get_table(arg=None):
    args = parse_arg(arg, ARGS)
    names = list(_names(args))
    what = 'R-CNN lineage' if args['sweep'] == 'lineage' else 'one-stage vs two-stage'
    common = dict(rows='model.name', row_values=names, row_labels=LABELS, plot=False)
    return [
        dict(
            name=f'det_{args["sweep"]}_map',
            title=f'{what} on mnist_det: test mAP@0.5 (%)',
            metric='test_map50',
            **common,
        ),
        dict(
            name=f'det_{args["sweep"]}_coco',
            title=f'{what} on mnist_det: test COCO AP@[.5:.95] (%)',
            metric='test_coco_ap',
            **common,
        ),
        dict(
            name=f'det_{args["sweep"]}_time',
            fmt='.1f',
            metric='total_ms',
            title=f'{what} on mnist_det: time per image (ms; network at batch 1 + host proposals)',
            **common,
        ),
    ]
