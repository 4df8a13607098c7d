"""Loss terms: the training objective is a weighted sum of terms, each seeing the whole batch.

Distillation, regularizers (L0, variational KL, group lasso) and the task's own loss are all
terms, so one loop trains every technique.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch
import torch.nn as nn


@dataclass
class Batch:
    """What a loss term may look at: the model, its inputs, targets and outputs for this batch,
    the split's per-row extras (e.g. a teacher's cached outputs) for these rows, and which of the
    step's forward passes this is (0 unless a callback runs several, see ``forward_passes``)."""

    model: nn.Module
    inputs: tuple[torch.Tensor, ...]
    targets: torch.Tensor
    outputs: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    pass_index: int = 0


class LossTerm(Protocol):
    """A weighted objective. A term with learned parts of its own (a distillation adapter) also
    has ``trainable_parameters() -> list[nn.Parameter]``, which ``fit`` adds to its optimizer."""

    name: str
    weight: float

    def __call__(self, batch: Batch) -> torch.Tensor: ...


@dataclass
class TaskLoss:
    """The task's own objective (cross-entropy for classifiers, cosine for encoders)."""

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    weight: float = 1.0
    name: str = "task"

    def __call__(self, batch: Batch) -> torch.Tensor:
        second = batch.extras.get("mix_targets")
        if second is not None:  # mixup / CutMix rows: w * loss(y_a) + (1 - w) * loss(y_b), as soft targets
            from slimkit.data.augment import mixed_soft_targets

            soft = mixed_soft_targets(batch.targets, second, batch.extras["mix_weight"], batch.outputs.shape[-1])
            return self.fn(batch.outputs, soft)
        return self.fn(batch.outputs, batch.targets)


def declared_loss_terms(model: nn.Module, given: Sequence[LossTerm] = ()) -> list[LossTerm]:
    """The loss terms a model declares as part of its own objective (``model.loss_terms()``, e.g.
    Adaptive Computation Time's ponder cost), except those named like a term in ``given``: a
    model that only trains well with its penalty gets it from every training, baseline included."""
    own = getattr(model, "loss_terms", None)
    if not callable(own):
        return []
    names = {t.name for t in given}
    return [t for t in own() if t.name not in names]
