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
from slimkit.core.target import Target


@dataclass
class StepResult:
    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)  # what the step did, as the step reports it
    structure: dict[str, Any] | None = None  # JSON-able; given to ``restore`` on resume
    # Set by a step that moves the model to another runtime (``deploy``): this step and every later
    # one are measured there. ``measured``: that target's measurement of this model, when the step
    # already took it (a ``BackendRun`` as a dict, artifact paths relative to the step's folder).
    target: Target | None = None
    measured: dict[str, Any] | None = None


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


def rebuild_model(build_model: Callable[[], nn.Module], structures: list[tuple[str, dict[str, Any]]],
                  weights: str | None) -> nn.Module:
    """A model as a run left it: a fresh model, each step's structural edit re-applied in order
    (through that step's ``restore``), then the saved tensors loaded strictly."""
    from slimkit.core.errors import CheckpointError
    from slimkit.core.io import load_into_, load_state_dict

    model = build_model()
    for technique, structure in structures:
        if structure is None:
            continue
        restore = STEPS.get(technique).restore
        if restore is None:
            raise CheckpointError(f"step {technique!r} changed the model's structure but has no restore function")
        model = restore(model, structure)
    if weights is not None:
        load_into_(model, load_state_dict(weights), str(weights))
    return model.eval()
