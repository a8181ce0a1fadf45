"""Feed-forward style transfer (Johnson et al. 2016, instance norm as Ulyanov et al. 2016),
trained on the offline CIFAR-10 folder upsampled to 64x64.

Commands:
  python launch.py --config=experiments/generative/fast_style.py:quick     # minutes on 2 CPU cores
  python launch.py --config=experiments/generative/fast_style.py:style=painting.jpg,steps=4000,size=256  # GPU-sized

Trains a TransformerNet (9x9 conv, two stride-2 convs, residual blocks, two x2 upsamplings,
9x9 conv, instance norm) to minimise the Gatys losses on a VGG-16 loss network (content conv2_2,
style conv1_2, conv2_2, conv3_3, conv4_3 after ReLU: the paper's relu2_2 / relu1_2 ... relu4_3),
then stylises ``style.content`` in one forward pass: <workdir>/stylized.png, panel.png,
transformer.msgpack. Offline the VGG is randomly initialised unless ``weights=`` names a
torchvision vgg16.pth, a .msgpack or a workdir.
"""

from experiments.paths import CIFAR10_FOLDER
from research.config import base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(
        arg,
        {
            'quick': False,
            'style': 'sklearn:flower.jpg',
            'content': 'sklearn:china.jpg',
            'steps': 0,
            'size': 64,
            'model': 'vgg16',
            'weights': '',
            'path': CIFAR10_FOLDER,
        },
    )
    c = base_config()
    c.task = 'fast_style'
    c.data.name = 'image_folder'
    c.data.path = args['path']
    c.data.image_size = args['size']
    c.data.normalize = False
    s = c.style
    s.model, s.weights = args['model'], args['weights']
    s.style, s.content = args['style'], args['content']
    s.content_layers = ('conv2_2',)
    s.style_layers = ('conv1_2', 'conv2_2', 'conv3_3', 'conv4_3')
    s.image_size = 128  # the stylised content image after training
    s.style_weight = 1e4  # 1e5 (the image-optimisation default) washes the content out here
    s.transformer_width = 16 if args['quick'] else 32
    s.transformer_blocks = 3 if args['quick'] else 5
    c.optimizer.lr = 1e-3
    c.train.batch_size = 4
    c.train.duration = f'{args["steps"] or (200 if args["quick"] else 4000)} steps'
    c.train.log_every_steps = 20
    return c
