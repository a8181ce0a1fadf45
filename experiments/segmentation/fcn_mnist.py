"""FCN-32s/16s/8s (Long et al. 2015) on ``mnist_seg`` (MNIST-10k digits on 64x64 canvases, 11 classes).

Commands:
  python launch.py --config=experiments/segmentation/fcn_mnist.py:quick            # FCN-8s, narrow VGG
  python launch.py --config=experiments/segmentation/fcn_mnist.py:stride=32,quick  # FCN-32s
  python launch.py --config=experiments/segmentation/fcn_mnist.py                  # full-width VGG-16 (GPU)

The VGG-16 trunk pads conv1_1 by 100 (the paper's Caffe layout), so a 64x64 canvas runs at 264x264
in the first block: slow on CPU even when narrow. ``quick``: ``base_features`` 16 (VGG widths / 4),
``fc_features`` 256, no dropout, 2,000 canvases, 3 epochs of batch 16. Learned upsampling starts
bilinear and the skip scores start at zero (Sec. 3.3, 4.2); Adam instead of the paper's
fixed-lr SGD with momentum 0.99. Args: ``quick``, ``stride`` (8/16/32), ``epochs``, ``width``,
``path``.
"""

from experiments.paths import MNIST10K_FOLDER
from research.config import base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, {"quick": False, "stride": 8, "epochs": 0, "width": 0, "path": MNIST10K_FOLDER})
    quick = args["quick"]
    c = base_config()
    c.task = "segmentation"
    c.data.name = "mnist_seg"
    c.data.path = args["path"]
    c.data.augment.crop_padding = 4
    c.seg.num_train = 2000 if quick else 8000
    c.seg.num_test = 500 if quick else 2000
    c.model.name = f"fcn{args['stride']}s"
    c.model.base_features = args["width"] or (16 if quick else 64)
    c.model.fc_features = 256 if quick else 4096
    c.model.dropout_rate = 0.0 if quick else 0.5
    c.optimizer.name = "adam"
    c.optimizer.lr = 1e-3 if quick else 1e-4
    c.train.duration = f"{args['epochs'] or (3 if quick else 30)} epochs"
    c.train.batch_size = 16 if quick else 32
    c.train.eval_batch_size = 100
    c.train.log_every_steps = 20
    c.train.eval_every = "1 epochs"
    c.train.checkpoint_every = "1 epochs"
    return c
