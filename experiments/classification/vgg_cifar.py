"""VGG with batch norm on CIFAR-10 (Simonyan & Zisserman 2015, Table 1 conv stacks, adapted).

The common CIFAR adaptation (e.g. chengyangfu/pytorch-vgg-cifar10, after Liu & Deng 2015): the
Table 1 conv stack (config A/B/D/E = depth 11/13/16/19) with BN after every conv; on 32x32
inputs the five 2x2 pools leave a 1x1x512 map, so the 7x7 adaptive pool becomes 1x1
(``pool_size=1``) and the classifier shrinks to FC 512 -> FC 512 -> FC 10 with dropout 0.5
(``classifier_width=512``). 15.25M params for depth 16 (14.72M conv stack + 0.53M classifier).

Recipe (that repository's): SGD momentum 0.9, weight decay 5e-4, batch 128, lr 0.05 halved
every 30 epochs, 300 epochs; 4-pixel pad + random 32x32 crop + horizontal flip; per-channel
normalisation. Expected test error: roughly 6-7% for VGG-16 with BN (reported figures of such
setups; not a paper table).

Arguments (after the colon, comma-separated): depth=11|13|16|19 (default 16), bn (default on;
bn=false for the plain stack, which needs a lower lr to train without BN), folder (the offline
CIFAR-10 folder ($RESEARCH_DATA_DIR/cifar10-jpg.tgz, docs/data.md) instead of TFDS 'cifar10'), quick (``epochs`` epochs, default
3, with lr steps at 1/2 and 3/4, for a CPU check), epochs.

  python launch.py --config=experiments/classification/vgg_cifar.py:depth=11,folder,quick
  python launch.py --config=experiments/classification/vgg_cifar.py:depth=16,folder
"""

from experiments.classification.common import cifar_args, cifar_recipe
from research.config import base_config, parse_arg, with_model

DEPTHS = {11: 'vgg11', 13: 'vgg13', 16: 'vgg16', 19: 'vgg19'}


def get_config(arg=None):
    args = parse_arg(
        arg,
        {'depth': 16, 'bn': True, **cifar_args(epochs=3)},
    )
    if args['depth'] not in DEPTHS:
        raise ValueError(f'vgg_cifar depth must be one of {sorted(DEPTHS)}, got {args["depth"]}')
    name = DEPTHS[args['depth']] + ('_bn' if args['bn'] else '')
    c = base_config()
    with_model(c, name, num_classes=10, classifier_width=512, pool_size=1, dropout_rate=0.5)
    return cifar_recipe(
        c,
        args,
        lr=0.05 if args['bn'] else 0.01,
        weight_decay=5e-4,
        decay_factor=0.5,
        duration='300 epochs',
        boundaries=[f'{30 * k} epochs' for k in range(1, 10)],
    )
