"""The ``train`` step: (re)train or fine-tune the current model with the one loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn as nn

from slimkit.core.step import StepResult, register_step
from slimkit.train.config import TrainConfig

if TYPE_CHECKING:
    from slimkit.tasks.context import Context


@register_step("train", config=TrainConfig)
def train(model: nn.Module, cfg: TrainConfig, ctx: Context) -> StepResult:
    """Train or fine-tune the model on the task's training split with the task's loss."""
    result = ctx.train(model, cfg, description="train")
    return StepResult(model, info=result.summary())
