"""``slimkit measure``: a task's baseline, trained (or loaded) and measured like a run's first step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimkit.measure.config import MeasureConfig
from slimkit.measure.latency import torch_threads
from slimkit.measure.model import measure_model, resolve_device
from slimkit.recipes.runner import build_baseline
from slimkit.recipes.schema import load_recipe


def measure_task(task: Any, cfg: MeasureConfig | None = None, *, weights: str | Path | None = None,
                 train: dict[str, Any] | None = None, seed: int = 0, progress: bool = False,
                 report=None) -> dict[str, Any]:
    """``task`` is a name or a ``task:`` mapping; ``train`` overrides the baseline's training."""
    spec: dict[str, Any] = {"task": task, "seed": seed, "measure": (cfg or MeasureConfig()).to_json_dict()}
    if weights is not None:
        spec["baseline"] = {"weights": str(weights)}
    elif train:
        spec["baseline"] = {"train": train}
    recipe = load_recipe(spec)
    from slimkit.tasks.base import build_task

    built = build_task(recipe.task)
    with torch_threads(recipe.measure.threads):
        model = build_baseline(built, recipe, resolve_device(recipe.measure.device), progress, None,
                          report or (lambda text: None))
        return measure_model(model, built, recipe.measure)
