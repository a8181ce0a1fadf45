"""LeNet-5 on scikit-learn's bundled digits (1,797 8x8 images, no download): the README's main job.

Command:
  python launch.py --config=experiments/classification/lenet5_digits.py
  python launch.py --config=experiments/classification/lenet5_digits.py:variant=faithful

Digits are resized 8x8 -> 32x32 (LeNet-5's input size) and lightly augmented
(rotation, scale). Expected: >= 97% test top-1 on the 360-image test split in
well under 3 minutes on 2 CPU cores (measured: modern 98.6% in 28 s; faithful
97.5% in 50 s). LeNet-5 is LeCun et al. 1998
("Gradient-based learning applied to document recognition", Fig. 2); its MNIST
figure (0.95% error, Sec. III) is reproduced by lenet5_mnist.py, not here.
"""

from research.config import base_config, parse_arg, with_model

MODELS = {'modern': 'lenet5_modern', 'faithful': 'lenet5'}
# The faithful net (scaled tanh, RBF output with logits near -600) needs a smaller step and more epochs.
RECIPES = {'modern': dict(lr=3e-3, epochs=30), 'faithful': dict(lr=3e-4, epochs=60)}


def get_config(arg=None):
    args = parse_arg(arg, {'variant': 'modern', 'epochs': 0})
    if args['variant'] not in MODELS:
        raise ValueError(f"unknown variant '{args['variant']}' (known: {', '.join(MODELS)})")
    c = base_config()
    with_model(c, MODELS[args['variant']])
    c.data.name = 'digits'
    c.data.image_size = 32
    c.data.augment.rotation = 10.0
    c.data.augment.scale = 0.1
    c.optimizer.name = 'adam'
    recipe = RECIPES[args['variant']]
    c.optimizer.lr = recipe['lr']
    c.schedule.name = 'cosine'
    c.train.duration = f'{args["epochs"] or recipe["epochs"]} epochs'
    c.train.batch_size = 32
    c.train.eval_batch_size = 128
    c.train.log_every_steps = 44
    c.train.eval_every = '5 epochs'
    c.train.checkpoint_every = '10 epochs'
    return c
