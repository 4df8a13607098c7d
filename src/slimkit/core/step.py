"""The step contract: ``fn(model, config, ctx) -> StepResult``, registered under its recipe name.

A step that changes the module tree (pruning channels, factorizing, swapping in quantized
modules) also records in ``StepResult.structure`` what it changed, as an instance of the
``Config`` type it registers, and a ``restore`` function that re-applies that change to a fresh
model, so a checkpoint of plain tensors (safetensors) can be loaded back on resume (the approach
NNCF's compression state takes). A structure read back from disk is validated against its type
before ``restore`` sees it, so restore functions read typed fields, never raw dicts.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch.nn as nn
from pydantic import ValidationError

from slimkit.core.config import Config, format_validation_error
from slimkit.core.errors import CheckpointError
from slimkit.core.registry import STEPS
from slimkit.core.target import Target


@dataclass
class StepResult:
    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)  # what the step did, as the step reports it
    structure: Config | None = None  # an instance of the step's registered structure type; given to ``restore``
    # Set by a step that moves the model to another runtime (``deploy``): this step and every later
    # one are measured there. ``measured``: that target's measurement of this model, when the step
    # already took it (a ``BackendRun`` as a dict, artifact paths relative to the step's folder).
    target: Target | None = None
    measured: dict[str, Any] | None = None


Restore = Callable[[nn.Module, Any], nn.Module]


@dataclass(frozen=True)
class Step:
    fn: Callable[..., StepResult]
    restore: Restore | None = None
    structure: type[Config] | None = None  # what the step records of a structural edit (typed, validated)

    def record(self, name: str, structure: Config | None) -> dict[str, Any] | None:
        """The structure a step returned, as JSON for the run state (checked against its type)."""
        if structure is None:
            return None
        if self.structure is None or not isinstance(structure, self.structure):
            expected = self.structure.__name__ if self.structure else "no structure"
            raise TypeError(f"step {name!r} returned a {type(structure).__name__} structure; it registered {expected}")
        return structure.to_json_dict()

    def parse(self, name: str, data: Any) -> Config:
        """A recorded structure read back from disk: validated, or a CheckpointError naming the field."""
        if self.structure is None or self.restore is None:
            raise CheckpointError(f"step {name!r} recorded a structure but has no restore function")
        if not isinstance(data, dict):
            raise CheckpointError(f"{name} step's recorded structure: expected a mapping, got {type(data).__name__}")
        try:
            return self.structure.model_validate(data)
        except ValidationError as err:
            raise CheckpointError(format_validation_error(err, f"{name} step's recorded structure")) from None


def register_step(name: str, *, config: type, restore: Restore | None = None, structure: type[Config] | None = None):
    """Decorator for a step function ``fn(model, cfg, ctx) -> StepResult``. A step that changes the
    module tree names the ``structure`` type it records and the ``restore(model, structure)`` that
    re-applies it to a fresh model."""
    if (restore is None) != (structure is None):
        raise TypeError(f"step {name!r}: restore and structure come together")

    def decorate(fn: Callable[..., StepResult]) -> Callable[..., StepResult]:
        STEPS.register(name, config=config, summary=(fn.__doc__ or "").strip())(Step(fn, restore, structure))
        return fn

    return decorate


@contextlib.contextmanager
def restoring(step: str, model: nn.Module, names=()) -> Iterator[None]:
    """Around a restore: each recorded layer name must exist in ``model``, and a ValueError from
    re-applying the edit (a layer of the wrong kind or size) becomes a CheckpointError naming the step."""
    for name in names:
        recorded_module(model, name, step)
    try:
        yield
    except ValueError as err:
        raise CheckpointError(f"{step} step's recorded structure does not fit this model: {err}") from None


def recorded_module(model: nn.Module, name: str, step: str) -> nn.Module:
    """The submodule a recorded structure names, or a CheckpointError saying the model lacks it."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise CheckpointError(f"{step} step's recorded structure names layer {name!r}, which this model "
                              "does not have (a checkpoint of another model?)") from None


def restore_step(technique: str, model: nn.Module, structure: Any) -> nn.Module:
    """Re-apply one step's recorded structural edit (JSON, as the run state holds it) to ``model``."""
    step = STEPS.get(technique)
    return step.restore(model, step.parse(technique, structure))


def rebuild_model(build_model: Callable[[], nn.Module], structures: list[tuple[str, dict[str, Any]]],
                  weights: str | None) -> nn.Module:
    """A model as a run left it: a fresh model, each step's structural edit re-applied in order
    (through that step's ``restore``), then the saved tensors loaded strictly."""
    from slimkit.core.io import load_into_, load_state_dict

    model = build_model()
    for technique, structure in structures:
        if structure is None:
            continue
        model = restore_step(technique, model, structure)
    if weights is not None:
        load_into_(model, load_state_dict(weights), str(weights))
    return model.eval()
