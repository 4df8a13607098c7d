"""``slimkit measure`` and ``slimkit backends``: a task's baseline, trained (or loaded) and
measured like a run's first step; or measured on every backend."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch.nn as nn

from slimkit.measure.config import MeasureConfig
from slimkit.measure.latency import torch_threads
from slimkit.measure.model import measure_config, measure_model, resolve_device
from slimkit.recipes.runner import build_baseline
from slimkit.recipes.schema import Recipe, validate_recipe


def baseline_for(task: Any, cfg: MeasureConfig | dict[str, Any] | None = None, *, weights: str | Path | None = None,
                 train: dict[str, Any] | None = None, seed: int = 0, progress: bool = False,
                 report=None, source: str = "options") -> tuple[Any, Recipe, nn.Module]:
    """(built task, recipe, baseline model): ``task`` is a name or a ``task:`` mapping; ``train``
    overrides the baseline's training; ``weights`` replaces it; ``cfg`` may be a ``measure:`` mapping. Errors name ``source`` (the caller's
    options, not a recipe file)."""
    spec: dict[str, Any] = {"task": task, "seed": seed, "measure": measure_config(cfg).to_json_dict()}
    if weights is not None:
        spec["baseline"] = {"weights": str(weights)}
    elif train:
        spec["baseline"] = {"train": train}
    recipe = validate_recipe(spec, source)
    from slimkit.tasks.base import build_task

    built = build_task(recipe.task)
    with torch_threads(recipe.measure.threads):
        model = build_baseline(built, recipe, resolve_device(recipe.measure.device), progress, None,
                               report or (lambda text: None))
    return built, recipe, model


def measure_task(task: Any, cfg: MeasureConfig | dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Every metric of the task's baseline (see ``baseline_for`` for the arguments)."""
    built, recipe, model = baseline_for(task, cfg, **kwargs)
    with torch_threads(recipe.measure.threads):
        return measure_model(model, built, recipe.measure)


def compare_backends(task: Any, cfg: MeasureConfig | dict[str, Any] | None = None, *, precisions: Sequence[str] = ("fp32",),
                     backends: Sequence[str] | None = None, out: str | Path | None = None,
                     progress: bool = False, **kwargs: Any) -> list[dict[str, Any]]:
    """The task's baseline on every backend (or ``backends``) and precision, each in its own
    process: the rows of ``slimkit backends``. Artifacts are kept under ``out`` when given."""
    from slimkit.backends.measure import ModelSpec, all_candidates, measure_backends, write_table
    from slimkit.core.io import save_state_dict

    built, recipe, model = baseline_for(task, cfg, progress=progress, **kwargs)
    with tempfile.TemporaryDirectory(prefix="slimkit-backends-") as tmp:
        folder = Path(out) if out is not None else Path(tmp)
        weights = save_state_dict(folder / "baseline.safetensors", model.state_dict())
        spec = ModelSpec(recipe.task.to_json_dict(), str(weights.resolve()))
        device = "cuda" if resolve_device(recipe.measure.device).type == "cuda" else "cpu"
        runs = measure_backends(built, all_candidates(precisions, backends, device), recipe.measure, folder,
                                spec=spec, model=model, progress=progress)
    return write_table(runs)
