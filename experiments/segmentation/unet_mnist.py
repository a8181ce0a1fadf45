"""U-Net (Ronneberger et al. 2015) on ``mnist_seg``: MNIST-10k digits on 64x64 canvases, 11 classes.

Commands:
  python launch.py --config=experiments/segmentation/unet_mnist.py:quick   # a few minutes on 2 CPU cores
  python launch.py --config=experiments/segmentation/unet_mnist.py         # depth 4, width 32, 30 epochs

The dataset (8,000 train / 2,000 test canvases, 1-4 digits each, scale 0.6-1.4, later digits
occluding earlier ones; labels 0 = background, 1..10 = digits 0..9) is generated once into the TFDS
data dir from the folder's own train/test digits. Per-pixel cross-entropy (ignore label 255),
Adam, cosine schedule; random crop (pad 4, padded label pixels ignored) and no flip (digits are not
mirror-symmetric). Each evaluation writes mIoU to metrics.jsonl and ``viz/step_NNNNNN.png``.
Measured on 2 shared CPU cores: ``:quick`` test mIoU 19.26% (pixel acc 95.11%, 6:26);
``:quick,epochs=10`` 57.30% (pixel acc 97.91%, 12:24). The full config has not been run.
Args: ``quick`` (depth 3, width 16, 2,000 canvases, 4 epochs of batch 16, CE + 0.5 Dice),
``epochs``, ``width``, ``depth``, ``dice`` (Dice loss weight added to CE; default 0.5 quick, 0
full), ``path`` (the digit folder/tgz).
"""

from experiments.paths import MNIST10K_FOLDER
from research.config import base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(
        arg, {"quick": False, "epochs": 0, "width": 0, "depth": 0, "dice": -1.0, "path": MNIST10K_FOLDER}
    )
    quick = args["quick"]
    c = base_config()
    c.task = "segmentation"
    c.data.name = "mnist_seg"
    c.data.path = args["path"]
    c.data.augment.crop_padding = 4
    c.seg.canvas_size = 64
    c.seg.num_train = 2000 if quick else 8000
    c.seg.num_test = 500 if quick else 2000
    c.seg.dice_weight = args["dice"] if args["dice"] >= 0 else (0.5 if quick else 0.0)
    c.model.name = "unet"
    c.model.depth = args["depth"] or (3 if quick else 4)
    c.model.base_features = args["width"] or (16 if quick else 32)
    c.model.dropout_rate = 0.0 if quick else 0.5
    c.optimizer.name = "adam"
    c.optimizer.lr = 2e-3 if quick else 1e-3
    c.schedule.name = "cosine"
    c.train.duration = f"{args['epochs'] or (4 if quick else 30)} epochs"
    c.train.batch_size = 16 if quick else 32
    c.train.eval_batch_size = 100
    c.train.log_every_steps = 20
    c.train.eval_every = "1 epochs"
    c.train.checkpoint_every = "1 epochs"
    return c
