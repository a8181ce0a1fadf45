"""CIFAR-10 pre-activation ResNets: He et al. 2016, "Identity Mappings in Deep Residual
Networks", Table 2 (orderings) and Table 3 (ResNet-164 / ResNet-1001).

Paper recipe (default; Sec. 4 / appendix): that of the 2015 CIFAR ResNets -- SGD momentum 0.9,
weight decay 1e-4, batch 128, lr 0.1 (after a 400-iteration warm-up at 0.01 for the deep
nets) divided by 10 at 32k and 48k iterations, stop at 64k; 4-px pad + 32x32 crop + flip.
Test error (%), full pre-activation (e): ResNet-110 6.37, ResNet-164 5.46, ResNet-1001 4.92
(Table 3, mean of 5 runs: 4.92 +- 0.20); original (a): 6.61 / 5.93 / 7.61.

Arguments: depth=110|164|1001 (basic units for 6n+2 unless ``bottleneck``; 164 and 1001 are
bottleneck nets, set automatically), ordering=a..e (default e), folder (the offline CIFAR-10
folder instead of TFDS 'cifar10'), path, quick (``epochs`` epochs, schedule scaled, for a CPU
check), epochs.

  python launch.py --config=experiments/classification/preact_resnet_cifar.py:depth=164,folder,quick
  python launch.py --config=experiments/classification/preact_resnet_cifar.py:depth=1001
  python launch.py --config=experiments/classification/preact_resnet_cifar.py:depth=110,ordering=a
"""

from experiments.classification import resnet_cifar
from experiments.paths import CIFAR10_FOLDER
from research.config import parse_arg, with_model

ARGS = {
    'depth': 164,
    'ordering': 'e',
    'bottleneck': False,
    'folder': False,
    'quick': False,
    'epochs': 5,
    'path': CIFAR10_FOLDER,
}


def uses_bottleneck(depth, bottleneck=False):
    """The paper's nets: 110 basic, 164 and 1001 bottleneck (others: as asked)."""
    return bool(bottleneck) or depth in (164, 1001)


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    base = ['depth=110']  # the 2015 recipe with its 400-step warm-up for deep nets
    if args['folder']:
        base.append(f'folder,path={args["path"]}')
    if args['quick']:
        base.append(f'quick,epochs={args["epochs"]}')
    c = resnet_cifar.get_config(','.join(base))
    with_model(
        c,
        'preact_resnet_cifar',
        depth=args['depth'],
        ordering=args['ordering'],
        bottleneck=uses_bottleneck(args['depth'], args['bottleneck']),
    )
    return c
