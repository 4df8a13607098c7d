"""Run a recipe: train or load the baseline, apply each step, measure everything the same way,
checkpoint after each step, and resume an interrupted run from its last finished step.

Output folder::

    recipe.yaml          the resolved recipe (every default filled in)
    run-state.json       fingerprint of the recipe and the finished steps (for resume)
    steps/NN-name/model.safetensors   each step's model
    steps/00-baseline/initial.safetensors   the baseline's freshly initialised weights (for rewinding)
    results.json         the results contract (see docs/ARCHITECTURE.md)
    report.md, report.html, pareto.png
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from slimkit.tasks.context import Context
from slimkit.core.errors import CheckpointError, SlimkitError
from slimkit.core.io import atomic_write_json, atomic_write_text, load_into_, load_state_dict, read_json, save_state_dict
from slimkit.core.step import rebuild_model
from slimkit.core.registry import STEPS
from slimkit.measure.latency import torch_threads
from slimkit.measure.model import measure_model, resolve_device
from slimkit.recipes.report import write_report
from slimkit.recipes.schema import Recipe, dump_yaml, load_recipe
from slimkit.tasks.base import Task, build_task

STATE_FILE = "run-state.json"
INITIAL_FILE = "steps/00-baseline/initial.safetensors"
STATE_VERSION = 1
Reporter = Callable[[str], None]


@dataclass
class RunResult:
    out_dir: Path
    results: dict[str, Any]
    resumed_steps: int  # how many finished steps were taken from an earlier run


def run_recipe(recipe: str | Path | dict[str, Any] | Recipe, out: str | Path, *, overwrite: bool = False,
               progress: bool = False, train_fn: Callable[..., Any] | None = None,
               report: Reporter | None = None) -> RunResult:
    """Run ``recipe`` into ``out``; rerunning the same command continues where it stopped."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    say = report or (lambda text: None)
    out = Path(out)
    state = _prepare_out_dir(out, recipe, overwrite)
    task = build_task(recipe.task)
    device = resolve_device(recipe.measure.device)
    records: list[dict[str, Any]] = state["steps"]
    resumed = len(records)
    with torch_threads(recipe.measure.threads):
        if records:
            say(f"resuming: {resumed} finished step(s) found in {out}")
            model = _restore(task, records, out)
        else:
            atomic_write_text(out / "recipe.yaml", dump_yaml(recipe))
            started = time.perf_counter()
            model = build_baseline(task, recipe, device, progress, train_fn, say, initial=out / INITIAL_FILE)
            baseline_seconds = time.perf_counter() - started
            _finish(out, recipe, task, model, state, index=0, name="baseline", technique="baseline",
                    params=recipe.to_dict()["baseline"], info={}, structure=None, seconds=baseline_seconds,
                    deployment=None)
            say(_line(records[-1]))
        initial = _initial_weights(task, recipe, out)
        for step in recipe.steps[len(records) - 1:]:
            say(f"step {step.index}/{len(recipe.steps)}: {step.name}")
            ctx = Context(task=task, device=device, seed=recipe.seed + step.index, out_dir=out / _step_dir(step.index, step.name),
                          progress=progress, measure=recipe.measure, task_config=recipe.task.to_json_dict(),
                          structures=_structures(records), baseline_weights=str(out / records[0]["artifact"]),
                          initial_weights=initial,
                          **({"train_fn": train_fn} if train_fn else {}))
            started = time.perf_counter()
            torch.manual_seed(ctx.seed)
            result = STEPS.get(step.technique).fn(model, step.config, ctx)
            model = result.model
            _finish(out, recipe, task, model, state, index=step.index, name=step.name, technique=step.technique,
                    params=step.config.to_json_dict(), info=result.info, structure=result.structure,
                    seconds=time.perf_counter() - started, deployment=result.deployment or _deployment(records))
            say(_line(records[-1]))
    return RunResult(out, _results(recipe, task, records), resumed)


