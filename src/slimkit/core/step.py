"""The step contract: ``fn(model, config, ctx) -> StepResult``, registered under its recipe name.

A step that changes the module tree (pruning channels, factorizing, swapping in quantized
modules) also records in ``StepResult.structure`` what it changed, and registers a ``restore``
function that re-applies that change to a fresh model, so a checkpoint of plain tensors
(safetensors) can be loaded back on resume (the approach NNCF's compression state takes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

from slimkit.core.registry import STEPS


@dataclass
class StepResult:
    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)  # what the step did, as the step reports it
    structure: dict[str, Any] | None = None  # JSON-able; given to ``restore`` on resume


@dataclass(frozen=True)
class Step:
    fn: Callable[..., StepResult]
    restore: Callable[[nn.Module, dict[str, Any]], nn.Module] | None = None


def register_step(name: str, *, config: type, restore: Callable[[nn.Module, dict[str, Any]], nn.Module] | None = None):
    """Decorator for a step function ``fn(model, cfg, ctx) -> StepResult``."""

    def decorate(fn: Callable[..., StepResult]) -> Callable[..., StepResult]:
        STEPS.register(name, config=config, summary=(fn.__doc__ or "").strip())(Step(fn, restore))
        return fn

    return decorate
