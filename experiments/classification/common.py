"""The CIFAR recipe the CIFAR classification configs share (resnet_cifar, resnext_cifar, wrn_cifar,
densenet_cifar, vgg_cifar; preact_resnet_cifar and the ablations build on those).

Each config states only what its paper changes: optimiser, lr, weight decay, lr decay factor,
batch size and the full-length schedule. The rest is common: CIFAR-10 from TFDS or the offline
JPEG folder, 4-pixel pad + random 32x32 crop + horizontal flip, momentum 0.9, a step schedule,
evaluation batches of 500, and the ``quick`` mode (a CPU check: ``epochs`` epochs with the lr
steps at ``quick_at`` of them, logs every 20 steps, evaluation and checkpoint every epoch).
"""

from experiments.paths import CIFAR10_FOLDER


def cifar_args(epochs=5):
    """The config arguments every CIFAR config accepts: folder (the offline CIFAR-10 folder at
    ``path`` instead of TFDS), quick (a CPU check of ``epochs`` epochs), epochs, path."""
    return {'folder': False, 'quick': False, 'epochs': epochs, 'path': CIFAR10_FOLDER}


def cifar_data(c, args, *, cifar100=False, augment=True):
    """``args["folder"]``: the offline CIFAR-10 folder at ``args["path"]``; else TFDS CIFAR-10
    (CIFAR-100 with ``cifar100``). ``augment``: 4-pixel pad + 32x32 crop + flip."""
    if args['folder']:
        c.data.name = 'image_folder'
        c.data.path = args['path']
    else:
        c.data.name = 'cifar100' if cifar100 else 'cifar10'
    if augment:
        c.data.augment.crop_padding = 4
        c.data.augment.flip = True
    return c


def cifar_recipe(
    c,
    args,
    *,
    weight_decay,
    duration,
    boundaries,
    optimizer='sgd',
    lr=0.1,
    decay_factor=0.1,
    batch_size=128,
    eval_every='1 epochs',
    checkpoint_every='1 epochs',
    quick_at=(0.5, 0.75),
    epoch_format='g',
    cifar100=False,
    augment=True,
):
    """Sets data (``cifar_data``), optimiser and step schedule of ``c`` from ``args`` (the keys
    folder, path, quick, epochs) and returns it.

    Full length: ``duration`` and the lr steps at ``boundaries``, logs every 100 steps, evaluates
    and checkpoints at ``eval_every`` / ``checkpoint_every``. ``optimizer`` 'sgd' (momentum 0.9)
    or 'nesterov'. ``epoch_format``: how the quick boundaries are spelled ('g': '2 epochs', '':
    '2.0 epochs'); configs keep the spelling their runs were started with, since a resumed run
    compares its config.json.
    """
    cifar_data(c, args, cifar100=cifar100, augment=augment)
    c.optimizer.name = optimizer
    c.optimizer.lr = lr
    c.optimizer.momentum = 0.9
    if optimizer == 'nesterov':
        c.optimizer.nesterov = True
    c.optimizer.weight_decay = weight_decay
    c.schedule.name = 'step'
    c.schedule.decay_factor = decay_factor
    c.train.batch_size = batch_size
    c.train.eval_batch_size = 500
    if args['quick']:
        e = args['epochs']
        c.train.duration = f'{e} epochs'
        c.schedule.boundaries = tuple(f'{format(f * e, epoch_format)} epochs' for f in quick_at)
        c.train.log_every_steps = 20
        c.train.eval_every = '1 epochs'
        c.train.checkpoint_every = '1 epochs'
    else:
        c.train.duration = duration
        c.schedule.boundaries = tuple(boundaries)
        c.train.log_every_steps = 100
        c.train.eval_every = eval_every
        c.train.checkpoint_every = checkpoint_every
    return c


def first_images(c, train_images=0, test_images=0):
    """Trains / evaluates on the first N images of each split (TFDS sub-splits; 0 = all)."""
    if train_images:
        c.data.train_split = f'train[:{train_images}]'
    if test_images:
        c.data.eval_split = f'test[:{test_images}]'
    return c
