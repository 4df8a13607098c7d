"""What a step may use besides the model: the task and its data, device, seed, output folder,
and the training function (slimkit's loop unless the user passes their own)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn as nn

from slimkit.core.target import Target

if TYPE_CHECKING:
    from slimkit.data.base import DataSplits
    from slimkit.measure.config import MeasureConfig
    from slimkit.tasks.base import Task
    from slimkit.train.callbacks import Callback
    from slimkit.train.config import TrainConfig
    from slimkit.train.loop import FitResult
    from slimkit.train.objectives import LossTerm


def _default_train_fn():
    from slimkit.train.loop import fit

    return fit


@dataclass
class Context:
    task: "Task"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    out_dir: Path | None = None
    progress: bool = False
    train_fn: Callable[..., "FitResult"] = field(default_factory=_default_train_fn)
    measure: "MeasureConfig | None" = None  # the run's measurement settings (threads, batch N, repeats)
    task_config: dict[str, Any] | None = None  # the task as the recipe wrote it (to rebuild the model elsewhere)
    structures: list[tuple[str, Any]] = field(default_factory=list)  # structural edits of earlier steps
    baseline_weights: str | None = None  # the run's baseline checkpoint (safetensors), for before/after comparisons
    target: Target = field(default_factory=Target)  # where the model runs and is measured now (deploy moves it)
    initial_weights: str | None = None  # the baseline's weights before training or loading (safetensors), for rewinding

    @property
    def data(self) -> "DataSplits":
        return self.task.data

    def validate(self, model: nn.Module) -> float:
        """The task's quality on the validation split (never the test split)."""
        from slimkit.measure.quality import predict

        outputs = predict(model.eval(), self.data.val, 256, self.device)
        return self.task.evaluate(outputs, self.data.val.targets)["quality"]

    def train(self, model: nn.Module, cfg: "TrainConfig", *, loss_terms: Sequence["LossTerm"] = (),
              callbacks: Sequence["Callback"] = (), task_loss_weight: float = 1.0,
              description: str = "train", data: "DataSplits | None" = None) -> "FitResult":
        """Train with the task's loss (weighted) plus ``loss_terms``, validating every epoch; on
        ``data`` instead of the task's splits if given (e.g. with teacher-labelled inputs added).
        Loss terms the model declares itself (``model.loss_terms()``, e.g. ACT's ponder cost) are
        added unless a term of the same name is given."""
        from slimkit.train.objectives import TaskLoss, declared_loss_terms

        terms = [TaskLoss(self.task.loss, weight=task_loss_weight), *loss_terms] if task_loss_weight else list(loss_terms)
        terms += declared_loss_terms(model, terms)
        return self.train_fn(model, data if data is not None else self.data, cfg, loss_terms=terms, validate=self.validate,
                             callbacks=callbacks, device=self.device, seed=self.seed,
                             progress=self.progress, description=description)

    def preflight(self, model: nn.Module, train_batch: int) -> None:
        """Before a long training starts: a dry forward at the larger of the training batch and
        ``measure.batch_n`` and the labels' range, so a batch that cannot fit in memory or labels
        outside the model's classes are one-line errors before any epoch runs."""
        from slimkit.tasks.preflight import preflight

        batch_n = self.measure.batch_n if self.measure is not None else 0
        batch, what = (batch_n, "measure.batch_n") if batch_n > train_batch else (train_batch, "train batch_size")
        preflight(model, self.data, self.task.loss, batch, self.device, what)
