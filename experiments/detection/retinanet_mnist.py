"""RetinaNet (Lin et al. 2017, "Focal Loss for Dense Object Detection") on ``mnist_det``, and its
focal-loss (gamma, alpha) and anchor ablations (Table 1a-c's axes).

Commands:
  python launch.py --config=experiments/detection/retinanet_mnist.py:quick          # CPU: ResNet-18/16 + FPN P3-P5
  python launch.py --config=experiments/detection/retinanet_mnist.py                # GPU: ResNet-50-FPN, P3-P7
  python launch.py --config=experiments/detection/retinanet_mnist.py:quick --sweep --table                 # gamma/alpha
  python launch.py --config=experiments/detection/retinanet_mnist.py:quick,sweep=anchors --sweep --table   # scales x ratios

``quick``: ``retinanet_resnet18_fpn`` (basic blocks, widths 16-128, FPN/head width 64, 2 head convs,
P3-P5 with anchors 16-64 px x 2^(k/3), trained from scratch with BatchNorm), Adam + cosine, 2,000
canvases, 8 epochs of batch 16. Full: ``retinanet_resnet50_fpn`` (torchvision's layout; P3-P7, anchors
32-512) with batch-statistics BatchNorm (no ImageNet weights offline), 8,000 canvases.

Sweeps (``sweep=``): ``focal`` (default) the five (gamma, alpha) pairs of Table 1b (COCO AP beside
ours, for the trend; gamma = 0 is alpha-balanced cross-entropy); ``anchors``: scales per octave 1 / 2 / 3
x aspect ratios {1} / {0.5, 1, 2} (Table 1c's axis). Args: ``quick``, ``gamma``, ``alpha``,
``scales`` (per octave), ``ratios`` ('+'-separated, e.g. ``0.5+1+2``), ``sweep``, ``epochs``,
``train``, ``test``, ``path``.
"""

from experiments.detection.common import COMMON_ARGS, mnist_det_config
from research.config import parse_arg
from research.experiments import paper

ARGS = {**COMMON_ARGS, 'gamma': 2.0, 'alpha': 0.25, 'scales': 3, 'ratios': '0.5+1+2', 'sweep': 'focal'}
QUICK_BASE_SIZES = (16, 32, 64)  # P3-P5 on 128x128 canvases (digits ~22-56 px)
FULL_BASE_SIZES = (32, 64, 128, 256, 512)  # torchvision / the paper, P3-P7


def anchor_sizes(base_sizes, scales: int) -> tuple[tuple[int, ...], ...]:
    """Per level: ``base * 2**(k / scales)`` for k < scales (the paper's octave scales; torchvision's
    default is 3 per octave with int() truncation)."""
    return tuple(tuple(int(b * 2 ** (k / scales)) for k in range(scales)) for b in base_sizes)


def _ratios(text) -> tuple[float, ...]:
    return tuple(float(t) for t in str(text).split('+') if t)


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    quick = args['quick']
    c = mnist_det_config(args, quick_epochs=8, lr=1e-3)
    if quick:
        c.model.name = 'retinanet_resnet18_fpn'
        base = QUICK_BASE_SIZES
    else:
        c.model.name = 'retinanet_resnet50_fpn'
        c.model.backbone_norm = 'batch'
        base = FULL_BASE_SIZES
    c.model.focal_gamma = float(args['gamma'])
    c.model.focal_alpha = float(args['alpha'])
    c.model.anchor_sizes = anchor_sizes(base, int(args['scales']))
    c.model.aspect_ratios = _ratios(args['ratios'])
    return c


def get_sweep(arg=None):
    args = parse_arg(arg, ARGS)
    if args['sweep'] == 'focal':
        pairs = list(paper.RETINANET_GAMMA_ALPHA)
        return [{'model.focal_gamma': g, 'model.focal_alpha': a} for g, a in pairs]
    if args['sweep'] == 'anchors':
        base = QUICK_BASE_SIZES if args['quick'] else FULL_BASE_SIZES
        return [
            {'model.anchor_sizes': anchor_sizes(base, s), 'model.aspect_ratios': r}
            for r in ((1.0,), (0.5, 1.0, 2.0))
            for s in (1, 2, 3)
        ]
    raise ValueError(f"sweep must be 'focal' or 'anchors'; got {args['sweep']!r}")


def get_table(arg=None):
    args = parse_arg(arg, ARGS)
    if args['sweep'] == 'focal':
        rows = ['model.focal_gamma', 'model.focal_alpha']
        return [
            dict(
                name='retinanet_focal',
                title='RetinaNet on mnist_det: test COCO AP@[.5:.95] (%) vs focal loss (gamma, alpha) (paper: COCO, Table 1b)',
                rows=rows,
                metric='test_coco_ap',
                paper=paper.RETINANET_GAMMA_ALPHA,
                paper_label='paper (COCO AP)',
            ),
            dict(
                name='retinanet_focal_map50',
                title='RetinaNet on mnist_det: test VOC mAP@0.5 (%) vs focal loss (gamma, alpha)',
                rows=rows,
                metric='test_map50',
                plot=False,
            ),
        ]
    return dict(
        name='retinanet_anchors',
        title='RetinaNet on mnist_det: test mAP@0.5 (%) vs anchor scales per octave x aspect ratios',
        rows='model.anchor_sizes',
        cols='model.aspect_ratios',
        row_labels={anchor_sizes(QUICK_BASE_SIZES, s): f'{s} scale(s)' for s in (1, 2, 3)}
        | {anchor_sizes(FULL_BASE_SIZES, s): f'{s} scale(s)' for s in (1, 2, 3)},
        col_labels={(1.0,): 'ratio 1', (0.5, 1.0, 2.0): 'ratios 1/2, 1, 2'},
        metric='test_map50',
    )
