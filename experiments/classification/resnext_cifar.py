"""CIFAR ResNeXt-29: Xie et al. 2017, "Aggregated Residual Transformations", Sec. 5.3, Table 7.

Paper recipe (default, Sec. 5.3 / the authors' Torch code): SGD momentum 0.9, weight decay
5e-4, batch 128 (on 8 GPUs), lr 0.1 divided by 10 at epochs 150 and 225, 300 epochs; 4-px pad
+ 32x32 crop + flip. Test error (%) CIFAR-10: ResNeXt-29 8x64d 3.65, 16x64d 3.58 (CIFAR-100:
17.77 / 17.31). 34.4M / 68.1M parameters.

Arguments: cardinality=8|16 (default 8), base_width=64, depth=29, folder (the offline CIFAR-10
folder instead of TFDS 'cifar10'), path, quick (``epochs`` epochs, schedule scaled, for a CPU
check; a 29-layer 8x64d costs ~10.7 GMACs per 32x32 image, so on CPU pass a small one, e.g.
depth=11,cardinality=4,base_width=4), epochs.

  python launch.py --config=experiments/classification/resnext_cifar.py:depth=11,cardinality=4,base_width=4,folder,quick
  python launch.py --config=experiments/classification/resnext_cifar.py:cardinality=16
"""

from experiments.classification.common import cifar_args, cifar_recipe
from research.config import base_config, parse_arg, with_model

ARGS = {
    'depth': 29,
    'cardinality': 8,
    'base_width': 64,
    **cifar_args(epochs=5),
}


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    c = base_config()
    with_model(
        c,
        'resnext_cifar',
        depth=args['depth'],
        cardinality=args['cardinality'],
        base_width=args['base_width'],
    )
    return cifar_recipe(
        c,
        args,
        weight_decay=5e-4,
        duration='300 epochs',
        boundaries=('150 epochs', '225 epochs'),
        eval_every='5 epochs',
    )
