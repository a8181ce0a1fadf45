"""ImageNet ResNets / ResNeXts / Wide ResNets / SE-ResNets (research.models.resnet).

Paper recipe (He et al. 2015, Sec. 3.4; torchvision's reference recipe): SGD momentum 0.9,
weight decay 1e-4, batch 256, lr 0.1 divided by 10 every 30 epochs, 90 epochs; random crops of
a scale-augmented image + horizontal flip, 224 px. Here the pipeline resizes every image to
``size`` x ``size`` (224) and augments with a random zoom (``data.augment.scale`` 0.25), a random
crop after ``size / 8`` px of padding and flips: no Inception-style random-resized crop and no
10-crop testing, so expect top-1 errors 1-2 points above the published single-crop ones
(ResNet-50 v1.5 in torchvision: 23.9%; the paper's Table 3, v1, 10-crop: 22.85%).

Arguments (comma-separated after the colon):
  model=<registry name> (default resnet50; e.g. resnet18, resnext50_32x4d, se_resnet50,
    wide_resnet50_2, resnet50_v1 for the paper's stride placement),
  zero_init (zero-init the last BN of each block, Goyal et al. 2017), size=224,
  folder=<path> (an ImageNet-style ``train/<class>/*.JPEG`` + ``val/<class>/*.JPEG`` tree or a tar
    of one, instead of TFDS 'imagenet2012' with its train/validation splits),
  quick (a CPU smoke run: the offline CIFAR-10 folder upsampled to 64 px, batch 64, 2 epochs on
    the first 5,000 training images, with the step schedule scaled to it; it checks that the
    ImageNet layout trains end to end, not ImageNet accuracy), epochs (for quick).

  python launch.py --config=experiments/classification/resnet_imagenet.py:model=resnet18,quick --dry_run
  python launch.py --config=experiments/classification/resnet_imagenet.py:model=resnet50
  python launch.py --config=experiments/classification/resnet_imagenet.py:model=resnext50_32x4d,folder=/data/imagenet
"""

from experiments.paths import CIFAR10_FOLDER
from research.config import base_config, parse_arg, with_model

ARGS = {
    "model": "resnet50",
    "zero_init": False,
    "size": 224,
    "folder": "",
    "quick": False,
    "epochs": 2,
    "path": CIFAR10_FOLDER,
}


def get_config(arg=None):
    args = parse_arg(arg, ARGS)
    c = base_config()
    model = {"zero_init_residual": True} if args["zero_init"] else {}
    if args["quick"]:
        with_model(c, args["model"], **model)
        c.data.name = "image_folder"
        c.data.path = args["path"]
        c.data.train_split = "train[:5000]"
        c.data.image_size = 64
        c.data.augment.crop_padding = 8
        c.data.augment.flip = True
        c.train.batch_size = 64
        c.optimizer.lr = 0.1 * 64 / 256
        e = args["epochs"]
        c.train.duration = f"{e} epochs"
        c.schedule.boundaries = (f"{e / 3:g} epochs", f"{2 * e / 3:g} epochs")
        c.train.log_every_steps = 10
        c.train.eval_every = "1 epochs"
    else:
        with_model(c, args["model"], **model)
        if args["folder"]:
            c.data.name = "image_folder"
            c.data.path = args["folder"]
            c.data.eval_split = "val"
        else:
            c.data.name = "imagenet2012"
            c.data.eval_split = "validation"
        c.data.image_size = args["size"]
        c.data.augment.crop_padding = args["size"] // 8
        c.data.augment.scale = 0.25
        c.data.augment.flip = True
        c.train.batch_size = 256
        c.optimizer.lr = 0.1
        c.train.duration = "90 epochs"
        c.schedule.boundaries = ("30 epochs", "60 epochs", "80 epochs")
        c.train.log_every_steps = 100
        c.train.eval_every = "1 epochs"
    c.optimizer.name = "sgd"
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "step"
    c.schedule.decay_factor = 0.1
    c.train.eval_batch_size = 250
    c.train.checkpoint_every = "1 epochs"
    return c
