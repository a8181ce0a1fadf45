"""DCGAN on the offline MNIST-10k folder (Radford et al. 2016; 28x28 digits in [-1, 1]).

Commands:
  python launch.py --config=experiments/generative/dcgan_mnist.py:quick   # a few minutes on 2 CPU cores
  python launch.py --config=experiments/generative/dcgan_mnist.py         # 20 epochs, width 64

The generator maps z (100-d) through transposed convs 1x1 -> 7x7 -> 14x14 -> 28x28 (tanh); the
discriminator mirrors it with strided convs. Adam lr 2e-4, beta1 0.5, batch 64 (Sec. 4). Each
epoch writes ``<workdir>/samples/epoch_NNN.png`` (64 samples of fixed z) and scores 1,000 samples
with a LeNet-5 trained here on the same folder (trained first into ``gan.classifier_workdir``,
about a minute): exp(E KL(p(y|x) || p(y))) (1..10) and the mean max-probability.
"""

from experiments.paths import MNIST10K_FOLDER
from research.config import base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, {'quick': False, 'epochs': 0, 'width': 0, 'path': MNIST10K_FOLDER})
    c = base_config()
    c.task = 'gan'
    c.data.name = 'image_folder'
    c.data.path = args['path']
    c.data.normalize = False  # images in [0, 1], mapped to [-1, 1] by the GAN step
    c.gan.base_size = 7
    width = args['width'] or (32 if args['quick'] else 64)
    c.gan.g_width = c.gan.d_width = width
    epochs = args['epochs'] or (5 if args['quick'] else 20)
    c.train.duration = f'{epochs} epochs'
    c.train.batch_size = 64
    c.train.log_every_steps = 25
    c.train.checkpoint_every = '1 epochs'
    return c
