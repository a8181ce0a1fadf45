"""DeepLabv3 (Chen et al. 2017; torchvision's ResNet-50 layout) on ``mnist_seg`` (64x64, 11 classes).

Commands:
  python launch.py --config=experiments/segmentation/deeplabv3_mnist.py          # GPU job
  python launch.py --config=experiments/segmentation/deeplabv3_mnist.py:quick    # 1 block per stage

Dilated ResNet-50 backbone (output stride 8), ASPP, auxiliary FCN head on layer3 whose loss is
added with weight ``seg.aux_weight`` (0.4, as torchvision's reference script), bilinear
upsampling to the input. Even ``quick`` (``layers=(1, 1, 1, 1)``, output stride 16) keeps the
full widths (26.5M params): a GPU job, not run on this CPU. Args: ``quick``, ``plus`` (DeepLabv3+),
``epochs``, ``path``.
"""

from experiments.paths import MNIST10K_FOLDER
from research.config import base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, {"quick": False, "plus": False, "epochs": 0, "path": MNIST10K_FOLDER})
    quick = args["quick"]
    c = base_config()
    c.task = "segmentation"
    c.data.name = "mnist_seg"
    c.data.path = args["path"]
    c.data.augment.crop_padding = 4
    c.seg.num_train = 2000 if quick else 8000
    c.seg.num_test = 500 if quick else 2000
    c.seg.aux_weight = 0.4
    c.model.name = "deeplabv3plus_resnet50" if args["plus"] else "deeplabv3_resnet50"
    if quick:
        c.model.layers = (1, 1, 1, 1)
        c.model.output_stride = 16
    c.optimizer.name = "momentum"
    c.optimizer.lr = 0.01
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "linear"  # torchvision uses poly(0.9); linear decay to 0 is close
    c.train.duration = f"{args['epochs'] or (3 if quick else 30)} epochs"
    c.train.batch_size = 16
    c.train.eval_batch_size = 100
    c.train.log_every_steps = 20
    c.train.eval_every = "1 epochs"
    c.train.checkpoint_every = "1 epochs"
    return c
