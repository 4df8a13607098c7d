"""The one training loop, its config, loss terms and callbacks."""

from slimkit.train.callbacks import Callback, FitState
from slimkit.train.config import TrainConfig
from slimkit.train.loop import FitResult, fit
from slimkit.train.objectives import Batch, LossTerm, TaskLoss

__all__ = ["Batch", "Callback", "FitResult", "FitState", "LossTerm", "TaskLoss", "TrainConfig", "fit"]
