"""CIFAR DenseNets of Huang et al. 2017, "Densely Connected Convolutional Networks", Sec. 4.2,
Table 2: DenseNet-BC (L=100, k=12) by default.

Paper recipe (default): SGD with Nesterov momentum 0.9 (no dampening), weight decay 1e-4, batch
64, 300 epochs, lr 0.1 divided by 10 at 50% and 75% of training (epochs 150 and 225); standard
augmentation (4-pixel pad + random 32x32 crop + horizontal flip, the paper's "C10+") and
per-channel normalisation; dropout 0 with augmentation (the paper's 0.2 is for C10 without
augmentation: pass dropout=0.2,noaug). Table 2 test error (C10+ / C100+): DenseNet-BC (L=100,
k=12) 4.51 / 22.27; DenseNet (L=40, k=12) 5.24 / 24.42; DenseNet-BC (L=250, k=24) 3.62 / 17.60;
DenseNet-BC (L=190, k=40) 3.46 / 17.18. Weight decay applies to every parameter (as torch's SGD).

Arguments (after the colon, comma-separated): depth=L (0 = 100, or 40 with quick), k=growth
rate (12), plain (the plain DenseNet: no bottleneck, no compression), dropout=rate (0), noaug
(no augmentation), cifar100 (TFDS 'cifar100'), folder (the offline CIFAR-10 folder in
$RESEARCH_DATA_DIR/cifar10-jpg.tgz instead of TFDS 'cifar10'), quick (``epochs`` epochs, 1 by default, with the
step schedule scaled to it: a CPU check).

  python launch.py --config=experiments/classification/densenet_cifar.py:folder,quick
  python launch.py --config=experiments/classification/densenet_cifar.py
  python launch.py --config=experiments/classification/densenet_cifar.py:depth=40,plain
  python launch.py --config=experiments/classification/densenet_cifar.py:depth=250,k=24

Expected: Table 2's errors within ~0.5% at the full schedule with TFDS CIFAR (the JPEG folder
sits a little lower). The quick run (DenseNet-BC L=40, k=12: 176,122 params, 1 epoch) only
checks that training works; it should end well above chance, nowhere near the paper's figures.
DenseNets are slow on CPU (many small concatenations): a 20-step smoke run measured 7 train
img/s on a heavily shared 2-core machine and reached 20% test top-1.
"""

from experiments.classification.common import cifar_args, cifar_recipe
from research.config import base_config, parse_arg, with_model


def get_config(arg=None):
    args = parse_arg(
        arg,
        {
            'depth': 0,
            'k': 12,
            'plain': False,
            'dropout': 0.0,
            'noaug': False,
            'cifar100': False,
            **cifar_args(epochs=1),
        },
    )
    if args['folder'] and args['cifar100']:
        raise ValueError("the offline folder holds CIFAR-10 only; drop 'folder' for CIFAR-100")
    depth = args['depth'] or (40 if args['quick'] else 100)
    c = base_config()
    model = dict(depth=depth, growth_rate=args['k'], dropout_rate=args['dropout'])
    if args['plain']:
        model.update(bottleneck=False, compression=1.0)
    with_model(c, 'densenet_cifar', **model)
    return cifar_recipe(
        c,
        args,
        optimizer='nesterov',
        weight_decay=1e-4,
        batch_size=64,
        duration='300 epochs',
        boundaries=('150.0 epochs', '225.0 epochs'),  # spelled as the runs started before common.py
        epoch_format='',
        cifar100=args['cifar100'],
        augment=not args['noaug'],
    )
