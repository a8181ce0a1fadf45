"""EfficientNet B0-B7 on ImageNet (Tan & Le 2019, Sec. 5.2), with the paper's RMSProp recipe.

Recipe: RMSProp decay 0.9, momentum 0.9 (TF1 semantics: ``optimizer.name='rmsprop'``, decay =
``optimizer.b2``, eps 1e-3 as the TF reference), BN momentum 0.99 (Flax convention), weight decay
1e-5, lr 0.256 at batch 4096 (scaled linearly with ``batch``) decayed x0.97 every 2.4 epochs,
SiLU, stochastic depth with survival 0.8 (``drop_path_rate`` 0.2), dropout 0.2 (B0) rising to
0.5 (B7). From the TF reference code: 5 warm-up epochs, 350 epochs, label smoothing 0.1, BN eps
1e-3. Not available here: AutoAugment, EMA of weights, Inception-style random-resized crops
(replaced by resize + random zoom +-25% + flip). Table 2 top-1: 77.1 / 79.1 / 80.1 / 81.6 /
82.9 / 83.6 / 84.0 / 84.3 (B0..B7).

Arguments: ``variant=b0..b7`` picks width/depth/dropout (``research.models.efficientnet.VARIANTS``)
and the input resolution of that variant (224 / 240 / 260 / 300 / 380 / 456 / 528 / 600, the
paper's; torchvision's B2 weights use 288: pass ``resolution=288``); ``resolution=`` overrides it;
``batch=``; ``epochs=``; ``folder=<ImageNet-style class folder or .tgz>`` instead of TFDS
'imagenet2012'; ``quick``: a CPU smoke run of the variant on the CIFAR-10 folder at 32 px; ``remat``:
each MBConv block under ``nn.remat`` (``model.remat``, less activation memory for about one more
forward pass, e.g. for B5-B7 at 456-600 px; docs/models-guide.md).

  python launch.py --config=experiments/classification/efficientnet.py:variant=b0
  python launch.py --config=experiments/classification/efficientnet.py:variant=b3,folder=/data/imagenet,batch=512
  python launch.py --config=experiments/classification/efficientnet.py:variant=b0,quick
"""

from experiments.paths import CIFAR10_FOLDER
from experiments.classification.mobilenet import exponential_boundaries
from research.config import base_config, parse_arg, with_model
from research.models.efficientnet import VARIANTS

ARGS = {
    'variant': 'b0',
    'resolution': 0,
    'batch': 0,
    'epochs': 0,
    'folder': '',
    'quick': False,
    'remat': False,
    'path': CIFAR10_FOLDER,
}
PAPER_BATCH, PAPER_LR, EPOCHS, WARMUP = 4096, 0.256, 350, 5


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    if args['variant'] not in VARIANTS:
        raise ValueError(f'variant must be one of {", ".join(VARIANTS)}; got {args["variant"]!r}')
    _, _, resolution, dropout = VARIANTS[args['variant']]
    c = base_config()
    with_model(
        c,
        f'efficientnet_{args["variant"]}',
        dropout_rate=dropout,
        drop_path_rate=0.2,
        norm_eps=1e-3,
        norm_momentum=0.99,
        **({'remat': True} if args['remat'] else {}),
    )
    if args['quick']:
        c.data.name = 'image_folder'
        c.data.path = args['path']
        c.data.image_size = 0
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
        c.data.image_size = args['resolution'] or resolution
        batch = args['batch'] or PAPER_BATCH
        epochs = args['epochs'] or EPOCHS
        c.schedule.warmup = f'{WARMUP} epochs'
        c.schedule.warmup_init_factor = 0.0
        c.train.log_every_steps = 100
    c.data.augment.flip = True
    c.data.augment.scale = 0.25
    c.optimizer.name = 'rmsprop'
    c.optimizer.lr = PAPER_LR * batch / PAPER_BATCH
    c.optimizer.momentum = 0.9
    c.optimizer.b2 = 0.9  # RMSProp decay
    c.optimizer.eps = 1e-3
    c.optimizer.weight_decay = 1e-5
    c.schedule.name = 'step'
    c.schedule.decay_factor = 0.97
    c.schedule.boundaries = exponential_boundaries(epochs, 2.4)
    c.train.label_smoothing = 0.1
    c.train.batch_size = batch
    c.train.eval_batch_size = max(batch, 250)
    c.train.duration = f'{epochs} epochs'
    c.train.eval_every = '1 epochs'
    c.train.checkpoint_every = '1 epochs'
    return c
