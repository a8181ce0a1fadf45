"""Faster R-CNN (Ren et al. 2015) and Mask R-CNN (He et al. 2017) on ``mnist_det``.

Commands:
  python launch.py --config=experiments/detection/faster_rcnn_mnist.py:quick          # CPU: ResNet-18/16 + FPN
  python launch.py --config=experiments/detection/faster_rcnn_mnist.py:quick,mask     # Mask R-CNN (instance masks)
  python launch.py --config=experiments/detection/faster_rcnn_mnist.py:quick,fpn=false  # single C4 map (the paper)
  python launch.py --config=experiments/detection/faster_rcnn_mnist.py                # GPU: ResNet-50-FPN

``quick``: ``fasterrcnn_resnet18_fpn`` (basic blocks, widths 16-128, FPN 64 wide, one anchor size per
level 16-128 x 3 ratios, RPN 256 anchors / image, RoI head 128 RoIs / image, 7x7 RoI align, 256-d
box head), trained from scratch with BatchNorm, Adam + cosine, 2,000 canvases, 8 epochs of batch 16;
``mask``: ``maskrcnn_resnet18_fpn`` adds the mask head (14x14 RoI align -> 28x28 masks, per-class
BCE). Full: torchvision's ResNet-50-FPN layout, batch-statistics BatchNorm (no ImageNet weights
offline). Args: ``quick``, ``mask``, ``fpn`` (true/false), ``epochs``, ``train``, ``test``, ``path``.
"""

from experiments.detection.common import COMMON_ARGS, mnist_det_config
from research.config import parse_arg

ARGS = {**COMMON_ARGS, 'mask': False, 'fpn': True}


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    c = mnist_det_config(args, quick_epochs=8, lr=1e-3)
    kind = 'maskrcnn' if args['mask'] else 'fasterrcnn'
    c.model.name = f'{kind}_resnet18_fpn' if args['quick'] else f'{kind}_resnet50_fpn'
    if not args['fpn']:
        c.model.fpn = False
        if args['quick']:
            c.model.anchor_sizes = ((16, 32, 64),)
    return c
