"""Callbacks: hooks into the one loop for things that are not loss terms.

Mask updates after each optimizer step, mixed precision (``forward_context``), schedules and
checkpointing plug in here. Every hook is optional.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, ContextManager

import torch
import torch.nn as nn


@dataclass
class FitState:
    """Mutable training state handed to callbacks."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    logs: dict[str, Any] = field(default_factory=dict)


class Callback:
    def on_fit_start(self, state: FitState) -> None: ...

    def forward_context(self, state: FitState) -> ContextManager[Any]:
        """A context wrapped around each forward pass and loss (e.g. autocast)."""
        return contextlib.nullcontext()

    def after_backward(self, state: FitState) -> None:
        """After gradients exist, before the optimizer step (e.g. mask gradients)."""

    def on_step_end(self, state: FitState) -> None:
        """After the optimizer step (e.g. re-apply pruning masks)."""

    def on_epoch_end(self, state: FitState) -> None: ...

    def on_fit_end(self, state: FitState) -> None: ...
