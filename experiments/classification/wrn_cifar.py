"""CIFAR Wide ResNets: Zagoruyko & Komodakis 2016, "Wide Residual Networks", Tables 4-6.

Paper recipe (default): SGD with Nesterov momentum 0.9, weight decay 5e-4, batch 128, lr 0.1
multiplied by 0.2 at epochs 60, 120 and 160, 200 epochs; 4-px pad (reflection in the paper; zero
here) + 32x32 crop + flip; per-channel normalisation. Dropout 0.3 between the convs of each
block for the "dropout" rows. Test error (%) CIFAR-10 / CIFAR-100 (Table 4): WRN-40-4 4.97 /
22.89, WRN-16-8 4.81 / 22.07, WRN-28-10 4.17 / 20.50, with dropout 0.3: 3.89 / 18.85.

Arguments: depth=16|22|28|40 (6N+4), k (widen factor, 10), dropout (rate, 0.0), folder (the
offline CIFAR-10 folder instead of TFDS 'cifar10'), cifar100 (TFDS 'cifar100'), path, quick
(``epochs`` epochs on all images, schedule scaled, for a CPU check: use a small net, e.g.
depth=16,k=1), epochs.

  python launch.py --config=experiments/classification/wrn_cifar.py:depth=16,k=1,folder,quick
  python launch.py --config=experiments/classification/wrn_cifar.py:depth=28,k=10,dropout=0.3
"""

from experiments.paths import CIFAR10_FOLDER
from research.config import base_config, parse_arg, with_model

ARGS = {
    "depth": 28,
    "k": 10,
    "dropout": 0.0,
    "folder": False,
    "cifar100": False,
    "quick": False,
    "epochs": 5,
    "path": CIFAR10_FOLDER,
}


def apply_recipe(c, quick=False, epochs=5):
    """The WRN optimiser and schedule (also used by experiments/ablations/wrn_depth_width.py)."""
    c.optimizer.name = "nesterov"
    c.optimizer.lr = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.schedule.name = "step"
    c.schedule.decay_factor = 0.2
    c.train.batch_size = 128
    c.train.eval_batch_size = 500
    if quick:
        c.train.duration = f"{epochs} epochs"
        c.schedule.boundaries = tuple(f"{f * epochs:g} epochs" for f in (0.3, 0.6, 0.8))
        c.train.log_every_steps = 20
        c.train.eval_every = "1 epochs"
        c.train.checkpoint_every = "1 epochs"
    else:
        c.train.duration = "200 epochs"
        c.schedule.boundaries = ("60 epochs", "120 epochs", "160 epochs")
        c.train.log_every_steps = 100
        c.train.eval_every = "5 epochs"
        c.train.checkpoint_every = "5 epochs"
    return c


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    c = base_config()
    with_model(c, "wrn", depth=args["depth"], widen_factor=args["k"], dropout_rate=args["dropout"])
    if args["folder"]:
        c.data.name = "image_folder"
        c.data.path = args["path"]
    else:
        c.data.name = "cifar100" if args["cifar100"] else "cifar10"
    c.data.augment.crop_padding = 4
    c.data.augment.flip = True
    return apply_recipe(c, args["quick"], args["epochs"])
