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

from experiments.classification.common import cifar_args, cifar_recipe
from research.config import base_config, parse_arg, with_model

ARGS = {
    'depth': 28,
    'k': 10,
    'dropout': 0.0,
    'cifar100': False,
    **cifar_args(epochs=5),
}


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    c = base_config()
    with_model(c, 'wrn', depth=args['depth'], widen_factor=args['k'], dropout_rate=args['dropout'])
    return cifar_recipe(
        c,
        args,
        optimizer='nesterov',
        weight_decay=5e-4,
        decay_factor=0.2,
        duration='200 epochs',
        boundaries=('60 epochs', '120 epochs', '160 epochs'),
        eval_every='5 epochs',
        checkpoint_every='5 epochs',
        quick_at=(0.3, 0.6, 0.8),
        cifar100=args['cifar100'],
    )
