"""ImageNet ResNets / ResNeXts / Wide ResNets / SE-ResNets (research.models.resnet): the standard recipe.

The recipe (He et al. 2016, "Deep Residual Learning for Image Recognition", Sec. 3.4; Goyal et
al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour"; torchvision's reference
``references/classification``, which trained ``ResNet50_Weights.IMAGENET1K_V1``):

- SGD, momentum 0.9, weight decay 1e-4 (on every parameter), batch 256 (``batch=``), learning rate
  0.1 x batch / 256 (Goyal et al.'s linear scaling; with a batch above 256 their gradual warm-up:
  5 epochs rising linearly from 0.1 to that rate), 90 epochs, divided by 10 at epochs 30, 60 and 80
  (``schedule=step``, Goyal et al.) or a cosine decay to 0 (``schedule=cosine``);
- train: the Inception-style random-resized crop (Szegedy et al. 2015, "Going Deeper with
  Convolutions", Sec. 6, as torchvision's ``RandomResizedCrop``: 8%-100% of the area, aspect ratio
  3/4-4/3) of the image decoded at full resolution, resized to 224 px, and a horizontal flip
  (``data.augment.random_resized_crop``, ``data.augment.flip``);
- eval: the shorter side resized to 256 with the antialiased bilinear filter, the center 224 px
  crop (``data.eval_resize=256``; 1-crop), ImageNet's mean/std (``data.normalize='imagenet'``);
- ``zero_init``: the last BatchNorm's scale of each residual block starts at 0 (Goyal et al. 2017).

Expected (ImageNet validation, 1-crop 224, 50,000 images): ResNet-50 **76.1% top-1** (92.9% top-5;
torchvision's IMAGENET1K_V1 weights, trained with this recipe (its steps at 30 and 60): 76.13 / 92.86;
He et al.'s Table 3, v1 strides, 10-crop: 77.15% top-1); ResNet-18 69.8%, ResNet-34 73.3%,
ResNet-101 77.4%, ResNet-152 78.3%, ResNeXt-50 32x4d 77.6%, Wide ResNet-50-2 78.5% (torchvision's
V1 weights). torchvision's V2 weights (80.9% for ResNet-50) add a longer recipe on top: 600 epochs,
cosine, label smoothing 0.1, mixup 0.2, CutMix 1.0, random erasing, TrivialAugment, EMA, eval
resize 232: the knobs this package has for those are ``train.label_smoothing``,
``data.augment.mixup`` / ``cutmix`` (applied in the train step), ``data.augment.randaugment`` /
``autoaugment`` and ``data.eval_resize`` (docs/imagenet.md).

Arguments (comma-separated after the colon):
  model=<registry name> (default resnet50; e.g. resnet18, resnext50_32x4d, se_resnet50,
    wide_resnet50_2, resnet50_v1 for the paper's stride placement),
  zero_init, size=224 (the crop; eval resize = size x 256 / 224), batch=256, schedule=step|cosine,
  remat (``model.remat``: each residual block under ``nn.remat``, activation checkpointing: the
    backward pass recomputes a block's activations from its input, so a step keeps about one block's
    activations instead of all of them, for about one more forward pass per step (~30% more
    compute); same parameters, values and checkpoints (docs/models-guide.md). For a batch or image
    size that does not fit the accelerator's memory; ``--config.model.remat=True`` does the same),
  workers=0 (``data.num_workers``: decoding processes; one core makes ~110 224-px crops/s from
    ImageNet-size JPEGs here (benchmarks/RESULTS.md), so 1,000 img/s on a GPU needs ~9),
  folder=<path> (an ImageNet-style ``train/<class>/*.JPEG`` + ``val/<class>/*.JPEG`` tree or a tar
    of one, instead of TFDS 'imagenet2012' with its train/validation splits; stored as the JPEG
    files' bytes, decoded per batch),
  quick (a CPU smoke run of the same pipeline: the offline CIFAR-10 folder, random-resized crops
    upsampled to 64 px, eval resize 73 / crop 64, batch 64, 2 epochs on the first 5,000 training
    images, with the step schedule scaled to it; it checks that the ImageNet layout trains end to
    end, not ImageNet accuracy), epochs (for quick).

  python launch.py --config=experiments/classification/resnet_imagenet.py:model=resnet18,quick --dry_run
  python launch.py --config=experiments/classification/resnet_imagenet.py:model=resnet50,workers=12
  python launch.py --config=experiments/classification/resnet_imagenet.py:model=resnext50_32x4d,folder=/data/imagenet
  python launch.py --config=experiments/classification/resnet_imagenet.py:model=resnet152,batch=512,remat
"""

from experiments.paths import CIFAR10_FOLDER
from research.config import base_config, parse_arg, with_model

ARGS = {
    'model': 'resnet50',
    'zero_init': False,
    'remat': False,
    'size': 224,
    'batch': 256,
    'schedule': 'step',
    'workers': 0,
    'folder': '',
    'quick': False,
    'epochs': 2,
    'path': CIFAR10_FOLDER,
}


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    if args['schedule'] not in ('step', 'cosine'):
        raise ValueError(f'schedule={args["schedule"]!r}: expected step or cosine')
    c = base_config()
    model = {'zero_init_residual': True} if args['zero_init'] else {}
    if args['remat']:  # a model without the knob refuses it by name (research/tasks/checks.py)
        model['remat'] = True
    with_model(c, args['model'], **model)
    # The recipe's input pipeline (docs/imagenet.md).
    c.data.augment.random_resized_crop = True
    c.data.augment.flip = True
    c.data.normalize = 'imagenet'
    c.data.num_workers = args['workers']
    if args['quick']:
        c.data.name = 'image_folder'
        c.data.path = args['path']
        c.data.train_split = 'train[:5000]'
        c.data.image_size = 64
        c.data.eval_resize = 73  # 64 / 0.875, as 224 / 256
        batch, e = 64, args['epochs']
        c.train.duration = f'{e} epochs'
        boundaries = (f'{e / 3:g} epochs', f'{2 * e / 3:g} epochs')
        c.train.log_every_steps = 10
    else:
        if args['folder']:
            c.data.name = 'image_folder'
            c.data.path = args['folder']
            c.data.eval_split = 'val'
        else:
            c.data.name = 'imagenet2012'
            c.data.eval_split = 'validation'
        c.data.image_size = args['size']
        c.data.eval_resize = round(args['size'] * 256 / 224)
        batch = args['batch']
        c.train.duration = '90 epochs'
        boundaries = ('30 epochs', '60 epochs', '80 epochs')
        if batch > 256:  # Goyal et al.'s gradual warm-up for large batches
            c.schedule.warmup = '5 epochs'
            c.schedule.warmup_init_factor = 256 / batch  # from 0.1 to 0.1 x batch / 256
        c.train.log_every_steps = 100
    c.train.batch_size = batch
    c.optimizer.name = 'sgd'
    c.optimizer.lr = 0.1 * batch / 256
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    if args['schedule'] == 'step':
        c.schedule.name = 'step'
        c.schedule.boundaries = boundaries
        c.schedule.decay_factor = 0.1
    else:
        c.schedule.name = 'cosine'
        c.schedule.end_factor = 0.0
    c.train.eval_every = '1 epochs'
    c.train.eval_batch_size = 250
    c.train.checkpoint_every = '1 epochs'
    return c