def _prepare_out_dir(out: Path, recipe: Recipe, overwrite: bool) -> dict[str, Any]:
    state_path = out / STATE_FILE
    fresh = {"version": STATE_VERSION, "fingerprint": recipe.fingerprint(), "steps": []}
    if out.exists() and not out.is_dir():
        raise SlimkitError(f"--out {out}: exists and is not a folder")
    if state_path.exists():
        state = read_json(state_path)
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION or not isinstance(state.get("steps"), list):
            raise CheckpointError(f"{state_path}: not a run state this slimkit understands")
        for i, rec in enumerate(state["steps"]):
            _check_record(rec, out, f"{state_path}: steps[{i}]")
        if overwrite:
            shutil.rmtree(out)
        elif state.get("fingerprint") != recipe.fingerprint():
            raise CheckpointError(f"{out} holds a run of a different recipe; pass --overwrite to replace it "
                                  "or choose another --out")
        else:
            return state
    elif out.exists() and any(out.iterdir()):
        raise SlimkitError(f"--out {out}: folder is not empty and holds no slimkit run; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    return fresh


def _check_record(rec: Any, out: Path, where: str) -> None:
    """A finished-step record read back from disk: the fields resume uses, an artifact inside ``out``."""
    if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in ("name", "technique", "artifact")):
        raise CheckpointError(f"{where}: malformed step record")
    if not isinstance(rec.get("metrics"), dict):
        raise CheckpointError(f"{where}: step record without metrics")
    artifact = (out / rec["artifact"]).resolve()
    if not artifact.is_relative_to(out.resolve()):
        raise CheckpointError(f"{where}: artifact path {rec['artifact']!r} points outside the run folder")
    deployment = rec.get("deployment")
    if deployment is not None and not (isinstance(deployment, dict) and isinstance(deployment.get("backend"), str)
                                       and isinstance(deployment.get("precision"), str)):
        raise CheckpointError(f"{where}: malformed deployment {deployment!r}")


def build_baseline(task: Task, recipe: Recipe, device: torch.device, progress: bool,
                   train_fn: Callable[..., Any] | None, say: Reporter, *, initial: Path | None = None) -> nn.Module:
    """The baseline model, loaded or trained; its freshly initialised weights are saved to
    ``initial`` first when given (lottery-ticket rewinding needs them)."""
    torch.manual_seed(recipe.seed)
    model = task.build_model()
    if initial is not None:
        _save_initial(initial, model, task)
    if recipe.baseline_weights is not None:
        say(f"baseline: loading {recipe.baseline_weights}")
        load_into_(model, load_state_dict(recipe.baseline_weights), str(recipe.baseline_weights))
    elif recipe.baseline_train is not None:
        say(f"baseline: training {task.name} for {recipe.baseline_train.epochs} epochs")
        ctx = Context(task=task, device=device, seed=recipe.seed, progress=progress,
                      **({"train_fn": train_fn} if train_fn else {}))
        ctx.train(model, recipe.baseline_train, description="baseline")
    return model.eval()


def _initial_weights(task: Task, recipe: Recipe, out: Path) -> str:
    """The baseline's initial weights file; re-created from the seed if a resumed run lacks it."""
    path = out / INITIAL_FILE
    if not path.is_file():
        torch.manual_seed(recipe.seed)
        _save_initial(path, task.build_model(), task)
    return str(path)


def _save_initial(path: Path, model: nn.Module, task: Task) -> None:
    save_state_dict(path, model.state_dict(), metadata={"slimkit_step": "initial", "task": task.name})


def _restore(task: Task, records: list[dict[str, Any]], out: Path) -> nn.Module:
    """Rebuild the model of the last finished step: fresh model, structural edits, tensors."""
    return rebuild_model(task.build_model, _structures(records), str(out / records[-1]["artifact"]))


def _structures(records: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(rec["technique"], rec.get("structure")) for rec in records]


def _step_dir(index: int, name: str) -> str:
    return f"steps/{index:02d}-{name.replace('#', '-')}"


