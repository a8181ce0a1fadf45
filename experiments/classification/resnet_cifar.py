"""CIFAR-10 ResNets and plain nets of He et al. 2015, "Deep Residual Learning", Sec. 4.2, Table 6.

Paper recipe (default): SGD momentum 0.9, weight decay 1e-4, batch 128, lr 0.1
divided by 10 at 32k and 48k iterations, stop at 64k; 4-pixel pad + random
32x32 crop + horizontal flip; per-channel normalisation. Table 6 test error:
ResNet-20 8.75, 32 7.51, 44 7.17, 56 6.97, 110 6.43 (%). For depth >= 110 the
paper warms up at lr 0.01 for ~400 iterations; here a linear 400-step warm-up
from 0.01 to 0.1.

Arguments (after the colon, comma-separated): depth=20|32|44|56|110|1202,
shortcut=A|B, plain (no shortcuts: the paper's plain nets), folder (the
offline CIFAR-10 folder $RESEARCH_DATA_DIR/cifar10-jpg.tgz instead of TFDS 'cifar10'), quick
(5 epochs with the step schedule scaled to it, for a CPU check).

  python launch.py --config=experiments/classification/resnet_cifar.py:depth=20,folder,quick
  python launch.py --config=experiments/classification/resnet_cifar.py:depth=56,shortcut=B,folder
  python launch.py --config=experiments/classification/resnet_cifar.py:depth=56 --config.optimizer.lr=0.05

Expected: the paper's Table 6 errors within ~0.5% at full schedule with TFDS
CIFAR-10 (the JPEG folder sits a little lower); quick ResNet-20 on 2 CPU cores
reaches ~80% test top-1 (see README for the measured figure).
"""

from experiments.paths import CIFAR10_FOLDER
from research.config import base_config, parse_arg, with_model


def get_config(arg=None):
    args = parse_arg(
        arg,
        {
            "depth": 20,
            "shortcut": "A",
            "plain": False,
            "folder": False,
            "quick": False,
            "epochs": 5,
            "path": CIFAR10_FOLDER,
        },
    )
    c = base_config()
    if args["plain"]:
        with_model(c, "plain_cifar", depth=args["depth"])
    else:
        with_model(c, "resnet_cifar", depth=args["depth"], shortcut=args["shortcut"])
    if args["folder"]:
        c.data.name = "image_folder"
        c.data.path = args["path"]
    else:
        c.data.name = "cifar10"
    c.data.augment.crop_padding = 4
    c.data.augment.flip = True
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "step"
    c.schedule.decay_factor = 0.1
    c.train.batch_size = 128
    c.train.eval_batch_size = 500
    if args["quick"]:
        e = args["epochs"]
        c.train.duration = f"{e} epochs"
        c.schedule.boundaries = (f"{0.5 * e} epochs", f"{0.75 * e} epochs")
        c.train.log_every_steps = 20
    else:
        c.train.duration = "64000 steps"
        c.schedule.boundaries = ("32000 steps", "48000 steps")
        c.train.log_every_steps = 100
    if args["depth"] >= 110:
        c.schedule.warmup = "400 steps"
        c.schedule.warmup_init_factor = 0.1
    c.train.eval_every = "1 epochs"
    c.train.checkpoint_every = "1 epochs"
    return c
