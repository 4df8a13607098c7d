"""Callbacks: hooks into the one loop for things that are not loss terms.

Per batch, in order: ``transform_batch`` (augmentation, mixup), then for each pass that
``forward_passes`` gives (one unless a callback asks for more, e.g. a supernet's sandwich rule):
``forward_context`` around the forward pass and loss, ``scale_loss`` before backward. Once per
optimizer step (every ``TrainConfig.accumulate`` batches): ``unscale_gradients_``,
``after_backward``, gradient clipping, the optimizer step, ``on_step_end``. Every hook is optional.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, ContextManager, Iterable

import torch
import torch.nn as nn


@dataclass
class FitState:
    """Mutable training state handed to callbacks."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    step: int = 0  # optimizer steps taken (one per `accumulate` batches)
    total_steps: int = 0  # optimizer steps planned for the whole fit
    batch: int = 0  # training batches seen
    seed: int = 0
    # CPU generator seeded with the fit's seed, for random batch transforms (deterministic runs)
    generator: torch.Generator = field(default_factory=torch.Generator)
    stepped: bool = True  # whether the last optimizer step ran (False: a callback skipped it)
    logs: dict[str, Any] = field(default_factory=dict)


Rows = tuple[tuple[torch.Tensor, ...], torch.Tensor, dict[str, torch.Tensor]]


class Callback:
    def on_fit_start(self, state: FitState) -> None: ...

    def transform_batch(self, state: FitState, inputs: tuple[torch.Tensor, ...], targets: torch.Tensor,
                        extras: dict[str, torch.Tensor]) -> Rows:
        """The training batch the model and loss terms will see (augmentation, mixup); never
        called for validation. Random choices should draw from ``state.generator``."""
        return inputs, targets, extras

    def forward_passes(self, state: FitState) -> Iterable[ContextManager[Any]] | None:
        """One context per forward+backward pass of this batch (e.g. the largest, smallest and a
        random sub-net), their gradients summed into one optimizer step; None: one plain pass.
        At most one callback of a fit may return passes."""
        return None

    def forward_context(self, state: FitState) -> ContextManager[Any]:
        """A context wrapped around each forward pass and loss (e.g. autocast)."""
        return contextlib.nullcontext()

    def scale_loss(self, state: FitState, loss: torch.Tensor) -> torch.Tensor:
        """The loss to call backward on (e.g. multiplied by a loss scale)."""
        return loss

    def unscale_gradients_(self, state: FitState) -> bool:
        """Gradients are complete, before anything reads them: undo ``scale_loss`` on them.
        Return False to skip this optimizer step (e.g. non-finite gradients)."""
        return True

    def after_backward(self, state: FitState) -> None:
        """Gradients complete and unscaled, before clipping and the optimizer step (e.g. mask
        gradients); not called for a skipped step."""

    def on_step_end(self, state: FitState) -> None:
        """After the optimizer step (e.g. re-apply pruning masks)."""

    def on_epoch_end(self, state: FitState) -> None: ...

    def on_fit_end(self, state: FitState) -> None: ...
