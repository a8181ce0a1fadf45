"""Depth vs width (Zagoruyko & Komodakis 2016, "Wide Residual Networks", Table 4), with a STAND-IN model.

No WRN model exists in the registry yet (it comes with the model-zoo issue). Until then this
sweep uses ``resnet_cifar`` with its ``width`` knob as a stand-in: WRN-d-k ~ ``resnet_cifar``
with ``depth = d - 2`` (the same (d - 4) / 6 blocks per stage: WRN counts the two 1x1
projection convs, ``resnet_cifar`` must be 6n + 2) and ``width = 16 k``. Differences from a WRN:
post-activation blocks (WRN is pre-activation), stem of 16k filters (WRN: 16), option-B
shortcuts (1x1 projection only where the shape changes), no dropout. So parameter counts differ
(``tables/wrn_params`` shows ours beside the WRN counts) and the paper numbers are a guide,
not a target. Swap in ``model.name='wrn'`` once it exists.

Nets: WRN-16-k for k = 1, 2, 4 and deeper-thinner counterparts WRN-22-2, WRN-40-1 (~ the
parameters of 16-2) and WRN-40-2 (~ 16-4); x ``seeds``. Recipe (paper): SGD Nesterov 0.9,
lr 0.1 x0.2 at epochs 60/120/160, 200 epochs, batch 128, weight decay 5e-4, pad-4 crop + flip.

Arguments: ``quick`` (``epochs`` epochs, default 3, on the first ``train_images`` training
images, default 10000, schedule scaled), ``epochs=E``, ``train_images=N`` (0 = all 50k),
``seeds=S`` (default 2), ``path=<CIFAR-10 folder>``.

Reduced scale, 2 CPU cores: MACs grow as blocks x width^2; estimated from ResNet-20's
~115 img/s, one pass over 10k images costs ~1 min (16-1), 4 (16-2), 15 (16-4), 6 (22-2),
3 (40-1) and 12 min (40-2), plus ~1/3 of that for the per-epoch evaluation on the 10k test
images: about 2.8 hours per seed with the quick defaults, ~5.5 h in all (``seeds=1`` halves it)::

  python launch.py --config=experiments/ablations/wrn_depth_width.py:quick --dry_run
  python launch.py --config=experiments/ablations/wrn_depth_width.py:quick --sweep --table

Full scale (200 epochs on all of CIFAR-10; the widest runs are the GPU-hungry ones)::

  python launch.py --config=experiments/ablations/wrn_depth_width.py --sweep --sweep_parallel=4 --table

Tables: ``wrn_depth_width`` (test error, rows WRN depth, columns k; paper: 40-1 6.85, 40-2
5.33) and ``wrn_params`` (our parameter counts beside WRN's).
"""

from experiments.classification import resnet_cifar
from experiments.paths import CIFAR10_FOLDER
from research.config import parse_arg, with_model
from research.experiments import paper
from research.experiments.sweep import chain, product, zip_

ARGS = {"quick": False, "epochs": 3, "train_images": 10000, "seeds": 2, "path": CIFAR10_FOLDER}

# WRN (depth, k) -> resnet_cifar (depth, width)
NETS = [(16, 1), (16, 2), (16, 4), (22, 2), (40, 1), (40, 2)]


def stand_in(d, k):
    return d - 2, 16 * k


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    c = resnet_cifar.get_config(f"folder,path={args['path']}")
    depth, width = stand_in(*NETS[0])
    with_model(c, "resnet_cifar", depth=depth, width=width, shortcut="B")
    c.optimizer.name = "nesterov"
    c.optimizer.lr = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 5e-4
    c.schedule.name = "step"
    c.schedule.decay_factor = 0.2
    if args["quick"]:
        e = args["epochs"]
        if args["train_images"]:
            c.data.train_split = f"train[:{args['train_images']}]"
        c.train.duration = f"{e} epochs"
        c.schedule.boundaries = tuple(f"{f * e:g} epochs" for f in (0.3, 0.6, 0.8))
        c.train.log_every_steps = 20
    else:
        c.train.duration = "200 epochs"
        c.schedule.boundaries = ("60 epochs", "120 epochs", "160 epochs")
        c.train.log_every_steps = 100
    c.train.eval_every = "1 epochs" if args["quick"] else "5 epochs"
    c.train.checkpoint_every = "1 epochs" if args["quick"] else "5 epochs"
    return c


def get_sweep(arg=None):
    args = parse_arg(arg, ARGS)
    wide = product({"model.depth": [stand_in(16, 1)[0]], "model.width": [16 * k for k in (1, 2, 4)]})
    deep = zip_(
        {
            "model.depth": [stand_in(d, k)[0] for d, k in NETS[3:]],
            "model.width": [16 * k for _, k in NETS[3:]],
        }
    )
    return product(chain(wide, deep), seed=range(args["seeds"]))


def get_table(arg=None):
    depths = sorted({d for d, _ in NETS})
    ks = sorted({k for _, k in NETS})
    common = dict(
        rows="model.depth",
        cols="model.width",
        row_values=[stand_in(d, 1)[0] for d in depths],
        col_values=[16 * k for k in ks],
        row_labels={stand_in(d, 1)[0]: f"WRN-{d} (resnet_cifar {d - 2})" for d in depths},
        col_labels={16 * k: f"k={k}" for k in ks},
    )
    return [
        dict(
            name="wrn_depth_width",
            title="CIFAR-10 test error (%), WRN stand-in: depth vs width (Zagoruyko & Komodakis, Table 4)",
            metric="test_error",
            paper={stand_in(d, k): v["cifar10"] for (d, k, *rest), v in paper.WRN_TABLE4.items() if not rest},
            **common,
        ),
        dict(
            name="wrn_params",
            title="Parameters: resnet_cifar stand-in vs WRN",
            metric="num_params",
            fmt=",.0f",
            paper_label="WRN",
            paper={stand_in(d, k): n for (d, k), n in paper.WRN_PARAMS.items()},
            plot=False,
            **common,
        ),
    ]
