"""The training core shared by pretraining, adaptation methods, meta-learning and baselines."""

from foundation.training.accelerator import make_accelerator, resolve_mixed_precision
from foundation.training.args import TrainingArgs
from foundation.training.checkpoint import CheckpointError
from foundation.training.core import DivergenceError, Trainer, TrainHooks, TrainState, model_inputs
from foundation.training.data import map_loader
from foundation.training.run_folder import RunFolderError

__all__ = [
    "CheckpointError",
    "DivergenceError",
    "RunFolderError",
    "TrainHooks",
    "TrainState",
    "Trainer",
    "TrainingArgs",
    "make_accelerator",
    "map_loader",
    "model_inputs",
    "resolve_mixed_precision",
]
