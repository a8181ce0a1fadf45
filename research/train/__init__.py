"""Training: state, pure steps, optimizers, checkpoints, metrics and the run loop."""

from research.train.checkpoint import CheckpointError, Checkpointer
from research.train.loop import NonFiniteLossError, Trainer, build_model, train_and_evaluate
from research.train.optim import make_optimizer, make_schedule
from research.train.state import TrainState, create_train_state, eval_step, train_step

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "NonFiniteLossError",
    "Trainer",
    "build_model",
    "train_and_evaluate",
    "make_optimizer",
    "make_schedule",
    "TrainState",
    "create_train_state",
    "eval_step",
    "train_step",
]
