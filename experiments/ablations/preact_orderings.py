"""Residual-unit orderings (a)-(e) of He et al. 2016, "Identity Mappings in Deep Residual
Networks", Fig. 4 / Table 2: CIFAR-10 test error of ResNet-110 (and 164).

Model: ``preact_resnet_cifar`` (research.models.preact_resnet) with its ``ordering`` field
'a'..'e' ((a) original, (b) BN after addition, (c) ReLU before addition, (d) ReLU-only
pre-activation, (e) full pre-activation); depth 110 uses basic units, 164 bottleneck units.
The orderings differ by a few hundred parameters at most (stem/final/projection BNs).

Paper (medians of 5 runs), ResNet-110: (a) 6.61, (b) 8.17, (c) 7.84, (d) 6.71, (e) 6.37;
ResNet-164: 6.61 -> 5.93, 6.50, 6.14, 5.91, 5.46. Recipe: that of resnet_cifar.py (SGD 0.1,
/10 at 32k and 48k, 64k iterations, batch 128, wd 1e-4) with the 400-step warm-up of depth 110.

Arguments: ``depth=110|164``, ``quick`` (``epochs`` epochs, default 2), ``epochs=E``,
``seeds=S`` (default 2; the paper takes medians of 5), ``path=<CIFAR-10 folder>``.

Reduced scale, 2 CPU cores: ResNet-110 is ~6.2x the MACs of ResNet-20 (~115 img/s), about
45 min per epoch plus ~15 min of evaluation: with the quick defaults (2 epochs, 5 orderings,
2 seeds = 10 runs) about 20 hours -- run one seed (``seeds=1``) or a few orderings
(``--sweep_only=model.ordering=e``) on CPU::

  python launch.py --config=experiments/ablations/preact_orderings.py:quick --dry_run
  python launch.py --config=experiments/ablations/preact_orderings.py:quick,seeds=1 --sweep --table

Full scale, GPU(s)::

  python launch.py --config=experiments/ablations/preact_orderings.py:seeds=5 --sweep --sweep_parallel=4 --table
  python launch.py --config=experiments/ablations/preact_orderings.py:depth=164,seeds=5 --sweep --table
"""

from experiments.classification import resnet_cifar
from experiments.paths import CIFAR10_FOLDER
from research.config import parse_arg, with_model
from research.experiments import paper
from research.experiments.sweep import product

ARGS = {"depth": 110, "quick": False, "epochs": 2, "seeds": 2, "path": CIFAR10_FOLDER}
ORDERINGS = ("a", "b", "c", "d", "e")


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    if args["depth"] not in (110, 164):
        raise ValueError(f"depth must be 110 or 164 (the paper's), got {args['depth']}")
    quick = f",quick,epochs={args['epochs']}" if args["quick"] else ""
    c = resnet_cifar.get_config(f"folder,path={args['path']},depth=110{quick}")  # depth 110: warm-up
    with_model(c, "preact_resnet_cifar", depth=args["depth"], ordering="e", bottleneck=args["depth"] == 164)
    return c


def get_sweep(arg=None):
    args = parse_arg(arg, ARGS)
    return product({"model.ordering": list(ORDERINGS)}, seed=range(args["seeds"]))


def get_table(arg=None):
    args = parse_arg(arg, ARGS)
    return dict(
        name="preact_orderings",
        title=f"CIFAR-10 test error (%), ResNet-{args['depth']} unit orderings (He et al. 2016, Table 2)",
        rows="model.ordering",
        row_values=list(ORDERINGS),
        row_labels=paper.PREACT_ORDERING_NAMES,
        metric="test_error",
        paper={o: v[args["depth"]] for o, v in paper.PREACT_ORDERINGS.items()},
        paper_label="paper (median of 5)",
    )
