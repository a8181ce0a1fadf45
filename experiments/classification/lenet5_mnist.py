"""LeNet-5 on MNIST (LeCun et al. 1998, Sec. III: 0.95% test error, 0.8% with distortions).

Commands:
  python launch.py --config=experiments/classification/lenet5_mnist.py            # TFDS 'mnist' (needs network once)
  python launch.py --config=experiments/classification/lenet5_mnist.py:folder     # $RESEARCH_DATA_DIR/mnist10k-png.tgz (docs/data.md)
  python launch.py --config=experiments/classification/lenet5_mnist.py:folder,variant=faithful,epochs=20

28x28 digits are zero-padded to 32x32 inside the model, as in the paper. The
paper trains 20 passes over 60,000 images; the MNIST-10k folder has 8,004
training images, so expect roughly 1.5-2.5% test error there, not 0.95%.
"""

from experiments.paths import MNIST10K_FOLDER
from research.config import base_config, parse_arg, with_model

MODELS = {'modern': 'lenet5_modern', 'faithful': 'lenet5'}


def get_config(arg=None):
    args = parse_arg(arg, {'folder': False, 'variant': 'modern', 'epochs': 20, 'path': MNIST10K_FOLDER})
    if args['variant'] not in MODELS:
        raise ValueError(f"unknown variant '{args['variant']}' (known: {', '.join(MODELS)})")
    c = base_config()
    with_model(c, MODELS[args['variant']])
    if args['folder']:
        c.data.name = 'image_folder'
        c.data.path = args['path']
    else:
        c.data.name = 'mnist'
    c.optimizer.name = 'adam'
    c.optimizer.lr = 2e-3
    c.schedule.name = 'cosine'
    c.train.duration = f'{args["epochs"]} epochs'
    c.train.batch_size = 64
    c.train.eval_batch_size = 500
    c.train.log_every_steps = 100
    c.train.eval_every = '5 epochs'
    c.train.checkpoint_every = '5 epochs'
    return c
