"""Residual-unit orderings (a)-(e) of He et al. 2016, "Identity Mappings in Deep Residual
Networks", Fig. 4 / Table 2: CIFAR-10 test error of ResNet-110 (and 164).

Model: ``preact_resnet_cifar`` (research.models.preact_resnet) with its ``ordering`` field
'a'..'e' ((a) original, (b) BN after addition, (c) ReLU before addition, (d) ReLU-only
pre-activation, (e) full pre-activation); depth 110 uses basic units, 164 bottleneck units.
The orderings differ by a few hundred parameters at most (stem/final/projection BNs).

Paper (medians of 5 runs), ResNet-110: (a) 6.61, (b) 8.17, (c) 7.84, (d) 6.71, (e) 6.37;
ResNet-164: 6.61 -> 5.93, 6.50, 6.14, 5.91, 5.46. Recipe: that of resnet_cifar.py (SGD 0.1,
/10 at 32k and 48k, 64k iterations, batch 128, wd 1e-4) with the 400-step warm-up of depth 110.

Arguments: ``depth=110|164`` (the paper's) or a smaller ``6n+2`` of basic units for a reduced run
(``depth=20``: no warm-up; the paper column then shows ResNet-110's numbers), ``quick``
(``epochs`` epochs, default 2), ``epochs=E``, ``seeds=S`` (default 2; the paper takes medians of 5),
``train_images=N`` / ``test_images=N`` (the first N images of each split; 0 = all),
``path=<CIFAR-10 folder>``.

Reduced scale, 2 CPU cores: ResNet-110 is ~6.2x the MACs of ResNet-20 (~115 img/s), about
45 min per epoch plus ~15 min of evaluation: with the quick defaults (2 epochs, 5 orderings,
2 seeds = 10 runs) about 20 hours -- run one seed (``seeds=1``) or a few orderings
(``--sweep_only=model.ordering=e``) on CPU::

  python launch.py --config=experiments/ablations/preact_orderings.py:quick --dry_run
  python launch.py --config=experiments/ablations/preact_orderings.py:quick,seeds=1 --sweep --table

Reduced depth (the README's run: ResNet-20 units, 10k/2k images, 4 epochs, 2 seeds, ~40 min)::

  python launch.py --config=experiments/ablations/preact_orderings.py:depth=20,quick,epochs=4,seeds=2,train_images=10000,test_images=2000 --sweep --table --cpu_devices=-1

Full scale, GPU(s)::

  python launch.py --config=experiments/ablations/preact_orderings.py:seeds=5 --sweep --sweep_parallel=4 --table
  python launch.py --config=experiments/ablations/preact_orderings.py:depth=164,seeds=5 --sweep --table
"""

from experiments.classification import resnet_cifar
from experiments.classification.common import first_images
from experiments.paths import CIFAR10_FOLDER
from research.config import parse_arg, with_model
from research.experiments import paper
from research.experiments.sweep import product

ARGS = {
    'depth': 110,
    'quick': False,
    'epochs': 2,
    'seeds': 2,
    'path': CIFAR10_FOLDER,
    'train_images': 0,
    'test_images': 0,
}
PAPER_DEPTHS = (110, 164)
ORDERINGS = ('a', 'b', 'c', 'd', 'e')


def _paper_depth(depth: int) -> int:
    """The paper's net whose numbers stand beside a run of ``depth`` (164 for bottleneck, else 110)."""
    return 164 if depth == 164 else 110


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    depth = args['depth']
    if depth not in PAPER_DEPTHS and (not isinstance(depth, int) or depth < 8 or (depth - 2) % 6):
        raise ValueError(
            f"depth must be 110 or 164 (the paper's) or a smaller 6n+2 (e.g. 20, 32), got {depth!r}"
        )
    quick = f',quick,epochs={args["epochs"]}' if args['quick'] else ''
    # depth >= 110: resnet_cifar's 400-step warm-up at lr 0.01 (He et al. 2015, Sec. 4.2)
    base = 110 if depth in PAPER_DEPTHS else depth
    c = resnet_cifar.get_config(f'folder,path={args["path"]},depth={base}{quick}')
    with_model(c, 'preact_resnet_cifar', depth=depth, ordering='e', bottleneck=depth == 164)
    return first_images(c, args['train_images'], args['test_images'])


def get_sweep(arg=None):
    args = parse_arg(arg, ARGS)
    return product({'model.ordering': list(ORDERINGS)}, seed=range(args['seeds']))


def get_table(arg=None):
    args = parse_arg(arg, ARGS)
    ref = _paper_depth(args['depth'])
    return dict(
        name='preact_orderings',
        title=f'CIFAR-10 test error (%), ResNet-{args["depth"]} unit orderings (He et al. 2016, Table 2)',
        rows='model.ordering',
        row_values=list(ORDERINGS),
        row_labels=paper.PREACT_ORDERING_NAMES,
        metric='test_error',
        paper={o: v[ref] for o, v in paper.PREACT_ORDERINGS.items()},
        paper_label='paper (median of 5)' if ref == args['depth'] else f'paper ResNet-{ref} (median of 5)',
    )
