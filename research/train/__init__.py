"""Training services: state, pure steps, optimizers, checkpoints, metrics and the one run loop.

A run is a task (``research/tasks/``) given to :class:`research.train.loop.Trainer` and
:func:`research.train.loop.run`; ``research.tasks.train_and_evaluate(config, workdir)`` does both.
"""

from research.train.checkpoint import CheckpointError, Checkpointer
from research.train.loop import NonFiniteLossError, Trainer, build_model, run
from research.train.optim import make_optimizer, make_schedule
from research.train.state import TrainState, create_train_state, eval_step, loss_step, train_step

__all__ = [
    'CheckpointError',
    'Checkpointer',
    'NonFiniteLossError',
    'Trainer',
    'build_model',
    'run',
    'make_optimizer',
    'make_schedule',
    'TrainState',
    'create_train_state',
    'eval_step',
    'loss_step',
    'train_step',
]
