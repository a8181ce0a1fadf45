"""Degradation: plain-20 vs plain-56 vs ResNet-20 vs ResNet-56 on CIFAR-10 (He et al. 2015, Fig. 6, Table 6).

The paper's point: without shortcuts the deeper plain net has *higher* training and test
error than the shallower one; with shortcuts depth helps (ResNet-20 8.75%, ResNet-56 6.97%
test error, Table 6; plain nets only in Fig. 6, no numbers). Recipe and model: those of
``experiments/classification/resnet_cifar.py`` (option-A shortcuts, SGD 0.1, step schedule),
on the offline CIFAR-10 JPEG folder (``$RESEARCH_DATA_DIR/cifar10-jpg.tgz``; expect errors a little above the
paper's). Sweep: ``model.plain`` x ``model.depth`` x ``seed`` (``resnet_cifar`` with
``plain=True`` is the paper's plain net).

Arguments: ``quick`` (reduced budget: ``epochs`` epochs, default 3, step schedule scaled),
``epochs=E``, ``seeds=S`` (default 2), ``depths=20+56`` (``+``-separated), ``path=<folder>``,
``train_images=N`` / ``test_images=N`` (the first N images of each split; 0 = all).

Reduced scale, 2 CPU cores (ResNet-20 ~115 img/s measured, 56-layer nets ~3.1x the MACs):
~7 min/epoch for the 20-layer nets, ~22 min/epoch for the 56-layer ones, plus ~1/3 of that for
the per-epoch evaluation on the 10k test images: with the defaults (3 epochs, 2 seeds, 8 runs)
about 8 hours (``seeds=1`` halves it, ``epochs=1`` thirds it)::

  python launch.py --config=experiments/ablations/resnet_degradation.py:quick --dry_run
  python launch.py --config=experiments/ablations/resnet_degradation.py:quick --sweep --table
  python launch.py --config=experiments/ablations/resnet_degradation.py:quick --table   # tables only

Full scale (64k iterations per run, as the paper), on GPU(s); ``--sweep_parallel=N`` runs N at
once, each on its own GPUs (``CUDA_VISIBLE_DEVICES`` slices)::

  python launch.py --config=experiments/ablations/resnet_degradation.py:seeds=3 --sweep --table
  python launch.py --config=experiments/ablations/resnet_degradation.py:seeds=3 --sweep --sweep_parallel=4 --table

Outputs in ``runs/resnet_degradation[_<arg>]/``: one directory per run, ``ledger.jsonl``,
``tables/resnet_degradation.{md,csv,png}`` (test error, paper beside), ``..._curves.png``,
and ``tables/resnet_degradation_train.*`` (final training error: the degradation itself).
"""

from experiments.classification import resnet_cifar
from experiments.classification.common import first_images
from experiments.paths import CIFAR10_FOLDER
from research.config import parse_arg, with_model
from research.experiments import paper
from research.experiments.sweep import product

ARGS = {
    'quick': False,
    'epochs': 3,
    'seeds': 2,
    'depths': '20+56',
    'path': CIFAR10_FOLDER,
    'train_images': 0,
    'test_images': 0,
}


def _depths(args):
    return [int(d) for d in args['depths'].split('+')]


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    base_arg = f'folder,path={args["path"]}' + (f',quick,epochs={args["epochs"]}' if args['quick'] else '')
    c = resnet_cifar.get_config(base_arg)
    # One model name for all four nets, so that `plain` and `depth` are sweepable keys.
    with_model(c, 'resnet_cifar', depth=_depths(args)[0], shortcut='A', plain=False)
    return first_images(c, args['train_images'], args['test_images'])


def get_sweep(arg=None):
    args = parse_arg(arg, ARGS)
    return product({'model.plain': [True, False], 'model.depth': _depths(args)}, seed=range(args['seeds']))


def get_table(arg=None):
    args = parse_arg(arg, ARGS)
    common = dict(
        rows='model.depth',
        cols='model.plain',
        col_values=[True, False],
        col_labels={True: 'plain', False: 'ResNet'},
        row_labels={d: f'{d} layers' for d in _depths(args)},
    )
    return [
        dict(
            name='resnet_degradation',
            title='CIFAR-10 test error (%): plain vs residual (He et al. 2015, Table 6 / Fig. 6)',
            metric='test_error',
            paper={(d, False): e for d, e in paper.RESNET_CIFAR10_TABLE6.items()},
            **common,
        ),
        dict(
            name='resnet_degradation_train',
            title='CIFAR-10 final training error (%), last logged window (Fig. 6: plain-56 > plain-20)',
            metric='train_error',
            **common,
        ),
    ]
