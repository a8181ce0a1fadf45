"""Depth vs width (Zagoruyko & Komodakis 2016, "Wide Residual Networks", Table 4).

Model: ``wrn`` (research.models.wide_resnet): WRN-d-k of pre-activation basic blocks, widths
16, 16k, 32k, 64k, bias-free 1x1 projections where the shape changes (parameter counts equal
the paper's, see ``tables/wrn_params``). The earlier stand-in (``resnet_cifar`` with a width
knob) is gone.

Nets: WRN-16-k for k = 1, 2, 4 and deeper-thinner counterparts WRN-22-2, WRN-40-1 (~ the
parameters of 16-2) and WRN-40-2 (~ 16-4); x ``seeds``. No dropout (Table 4's main rows).
Recipe (paper, ``experiments/classification/wrn_cifar.py``): SGD Nesterov 0.9, lr 0.1 x0.2 at
epochs 60/120/160, 200 epochs, batch 128, weight decay 5e-4, pad-4 crop + flip.

Arguments: ``quick`` (``epochs`` epochs, default 3, on the first ``train_images`` training
images, default 10000, schedule scaled), ``epochs=E``, ``train_images=N`` (0 = all 50k),
``test_images=N`` (evaluate on the first N test images; 0 = all 10k), ``seeds=S`` (default 2),
``path=<CIFAR-10 folder>``. ``--sweep_only='model.depth=16,model.widen_factor=1;...'`` runs a subset.

Reduced scale, 2 CPU cores: MACs grow as blocks x width^2; estimated from ResNet-20's
~115 img/s, one pass over 10k images costs ~1 min (16-1), 4 (16-2), 15 (16-4), 6 (22-2),
3 (40-1) and 12 min (40-2), plus ~1/3 of that for the per-epoch evaluation on the 10k test
images: about 2.8 hours per seed with the quick defaults, ~5.5 h in all (``seeds=1`` halves it)::

  python launch.py --config=experiments/ablations/wrn_depth_width.py:quick --dry_run
  python launch.py --config=experiments/ablations/wrn_depth_width.py:quick --sweep --table

Full scale (200 epochs on all of CIFAR-10; the widest runs are the GPU-hungry ones)::

  python launch.py --config=experiments/ablations/wrn_depth_width.py --sweep --sweep_parallel=4 --table

Tables: ``wrn_depth_width`` (test error, rows WRN depth, columns k; paper: 40-1 6.85, 40-2
5.33) and ``wrn_params`` (our parameter counts beside the hand-computed WRN counts).
"""

from experiments.classification import wrn_cifar
from experiments.classification.common import first_images
from experiments.paths import CIFAR10_FOLDER
from research.config import parse_arg
from research.experiments import paper
from research.experiments.sweep import chain, product, zip_

ARGS = {
    'quick': False,
    'epochs': 3,
    'train_images': 10000,
    'test_images': 0,
    'seeds': 2,
    'path': CIFAR10_FOLDER,
}

# WRN (depth, k)
NETS = [(16, 1), (16, 2), (16, 4), (22, 2), (40, 1), (40, 2)]


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    depth, k = NETS[0]
    quick = f',quick,epochs={args["epochs"]}' if args['quick'] else ''
    c = wrn_cifar.get_config(f'folder,path={args["path"]},depth={depth},k={k}{quick}')
    return first_images(c, args['train_images'] if args['quick'] else 0, args['test_images'])


def get_sweep(arg=None):
    args = parse_arg(arg, ARGS)
    wide = product({'model.depth': [16], 'model.widen_factor': [1, 2, 4]})
    deep = zip_({'model.depth': [d for d, _ in NETS[3:]], 'model.widen_factor': [k for _, k in NETS[3:]]})
    return product(chain(wide, deep), seed=range(args['seeds']))


def get_table(arg=None):
    depths = sorted({d for d, _ in NETS})
    ks = sorted({k for _, k in NETS})
    common = dict(
        rows='model.depth',
        cols='model.widen_factor',
        row_values=depths,
        col_values=ks,
        row_labels={d: f'WRN-{d}' for d in depths},
        col_labels={k: f'k={k}' for k in ks},
    )
    return [
        dict(
            name='wrn_depth_width',
            title='CIFAR-10 test error (%), WRN depth vs width (Zagoruyko & Komodakis, Table 4)',
            metric='test_error',
            paper={(d, k): v['cifar10'] for (d, k, *rest), v in paper.WRN_TABLE4.items() if not rest},
            **common,
        ),
        dict(
            name='wrn_params',
            title='Parameters: ours vs WRN (hand count)',
            metric='num_params',
            fmt=',.0f',
            paper_label='WRN',
            paper=dict(paper.WRN_PARAMS),
            plot=False,
            **common,
        ),
    ]
