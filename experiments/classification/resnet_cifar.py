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

from experiments.classification.common import cifar_args, cifar_recipe
from research.config import base_config, parse_arg, with_model


def get_config(arg=None):
    args = parse_arg(
        arg,
        {
            'depth': 20,
            'shortcut': 'A',
            'plain': False,
            **cifar_args(epochs=5),
        },
    )
    c = base_config()
    if args['plain']:
        with_model(c, 'plain_cifar', depth=args['depth'])
    else:
        with_model(c, 'resnet_cifar', depth=args['depth'], shortcut=args['shortcut'])
    cifar_recipe(
        c,
        args,
        weight_decay=1e-4,
        duration='64000 steps',
        boundaries=('32000 steps', '48000 steps'),
        epoch_format='',
    )
    if args['depth'] >= 110:
        c.schedule.warmup = '400 steps'
        c.schedule.warmup_init_factor = 0.1
    return c
