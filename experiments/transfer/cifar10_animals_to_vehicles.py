"""Transfer learning on the CIFAR-10 folder: a backbone trained here on the six animal classes
is reused for the four vehicle classes with little data (Yosinski et al. 2014, "How transferable
are features in deep neural networks?"; the lecture's feature extraction vs fine-tuning).

Stage 1 (``stage=source``): ResNet-20 on bird/cat/deer/dog/frog/horse (30,000 train images).
Stage 2 (``stage=target``): airplane/automobile/ship/truck from the first ``fraction`` % of the
train split (20 %: about 4,000 images), evaluated on all 4,000 test vehicles, in three modes:

- ``mode=scratch``: random init (the baseline);
- ``mode=features``: feature extraction -- the source backbone frozen (params and BN statistics,
  ``optimizer.freeze='pretrained'``), only the new 4-way head (``init.exclude='^head/'``) trains;
- ``mode=finetune``: the whole net trains from the source weights, the backbone at 1/10 of the
  head's learning rate (``optimizer.lr_multipliers=('^head/=1', '.*=0.1')``).

  python launch.py --config=experiments/transfer/cifar10_animals_to_vehicles.py:stage=source
  python launch.py --config=experiments/transfer/cifar10_animals_to_vehicles.py:mode=features
  python launch.py --config=experiments/transfer/cifar10_animals_to_vehicles.py --sweep   # all 3 modes

``source=`` names the stage-1 workdir (default runs/transfer_source, the default --workdir of
stage 1 is runs/cifar10_animals_to_vehicles_stage=source: pass --workdir=runs/transfer_source, as
the README does). Any torchvision .pth or .msgpack works as a source too (``init.torchvision``).
"""

from experiments.paths import CIFAR10_FOLDER, REPO
from research.config import base_config, parse_arg, with_model
from research.experiments.sweep import chain

ANIMALS = ('bird', 'cat', 'deer', 'dog', 'frog', 'horse')
VEHICLES = ('airplane', 'automobile', 'ship', 'truck')
ARGS = {
    'stage': 'target',
    'mode': 'finetune',
    'source': str(REPO / 'runs' / 'transfer_source'),
    'source_epochs': 3,
    'epochs': 6,
    'fraction': 20,
    'model': 'resnet20',
    'path': CIFAR10_FOLDER,
}
MODES = ('scratch', 'features', 'finetune')


def _mode(mode: str, source: str) -> dict:
    if mode not in MODES:
        raise ValueError(f'unknown mode {mode!r}; expected one of {MODES}')
    if mode == 'scratch':
        return {
            'init.checkpoint': '',
            'init.exclude': '',
            'optimizer.freeze': '',
            'optimizer.lr_multipliers': (),
        }
    common = {'init.checkpoint': source, 'init.exclude': '^head/'}
    if mode == 'features':
        return {**common, 'optimizer.freeze': 'pretrained', 'optimizer.lr_multipliers': ()}
    return {**common, 'optimizer.freeze': '', 'optimizer.lr_multipliers': ('^head/=1', '.*=0.1')}


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    c = base_config()
    with_model(c, args['model'])
    c.data.name = 'image_folder'
    c.data.path = args['path']
    c.data.augment.crop_padding = 4
    c.data.augment.flip = True
    c.optimizer.name = 'momentum'
    c.optimizer.lr = 0.1
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = 'cosine'
    c.train.batch_size = 128
    c.train.eval_batch_size = 500
    c.train.log_every_steps = 20
    c.train.eval_every = '1 epochs'
    c.train.checkpoint_every = '1 epochs'
    if args['stage'] == 'source':
        c.data.classes = ANIMALS
        c.train.duration = f'{args["source_epochs"]} epochs'
    elif args['stage'] == 'target':
        c.data.classes = VEHICLES
        c.data.train_split = f'train[:{args["fraction"]}%]'
        c.train.duration = f'{args["epochs"]} epochs'
        for k, v in _mode(args['mode'], args['source']).items():
            section, key = k.split('.')
            c[section][key] = v
    else:
        raise ValueError(f"unknown stage {args['stage']!r}; expected 'source' or 'target'")
    return c


def get_sweep(arg=None):
    args = parse_arg(arg, ARGS)
    if args['stage'] != 'target':
        return [{}]
    return chain(*[[_mode(m, args['source'])] for m in MODES])
