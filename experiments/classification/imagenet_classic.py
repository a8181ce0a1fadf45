"""ImageNet classics with their papers' recipes: AlexNet, VGG, GoogLeNet, Inception v3/v4, SqueezeNet.

Recipes (``model=`` picks one; the family decides the recipe):

- AlexNet (Krizhevsky et al. 2012, Sec. 5): SGD momentum 0.9, weight decay 5e-4, batch 128,
  lr 0.01 divided by 10 "when the validation error stopped improving" (3 times in ~90 epochs).
  Approximated by fixed steps at epochs 30, 60, 80 of 90 (no plateau detection here).
- VGG (Simonyan & Zisserman 2015, Sec. 3.1): the same but batch 256, dropout 0.5, lr decreased
  3 times, stopped after 74 epochs: steps at epochs 30, 50, 65 of 74 (placement approximated).
  The paper initialised the deeper nets from config A; here every net starts from scratch
  (He init; torchvision's _bn nets train that way too).
- GoogLeNet (Szegedy et al. 2015, Sec. 6): SGD momentum 0.9, lr decreased by 4% every 8 epochs
  (step schedule, factor 0.96 at every 8th epoch). The paper gives neither base lr, weight decay,
  batch nor length: lr 0.01 and weight decay 2e-4 as the BVLC Caffe reproduction's solver, batch
  256, 120 epochs (assumptions). Auxiliary heads off: ``research.train`` only applies the loss to
  the main logits, so they would not be trained (the paper weights them by 0.3).
- Inception v3 (Szegedy et al. 2016, Sec. 8) and v4 (Szegedy et al. 2017, Sec. 4): RMSProp with
  decay 0.9 and epsilon 1.0, lr 0.045 decayed by 0.94 every 2 epochs, gradient clipping at 2.0,
  label smoothing 0.1 (v3, Sec. 7), 299 px. ``research.config`` has no RMSProp: approximated by
  Adam with b1=0.9 (the momentum 0.9 of TF's RMSProp), b2=0.9 (the decay), eps=1.0 (Adam adds
  eps outside the square root and bias-corrects; with eps=1 both behave like momentum SGD for
  small gradients); batch 256 instead of 50 replicas x 32, 100 epochs (assumption); the v3 aux
  head is off (see GoogLeNet).
- SqueezeNet (Iandola et al. 2016; the authors' released Caffe solver): SGD momentum 0.9, lr
  0.04 decayed linearly to 0, weight decay 2e-4, batch 512, 170k iterations (~68 epochs).

Data: TFDS 'imagenet2012' (train / validation) by default, ``folder=<path>`` for an
ImageNet-style class-folder tree (``train/<class>/`` + ``val/<class>/``) or a tar of one (stored as
the JPEG files' bytes). Input pipeline: torchvision's reference recipe, the one its AlexNet / VGG /
GoogLeNet / Inception v3 / SqueezeNet weights were trained with -- the random-resized crop of the
full-size image (Szegedy et al. 2015, Sec. 6; ``data.augment.random_resized_crop``) to ``size``
(224; 299 for Inception) + horizontal flip, evaluation on the shorter side resized to
``size x 256 / 224`` (256; 342 for Inception, as torchvision's Inception v3 weights) and the center
crop (``data.eval_resize``), ImageNet's mean/std (``data.normalize='imagenet'``). The papers'
own augmentations differ -- AlexNet's 224 crops of a 256 x 256 image with PCA lighting noise, VGG's
scale jittering and multi-scale dense testing, multi-crop testing for all -- so expect errors
near torchvision's published single-crop ones (e.g. AlexNet 43.4%, VGG-16-BN 26.6%, GoogLeNet
30.2%, Inception v3 22.7% top-1 error) rather than the papers' multi-crop figures.

Arguments (comma-separated after the colon): model=alexnet|alexnet_paper|vgg11|vgg11_bn|vgg13|
vgg13_bn|vgg16|vgg16_bn|vgg16_c|vgg19|vgg19_bn|vgg11_lrn|googlenet|googlenet_paper|inception_v3|
inception_v4|squeezenet1_0|squeezenet1_1 (default alexnet), size (0 = the family's), folder,
quick (a CPU smoke run of the same pipeline: the offline CIFAR-10 folder, random-resized crops
upsampled to 75 px -- the smallest input Inception v3/v4 accept -- eval resize 86 / crop 75, 10
classes, the first 5,000 training images, batch 32, ``epochs`` epochs with the recipe's schedule
shape compressed to them; it checks that the model trains end to end, not ImageNet accuracy),
epochs (for quick, default 1), workers (``data.num_workers``, decoding processes; default 0), remat
(``model.remat``: VGG's conv stages, GoogLeNet's / Inception's modules and SqueezeNet's fire modules
under ``nn.remat``, less activation memory for about one more forward pass; AlexNet has no such knob;
docs/models-guide.md).

  python launch.py --config=experiments/classification/imagenet_classic.py:model=squeezenet1_1,quick
  python launch.py --config=experiments/classification/imagenet_classic.py:model=vgg16_bn
  python launch.py --config=experiments/classification/imagenet_classic.py:model=inception_v3,folder=/data/imagenet
"""

