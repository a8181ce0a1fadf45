"""Neural style transfer by image optimisation (Gatys et al. 2016), offline.

Commands:
  python launch.py --config=experiments/generative/style_transfer.py
  python launch.py --config=experiments/generative/style_transfer.py:content=photo.jpg,style=painting.jpg,size=256
  python launch.py --config=experiments/generative/style_transfer.py:weights=vgg19.pth    # torchvision VGG-19 weights
  python launch.py --config=experiments/generative/style_transfer.py --config.style.style_weight=1e4

Writes result.png, panel.png (content | style | result), metrics.jsonl and summary.json to the workdir
(default runs/style_transfer[_<arg>]). Default images: scikit-learn's bundled photos
(sklearn:china.jpg as content, sklearn:flower.jpg as style). Loss network: VGG-19 (torchvision
layout), content conv4_2, style conv1_1 ... conv5_1, all after ReLU, as in the paper. Without
``weights`` the VGG is randomly initialised (no ImageNet weights offline): random-feature
style transfer (Ustyuzhaninov et al. 2016); a torchvision ``vgg19.pth``, a Flax ``.msgpack`` or a
workdir of this codebase (e.g. a VGG trained on the CIFAR-10 folder) can be given instead.
"""

from research.config import base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(
        arg,
        {
            'content': 'sklearn:china.jpg',
            'style': 'sklearn:flower.jpg',
            'size': 128,
            'steps': 200,
            'model': 'vgg19',
            'weights': '',
            'init': 'content',
        },
    )
    c = base_config()
    c.task = 'style_transfer'
    s = c.style
    s.model, s.weights = args['model'], args['weights']
    s.content, s.style = args['content'], args['style']
    s.image_size, s.init = args['size'], args['init']
    # The pixels are the parameters: Adam, lr 0.02 on pixels in [0, 1], one image per "batch".
    c.optimizer.name, c.optimizer.lr = 'adam', 0.02
    c.schedule.name = 'constant'
    c.train.batch_size = 1
    c.train.duration = f'{args["steps"]} steps'
    c.train.log_every_steps = 20
    c.train.eval_every = ''  # the panel of the result at the end
    c.train.checkpoint_every = ''
    return c
