"""The R-CNN lineage before Faster R-CNN on ``mnist_det``: R-CNN (Girshick et al. 2014), SPPNet (He et
al. 2014) and Fast R-CNN (Girshick 2015), on selective-search proposals (opencv-contrib, computed once
per split and cached next to the dataset; ``det.proposals=sliding_window`` needs no OpenCV).

Commands:
  python launch.py --config=experiments/detection/rcnn_mnist.py:quick                  # Fast R-CNN, CPU
  python launch.py --config=experiments/detection/rcnn_mnist.py:quick,model=rcnn       # R-CNN (warped crops)
  python launch.py --config=experiments/detection/rcnn_mnist.py:quick,model=sppnet     # SPPNet
  python launch.py --config=experiments/detection/rcnn_mnist.py:model=fast_rcnn        # VGG-16 (GPU)

``quick``: the ``*_mnist`` models (a small VGG-like trunk; R-CNN warps each proposal to 32x32 with 2 px
context, SPPNet pools a (1, 2, 4) pyramid per RoI, Fast R-CNN a 4x4 RoI max pool), up to 300
proposals per image, 64 sampled RoIs per image (25% positive at IoU 0.5), softmax classifier and
class-specific box regression trained jointly (the papers' SVMs and separate regressors are noted in
``research/models/rcnn.py``), Adam + cosine, 2,000 canvases, 8 epochs. Full: the VGG-16 variants
(``rcnn_vgg16``, ``sppnet_vgg16``, ``fast_rcnn_vgg16``). Args: ``quick``, ``model`` (rcnn | sppnet |
fast_rcnn), ``epochs``, ``train``, ``test``, ``path``.
"""

from experiments.detection.common import COMMON_ARGS, mnist_det_config
from research.config import parse_arg

ARGS = {**COMMON_ARGS, 'model': 'fast_rcnn'}
MODELS = ('rcnn', 'sppnet', 'fast_rcnn')


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    if args['model'] not in MODELS:
        raise ValueError(f'model must be one of {MODELS}; got {args["model"]!r}')
    c = mnist_det_config(args, quick_epochs=8, lr=1e-3)
    if args['quick']:
        c.model.name = f'{args["model"]}_mnist'
    else:
        c.model.name = f'{args["model"]}_vgg16'
        c.model.num_classes = 11
    return c