from experiments.paths import CIFAR10_FOLDER
from research.config import base_config, parse_arg, with_model

ARGS = {
    'model': 'alexnet',
    'size': 0,
    'folder': '',
    'quick': False,
    'epochs': 1,
    'workers': 0,
    'remat': False,
    'path': CIFAR10_FOLDER,
}

MODELS = {
    'alexnet': 'alexnet',
    'alexnet_paper': 'alexnet',
    'googlenet': 'googlenet',
    'googlenet_paper': 'googlenet',
    'inception_v3': 'inception',
    'inception_v4': 'inception',
    'squeezenet1_0': 'squeezenet',
    'squeezenet1_1': 'squeezenet',
    **{f'vgg{d}{s}': 'vgg' for d in (11, 13, 16, 19) for s in ('', '_bn')},
    'vgg16_c': 'vgg',
    'vgg11_lrn': 'vgg',
}


def _recipe(family: str) -> dict:
    """(optimizer, schedule, train) settings of each paper; epochs as numbers."""
    if family in ('alexnet', 'vgg'):
        vgg = family == 'vgg'
        return dict(
            opt=dict(name='sgd', lr=0.01, momentum=0.9, weight_decay=5e-4),
            sched=dict(name='step', decay_factor=0.1),
            steps=(30, 50, 65) if vgg else (30, 60, 80),
            epochs=74 if vgg else 90,
            batch=256 if vgg else 128,
        )
    if family == 'googlenet':
        return dict(
            opt=dict(name='sgd', lr=0.01, momentum=0.9, weight_decay=2e-4),
            sched=dict(name='step', decay_factor=0.96),
            steps=tuple(range(8, 120, 8)),
            epochs=120,
            batch=256,
        )
    if family == 'inception':
        return dict(
            opt=dict(name='adam', lr=0.045, b1=0.9, b2=0.9, eps=1.0, grad_clip_norm=2.0),
            sched=dict(name='step', decay_factor=0.94),
            steps=tuple(range(2, 100, 2)),
            epochs=100,
            batch=256,
            label_smoothing=0.1,
        )
    return dict(  # squeezenet
        opt=dict(name='sgd', lr=0.04, momentum=0.9, weight_decay=2e-4),
        sched=dict(name='linear', end_factor=0.0),
        steps=(),
        epochs=68,
        batch=512,
    )


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    name = args['model']
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}' for imagenet_classic (known: {', '.join(sorted(MODELS))})")
    family = MODELS[name]
    r = _recipe(family)
    c = base_config()
    model = {'aux_logits': False} if name in ('googlenet', 'googlenet_paper', 'inception_v3') else {}
    if args['remat']:  # AlexNet refuses `remat` by name
        model['remat'] = True
    for k, v in r['opt'].items():
        setattr(c.optimizer, k, v)
    for k, v in r['sched'].items():
        setattr(c.schedule, k, v)
    c.train.label_smoothing = r.get('label_smoothing', 0.0)
    size = args['size'] or (299 if family == 'inception' else 224)
    # torchvision's reference input pipeline (see the docstring).
    c.data.augment.random_resized_crop = True
    c.data.augment.flip = True
    c.data.normalize = 'imagenet'
    c.data.num_workers = args['workers']
    if args['quick']:
        with_model(c, name, num_classes=10, **model)
        c.data.name = 'image_folder'
        c.data.path = args['path']
        c.data.train_split = 'train[:5000]'
        c.data.image_size = args['size'] or 75
        c.data.eval_resize = round(c.data.image_size * 256 / 224)
        c.train.batch_size = 32
        c.optimizer.lr = r['opt']['lr'] * 32 / r['batch']
        e = args['epochs']
        c.train.duration = f'{e} epochs'
        # The recipe's boundaries, compressed from its length to e epochs.
        c.schedule.boundaries = tuple(f'{s * e / r["epochs"]:g} epochs' for s in r['steps'])
        c.train.log_every_steps = 10
    else:
        with_model(c, name, **model)
        if args['folder']:
            c.data.name = 'image_folder'
            c.data.path = args['folder']
            c.data.eval_split = 'val'
        else:
            c.data.name = 'imagenet2012'
            c.data.eval_split = 'validation'
        c.data.image_size = size
        c.data.eval_resize = round(size * 256 / 224)
        c.train.batch_size = r['batch']
        c.train.duration = f'{r["epochs"]} epochs'
        c.schedule.boundaries = tuple(f'{s} epochs' for s in r['steps'])
        c.train.log_every_steps = 100
    c.train.eval_every = '1 epochs'
    c.train.eval_batch_size = 250
    c.train.checkpoint_every = '1 epochs'
    return c