def _deployment(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The backend the last deploy step chose (None: eager PyTorch)."""
    for rec in reversed(records):
        if rec.get("deployment") is not None:
            return {k: rec["deployment"][k] for k in ("backend", "precision")}
    return None


def _finish(out: Path, recipe: Recipe, task: Task, model: nn.Module, state: dict[str, Any], *, index: int, name: str,
            technique: str, params: Any, info: dict[str, Any], structure: Any, seconds: float,
            deployment: dict[str, Any] | None) -> dict[str, Any]:
    """Checkpoint the step's model, measure it, record it in the run state, rewrite the outputs."""
    artifact = f"{_step_dir(index, name)}/model.safetensors"
    save_state_dict(out / artifact, model.state_dict(), metadata={"slimkit_step": name, "task": task.name})
    metrics = measure_model(model, task, recipe.measure, artifact=out / artifact)
    if deployment is not None:
        structures = [*_structures(state["steps"]), (technique, structure)]
        metrics = _deployed_metrics(out, recipe, task, model, metrics, deployment, structures, artifact)
        deployment = {k: deployment[k] for k in ("backend", "precision")}
    record = {"name": name, "technique": technique, "params": params, "info": _jsonable(info), "metrics": metrics,
              "seconds": round(seconds, 3), "artifact": artifact, "structure": structure, "deployment": deployment,
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    state["steps"].append(record)
    atomic_write_json(out / STATE_FILE, state)
    results = _results(recipe, task, state["steps"])
    atomic_write_json(out / "results.json", results)
    write_report(results, out)
    return record


def _deployed_metrics(out: Path, recipe: Recipe, task: Task, model: nn.Module, metrics: dict[str, Any],
                      deployment: dict[str, Any], structures: list[tuple[str, Any]], checkpoint: str) -> dict[str, Any]:
    """Replace latency, quality and size by their values on the deployed backend (measured in its
    own process); eager's figures stay under ``metrics["eager"]``."""
    from slimkit.backends.measure import ModelSpec, eager_reference, measure_backend

    step_dir = Path(checkpoint).parent
    run = deployment.get("run")
    if run is None:
        workdir = out / step_dir / f"deploy-{deployment['backend']}-{deployment['precision']}"
        spec = ModelSpec(recipe.task.to_json_dict(), str((out / checkpoint).resolve()), structures)
        measured = measure_backend(task, deployment["backend"], deployment["precision"], recipe.measure, workdir,
                                   spec=spec, reference=eager_reference(model, task, recipe.measure))
        if not measured.ok:
            raise SlimkitError(f"measuring on the deployed backend {deployment['backend']}/{deployment['precision']} "
                               f"failed: {measured.error}")
        run = {**measured.to_dict(), "artifact": [str((workdir / a).relative_to(out)) for a in measured.artifact]}
    else:
        run = {**run, "artifact": [str(step_dir / a) for a in run["artifact"]]}
    eager = {k: metrics[k] for k in ("quality", "size_bytes", "latency_ms_b1", "latency_ms_bN", "artifact")}
    return {**metrics, "quality": run["quality"], "quality_metrics": run["quality_metrics"],
            "size_bytes": run["artifact_bytes"], "latency_ms_b1": run["latency_b1"]["median_ms"],
            "latency_ms_bN": run["latency_bN"]["median_ms"], "latency_b1": run["latency_b1"],
            "latency_bN": run["latency_bN"], "backend": run["backend"], "precision": run["precision"],
            "artifact": " + ".join(run["artifact"]), "max_rel_diff_vs_eager": run["max_rel_diff"],
            "max_abs_diff_vs_eager": run["max_abs_diff"], "eager": eager}


def _results(recipe: Recipe, task: Task, records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "task": task.name,
        "task_info": _jsonable(task.info),
        "quality_metric": task.quality_metric,
        "recipe": recipe.to_dict(),
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "threads": recipe.measure.threads},
        "steps": [{k: v for k, v in r.items() if k != "structure"} for r in records],
    }


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _line(rec: dict[str, Any]) -> str:
    m = rec["metrics"]
    return (f"{rec['name']}: quality {m['quality']:.4f}  size {m['size_bytes'] / 1024:.1f} KiB  "
            f"MACs {m['macs']:,}  b1 {m['latency_ms_b1']:.3f} ms")
