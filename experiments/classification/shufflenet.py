"""ShuffleNet v1 (Zhang et al. 2018, Sec. 4, Tables 1-2) and ShuffleNet v2 (Ma et al. 2018,
Sec. 5, Table 5) on ImageNet (TFDS 'imagenet2012').

Papers' recipe (v2 follows v1's): SGD momentum 0.9, batch 1024, lr 0.5 decayed linearly to 0
over 300k iterations (~240 epochs), weight decay 4e-5 ("slightly less aggressive scale
augmentation for small networks"). The defaults follow it: lr 0.5 per 1024 images (scaled
linearly with ``batch``), linear schedule to 0, 300000 * 1024 / batch steps, weight decay 4e-5
on the conv/FC weights only (the authors' released code exempts BN and biases; the papers do
not say). Top-1 error: v1 1x g=1/2/3/4/8 33.6/32.7/32.6/32.8/32.4 (Table 2); v2 0.5x/1x/1.5x/2x
39.7/30.6/27.4/25.1 (the v2 paper's comparison table, Table 8).

Approximated (what research/config.py and the data pipeline allow): images are resized to
224x224 as a whole (no random-resized crop, no 256-resize + centre crop at test time); training
augmentation is a horizontal flip and a random zoom of +-``zoom`` (default 0.2, mild as the
paper asks) instead of Inception-style scale/aspect crops; no lighting noise. Expect errors a
few points above the papers'.

Arguments (after the colon, comma-separated): version=1|2, groups=g (v1: 1, 2, 3, 4, 8),
scale=s (v1: 0.25 .. 2; v2: 0.5, 1.0, 1.5, 2.0), batch (1024), zoom (0.2), folder (the offline
CIFAR-10 folder ($RESEARCH_DATA_DIR/cifar10-jpg.tgz) at its native 32x32 instead of ImageNet), quick (``steps``
steps, 300 by default, batch 128: a CPU smoke run, use with folder), remat (``model.remat``: each
unit under ``nn.remat``, less activation memory for about one more forward pass).

  python launch.py --config=experiments/classification/shufflenet.py:version=1,groups=3
  python launch.py --config=experiments/classification/shufflenet.py:version=2,scale=1.0
  python launch.py --config=experiments/classification/shufflenet.py:version=2,scale=0.5,folder,quick

Expected: the quick CIFAR-10 run only checks that the pipeline trains; at 32x32 the stride-32
network sees 1x1 final maps, so it says nothing about the papers' numbers. Measured (v2 0.5x,
300 steps, heavily shared 2-core CPU): 33.4% test top-1 in 2:50, 297 train img/s.
"""

from experiments.paths import CIFAR10_FOLDER
from research.config import base_config, parse_arg, with_model

V2_MODELS = {
    0.5: 'shufflenet_v2_x0_5',
    1.0: 'shufflenet_v2_x1_0',
    1.5: 'shufflenet_v2_x1_5',
    2.0: 'shufflenet_v2_x2_0',
}
PAPER_ITERATIONS = 300_000
PAPER_BATCH = 1024
PAPER_LR = 0.5


def get_config(arg=None):
    args = parse_arg(
        arg,
        {
            'version': 1,
            'groups': 3,
            'scale': 1.0,
            'batch': PAPER_BATCH,
            'zoom': 0.2,
            'folder': False,
            'quick': False,
            'steps': 300,
            'remat': False,
            'path': CIFAR10_FOLDER,
        },
    )
    c = base_config()
    remat = {'remat': True} if args['remat'] else {}
    if args['version'] == 1:
        with_model(c, 'shufflenet_v1', groups=args['groups'], scale=args['scale'], **remat)
    elif args['version'] == 2:
        if args['scale'] not in V2_MODELS:
            raise ValueError(f'ShuffleNet v2 scale must be one of {sorted(V2_MODELS)}; got {args["scale"]}')
        with_model(c, V2_MODELS[args['scale']], **remat)
    else:
        raise ValueError(f'version must be 1 or 2; got {args["version"]}')
    if args['folder']:
        c.data.name = 'image_folder'
        c.data.path = args['path']
    else:
        c.data.name = 'imagenet2012'
        c.data.eval_split = 'validation'
        c.data.image_size = 224
    c.data.augment.flip = True
    c.data.augment.scale = args['zoom']
    batch = 128 if args['quick'] else args['batch']
    c.optimizer.name = 'sgd'
    c.optimizer.lr = PAPER_LR * batch / PAPER_BATCH
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 4e-5
    c.optimizer.decay_all = False
    c.schedule.name = 'linear'
    c.schedule.end_factor = 0.0
    c.train.batch_size = batch
    c.train.eval_batch_size = 500 if args['folder'] else 250
    if args['quick']:
        c.train.duration = f'{args["steps"]} steps'
        c.train.log_every_steps = 20
        c.train.eval_every = ''
        c.train.checkpoint_every = ''
    else:
        c.train.duration = f'{PAPER_ITERATIONS * PAPER_BATCH // batch} steps'
        c.train.log_every_steps = 100
        c.train.eval_every = '5 epochs'
        c.train.checkpoint_every = '1 epochs'
    return c
