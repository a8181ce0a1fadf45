"""MobileNet v1 / v2 / v3 and MnasNet on ImageNet, with the papers' RMSProp recipes.

Recipes (TF1 ``RMSPropOptimizer``: ``optimizer.name='rmsprop'``, decay = ``optimizer.b2``, mean
square initialised to 1, eps inside the square root; staircase exponential decay written as a
``step`` schedule with one boundary per decay period):

- v1 (Howard et al. 2017, Sec. 4): "RMSprop ... less regularization and data augmentation", no
  learning rate stated; we use the v2 recipe below with weight decay 4e-5 (TF-slim's MobileNet
  default) and no dropout. Table 8: 70.6 / 68.4 / 63.7 / 50.6 top-1 (alpha 1 / .75 / .5 / .25,
  224); Table 7 (alpha 1): 70.6 / 69.1 / 67.2 / 64.4 at 224 / 192 / 160 / 128.
- v2 (Sandler et al. 2018, Sec. 6.1): RMSProp decay 0.9, momentum 0.9, weight decay 4e-5, lr
  0.045 decayed x0.98 per epoch, batch 96 (16 async workers), BN after every layer. 72.0 top-1.
- v3 (Howard et al. 2019, Sec. 6.1): RMSProp momentum 0.9, lr 0.1, batch 4096, weight decay
  1e-5, dropout 0.2 (keep 0.8), BN momentum 0.99 (TF 0.99 = Flax 0.99), EMA of weights (not
  available here). The paper's "decay rate of 0.01 every 3 epochs" is ambiguous; we use x0.97
  every 2.4 epochs (the MnasNet/TPU reference recipe v3 was searched with). 75.2 / 67.4 top-1.
- MnasNet (Tan et al. 2019, Sec. 5): RMSProp decay 0.9, momentum 0.9, BN momentum 0.99, weight
  decay 1e-5, dropout 0.2, lr warmed up 0 -> 0.256 over 5 epochs then x0.97 every 2.4 epochs,
  batch 4096. Label smoothing 0.1 as in the TF reference code. torchvision's mnasnet1_0 (B1,
  no SE) 73.5; paper's A1 75.2.

Epochs are not stated by v1/v2; we train 200 (v1/v2) and 350 (v3/MnasNet, the TPU reference).
The lr scales linearly with ``batch`` from the paper's batch (v2: 0.045 at 96; v3: 0.1 at 4096;
MnasNet: 0.256 at 4096). Augmentation: resize to ``resolution`` + random zoom (+-25%) + flip, a
stand-in for Inception-style random-resized crops (not available in research/data). RMSProp
eps 1.0 for v1/v2 (TF-slim's training default) and 1e-3 for v3/MnasNet (the TPU reference).

Arguments: ``model=v1|v2|v3_large|v3_small|mnasnet|mnasnet_a1``; ``width=`` the width multiplier
(v1 alpha 1.0/0.75/0.5/0.25, v2/v3 width_mult, MnasNet alpha 0.5/0.75/1.0/1.3); ``resolution=``
(v1's rho: 224/192/160/128); ``batch=``; ``epochs=``; ``folder=<ImageNet-style class folder or
.tgz>`` instead of TFDS 'imagenet2012'; ``quick``: a CPU smoke run on the CIFAR-10 folder at 32
px (``epochs``, default 2) checking that the pipeline trains (loss falls), not paper accuracy;
``remat``: each block under ``nn.remat`` (``model.remat``, less activation memory for about one
more forward pass; docs/models-guide.md).

  python launch.py --config=experiments/classification/mobilenet.py:model=v1,width=0.5,resolution=160
  python launch.py --config=experiments/classification/mobilenet.py:model=v3_large,folder=/data/imagenet
  python launch.py --config=experiments/classification/mobilenet.py:model=v2,quick
"""

from experiments.paths import CIFAR10_FOLDER
from research.config import base_config, parse_arg, with_model

