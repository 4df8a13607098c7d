"""slimkit: make neural networks smaller, faster and cheaper, with measured, composable recipes.

``import slimkit`` is light: torch and slimkit's core only. Tasks, techniques and backends are
registered on first use, and optional runtimes are imported inside their backend files.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "build_task", "list_steps", "list_tasks", "load_recipe", "measure_model",
           "measure_task", "run_recipe"]


def run_recipe(recipe: Any, out: Any, **kwargs: Any):
    """Run a recipe (path, mapping or Recipe) into folder ``out``; see ``slimkit run``."""
    from slimkit.recipes.runner import run_recipe as _run

    return _run(recipe, out, **kwargs)


def load_recipe(source: Any):
    """Parse and fully validate a recipe; see ``slimkit validate``."""
    from slimkit.recipes.schema import load_recipe as _load

    return _load(source)


def build_task(spec: Any):
    """A registered task by name or ``task:`` mapping."""
    from slimkit.tasks.base import build_task as _build

    return _build(spec)


def measure_model(model: Any, task: Any, cfg: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Every metric of ``model`` on ``task`` (a Task, a task name or a task mapping)'s test split;
    see ``slimkit measure``."""
    from slimkit.measure.model import measure_model as _measure

    if isinstance(task, (str, dict)):
        task = build_task(task)
    return _measure(model, task, cfg, **kwargs)


def measure_task(task: Any, cfg: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Train the task's baseline (or load ``weights=``) and measure it, as ``slimkit measure``."""
    from slimkit.recipes.measure_task import measure_task as _measure_task

    return _measure_task(task, cfg, **kwargs)


def list_tasks() -> list[str]:
    from slimkit.core.registry import TASKS

    return TASKS.names()


def list_steps() -> list[str]:
    from slimkit.core.registry import STEPS

    return STEPS.names()