ARGS = {
    'model': 'v2',
    'width': 1.0,
    'resolution': 224,
    'batch': 0,
    'epochs': 0,
    'folder': '',
    'quick': False,
    'remat': False,
    'path': CIFAR10_FOLDER,
}

# model -> (registry name, width kwarg, paper batch, paper lr, decay per period, period in epochs,
#           warm-up epochs, weight decay, epochs, label smoothing, extra model kwargs)
RECIPES = {
    'v1': ('mobilenet_v1', 'width_multiplier', 96, 0.045, 0.98, 1.0, 0, 4e-5, 200, 0.0, {}),
    'v2': ('mobilenet_v2', 'width_mult', 96, 0.045, 0.98, 1.0, 0, 4e-5, 200, 0.0, {}),
    'v3_large': ('mobilenet_v3_large', 'width_mult', 4096, 0.1, 0.97, 2.4, 0, 1e-5, 350, 0.0, {}),
    'v3_small': ('mobilenet_v3_small', 'width_mult', 4096, 0.1, 0.97, 2.4, 0, 1e-5, 350, 0.0, {}),
    'mnasnet': ('mnasnet1_0', 'alpha', 4096, 0.256, 0.97, 2.4, 5, 1e-5, 350, 0.1, {'norm_momentum': 0.99}),
    'mnasnet_a1': ('mnasnet_a1', 'alpha', 4096, 0.256, 0.97, 2.4, 5, 1e-5, 350, 0.1, {'norm_momentum': 0.99}),
}


def exponential_boundaries(epochs: float, period: float) -> tuple[str, ...]:
    """Staircase exponential decay as step boundaries: every ``period`` epochs up to ``epochs``."""
    n = int(epochs / period)
    return tuple(f'{round(period * k, 4)} epochs' for k in range(1, n + 1) if period * k < epochs)


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    if args['model'] not in RECIPES:
        raise ValueError(f'model must be one of {", ".join(RECIPES)}; got {args["model"]!r}')
    name, width_key, paper_batch, paper_lr, decay, period, warmup, wd, epochs, smooth, extra = RECIPES[
        args['model']
    ]
    c = base_config()
    if args['remat']:
        extra = {**extra, 'remat': True}
    with_model(c, name, **{width_key: args['width']}, **extra)
    if args['quick']:
        c.data.name = 'image_folder'
        c.data.path = args['path']
        c.data.image_size = 0  # native 32 px: a smoke run, not a reproduction
        batch = args['batch'] or 64
        epochs = args['epochs'] or 2
        c.train.log_every_steps = 20
    else:
        if args['folder']:
            c.data.name = 'image_folder'
            c.data.path = args['folder']
        else:
            c.data.name = 'imagenet2012'
            c.data.eval_split = 'validation'
        c.data.image_size = args['resolution']
        batch = args['batch'] or paper_batch
        epochs = args['epochs'] or epochs
        c.train.log_every_steps = 100
    c.data.augment.flip = True
    c.data.augment.scale = 0.25
    c.optimizer.name = 'rmsprop'
    c.optimizer.lr = paper_lr * batch / paper_batch
    c.optimizer.momentum = 0.9
    c.optimizer.b2 = 0.9  # RMSProp decay
    c.optimizer.eps = 1e-3 if args['model'].startswith(('v3', 'mnasnet')) else 1.0
    c.optimizer.weight_decay = wd
    c.schedule.name = 'step'
    c.schedule.decay_factor = decay
    c.schedule.boundaries = exponential_boundaries(epochs, period)
    if warmup and not args['quick']:
        c.schedule.warmup = f'{warmup} epochs'
        c.schedule.warmup_init_factor = 0.0
    c.train.label_smoothing = smooth
    c.train.batch_size = batch
    c.train.eval_batch_size = max(batch, 250)
    c.train.duration = f'{epochs} epochs'
    c.train.eval_every = '1 epochs'
    c.train.checkpoint_every = '1 epochs'
    return c
