"""Run a recipe: train or load the baseline, apply each step, measure everything the same way,
checkpoint after each step, and resume an interrupted run from its last finished step.

Output folder::

    recipe.yaml          the resolved recipe (every default filled in)
    run-state.json       fingerprint of the recipe and the finished steps (for resume)
    steps/NN-name/model.safetensors   each step's model
    steps/00-baseline/initial.safetensors   the baseline's freshly initialised weights (for rewinding)
    results.json         the results contract (see docs/ARCHITECTURE.md)
    report.md, report.html, pareto.png
    .slimkit.lock        held while a run writes (core/lock.py)

The run state is written before the baseline starts, so a run stopped at any point, the
baseline included, is resumed (or restarted) by the same command; ``--overwrite`` removes only
these files, never a user's own.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from pydantic import ValidationError

from slimkit.tasks.context import Context
from slimkit.core.errors import CheckpointError, SlimkitError
from slimkit.core.lock import LOCK_FILE, folder_lock
from slimkit.core.io import atomic_write_json, atomic_write_text, load_into_, load_state_dict, read_json, save_state_dict
from slimkit.core.step import rebuild_model
from slimkit.core.target import Target
from slimkit.core.config import format_validation_error
from slimkit.core.registry import STEPS
from slimkit.measure.latency import torch_threads
from slimkit.measure.model import resolve_device
from slimkit.recipes.report import write_report
from slimkit.recipes.schema import Recipe, dump_yaml, load_recipe
from slimkit.tasks.base import Task, build_task

STATE_FILE = "run-state.json"
INITIAL_FILE = "steps/00-baseline/initial.safetensors"
STATE_VERSION = 2
OWN_ENTRIES = ("recipe.yaml", STATE_FILE, "results.json", "report.md", "report.html", "pareto.png", "steps", LOCK_FILE)
_OWN_TMP = re.compile(r"\.(" + "|".join(re.escape(n) for n in OWN_ENTRIES) + r")\..*\.tmp")
Reporter = Callable[[str], None]


@dataclass
class RunResult:
    out_dir: Path
    results: dict[str, Any]
    resumed_steps: int  # how many finished steps were taken from an earlier run


def run_recipe(recipe: str | Path | dict[str, Any] | Recipe, out: str | Path, *, overwrite: bool = False,
               progress: bool = False, train_fn: Callable[..., Any] | None = None,
               report: Reporter | None = None) -> RunResult:
    """Run ``recipe`` into ``out``; rerunning the same command continues where it stopped.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank runs the recipe: steps that train do it
    data-parallel (``train.distributed``), every other step runs alike on each rank. Rank 0
    measures and writes ``out``; the other ranks work in a scratch copy of it (what an earlier run
    left there, so that all resume alike), skip measurement, and delete it at the end."""
    from slimkit.train import distributed

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    out = Path(out)
    if distributed.world_size() > 1:
        distributed.init_from_env(resolve_device(recipe.measure.device))
        if not distributed.is_main():
            return _run_scratch(recipe, out, overwrite, train_fn)
        distributed.barrier()  # the other ranks copied what ``out`` held before rank 0 writes to it
    _refuse_foreign_folder(out)
    with folder_lock(out):
        return _run_locked(recipe, out, overwrite, progress, train_fn, report or (lambda text: None))


def _run_scratch(recipe: Recipe, out: Path, overwrite: bool, train_fn: Callable[..., Any] | None) -> RunResult:
    """A torchrun rank other than 0: the recipe in a scratch copy of ``out`` (its results dropped)."""
    import tempfile

    from slimkit.train import distributed

    with tempfile.TemporaryDirectory(prefix=f"slimkit-rank{distributed.rank()}-") as tmp:
        scratch = Path(tmp) / "run"
        if out.is_dir() and (out / STATE_FILE).exists():
            shutil.copytree(out, scratch, ignore=shutil.ignore_patterns(LOCK_FILE))
        distributed.barrier()
        with folder_lock(scratch):
            return _run_locked(recipe, scratch, overwrite, False, train_fn, lambda text: None)


def _run_locked(recipe: Recipe, out: Path, overwrite: bool, progress: bool,
                train_fn: Callable[..., Any] | None, say: Reporter) -> RunResult:
    """``run_recipe`` once this process holds the folder's lock."""
    state = _prepare_out_dir(out, recipe, overwrite)
    task = build_task(recipe.task)
    device = resolve_device(recipe.measure.device)
    records: list[dict[str, Any]] = state["steps"]
    run = RunFolder(out, recipe, task, state)
    resumed = len(records)
    with torch_threads(recipe.measure.threads):
        if records:
            say(f"resuming: {resumed} finished step(s) found in {out}")
            model = _restore(task, records, out)
        else:
            started = time.perf_counter()
            model = build_baseline(task, recipe, device, progress, train_fn, say, initial=out / INITIAL_FILE)
            done = Done(index=0, name="baseline", technique="baseline", params=recipe.to_dict()["baseline"],
                        seconds=time.perf_counter() - started, target=_first_target(recipe))
            _finish(run, model, done)
            say(_line(records[-1]))
        initial = _initial_weights(task, recipe, out)
        for step in recipe.steps[len(records) - 1:]:
            say(f"step {step.index}/{len(recipe.steps)}: {step.name}")
            target = _current_target(records)
            ctx = Context(task=task, device=device, seed=recipe.seed + step.index, out_dir=out / _step_dir(step.index, step.name),
                          progress=progress, measure=recipe.measure, task_config=recipe.task.to_json_dict(),
                          structures=_structures(records), baseline_weights=str(out / records[0]["artifact"]),
                          initial_weights=initial, target=target,
                          **({"train_fn": train_fn} if train_fn else {}))
            started = time.perf_counter()
            torch.manual_seed(ctx.seed)
            result = STEPS.get(step.technique).fn(model, step.config, ctx)
            model = result.model
            _finish(run, model, Done(index=step.index, name=step.name, technique=step.technique,
                                     params=step.config.to_json_dict(), seconds=time.perf_counter() - started,
                                     target=result.target or target, info=result.info,
                                     structure=STEPS.get(step.technique).record(step.technique, result.structure),
                                     measured=result.measured))
            say(_line(records[-1]))
    from slimkit.core.distributed import is_main

    return RunResult(out, _results(recipe, task, records) if is_main() else {}, resumed)


def _refuse_foreign_folder(out: Path) -> None:
    """Refuse an ``--out`` that is a file, or a folder with files of its own and no slimkit run."""
    if out.exists() and not out.is_dir():
        raise SlimkitError(f"--out {out}: exists and is not a folder")
    foreign = _foreign_entries(out) if out.is_dir() and not (out / STATE_FILE).exists() else []
    if foreign:
        raise SlimkitError(f"--out {out}: folder is not empty and holds no slimkit run "
                           f"(found {', '.join(foreign[:3])}); choose another folder")


def _foreign_entries(out: Path) -> list[str]:
    """Names in ``out`` that slimkit did not write, sorted."""
    return sorted(p.name for p in out.iterdir() if p.name not in OWN_ENTRIES and not _OWN_TMP.fullmatch(p.name))


def _prepare_out_dir(out: Path, recipe: Recipe, overwrite: bool) -> dict[str, Any]:
    """The run state to continue: the one in ``out`` for the same recipe, else a fresh one
    (written, with the resolved recipe, before anything is trained)."""
    state_path = out / STATE_FILE
    if state_path.exists() and not overwrite:
        state = read_json(state_path)
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION or not isinstance(state.get("steps"), list):
            raise CheckpointError(f"{state_path}: not a run state this slimkit understands")
        for i, rec in enumerate(state["steps"]):
            _check_record(rec, out, f"{state_path}: steps[{i}]")
        if state.get("fingerprint") != recipe.fingerprint():
            raise CheckpointError(f"{out} holds a run of a different recipe; pass --overwrite to replace it "
                                  "or choose another --out")
        _remove_stale_temporaries(out)
        return state
    _remove_run_files(out)
    state = {"version": STATE_VERSION, "fingerprint": recipe.fingerprint(), "steps": []}
    atomic_write_text(out / "recipe.yaml", dump_yaml(recipe))
    atomic_write_json(state_path, state)
    return state


def _remove_stale_temporaries(out: Path) -> None:
    """Delete the temporary files of atomic writes a killed run left (``.NAME.RANDOM.tmp``): this
    process holds the folder's lock, so no writer is behind them. Only slimkit's own entries: the
    run files' temporaries at the top, any under ``steps/``."""
    stale = [p for p in out.iterdir() if _OWN_TMP.fullmatch(p.name) and p.is_file()]
    if (out / "steps").is_dir():
        stale += [p for p in (out / "steps").rglob(".*.tmp") if p.is_file() and not p.is_symlink()]
    for path in stale:
        path.unlink(missing_ok=True)


def _remove_run_files(out: Path) -> None:
    """Delete what slimkit wrote into ``out`` (but the lock this run holds); the user's files stay."""
    for path in out.iterdir():
        if path.name == LOCK_FILE or (path.name not in OWN_ENTRIES and not _OWN_TMP.fullmatch(path.name)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _check_record(rec: Any, out: Path, where: str) -> None:
    """A finished-step record read back from disk: the fields resume uses, an artifact inside ``out``."""
    if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in ("name", "technique", "artifact")):
        raise CheckpointError(f"{where}: malformed step record")
    if not isinstance(rec.get("metrics"), dict):
        raise CheckpointError(f"{where}: step record without metrics")
    artifact = (out / rec["artifact"]).resolve()
    if not artifact.is_relative_to(out.resolve()):
        raise CheckpointError(f"{where}: artifact path {rec['artifact']!r} points outside the run folder")
    try:
        Target.model_validate(rec.get("target"))
    except ValidationError as err:
        raise CheckpointError(format_validation_error(err, f"{where}: target")) from None


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
        epochs = recipe.baseline_train.epochs
        say(f"baseline: training {task.name} for {epochs} epoch{'' if epochs == 1 else 's'}")
        ctx = Context(task=task, device=device, seed=recipe.seed, progress=progress, measure=recipe.measure,
                      **({"train_fn": train_fn} if train_fn else {}))
        ctx.preflight(model, recipe.baseline_train.batch_size)
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


def _first_target(recipe: Recipe) -> Target:
    """Eager PyTorch, FP32, on the run's measurement device."""
    return Target(device=resolve_device(recipe.measure.device).type)


def _current_target(records: list[dict[str, Any]]) -> Target:
    """Where the last finished step ran (a deploy step moved it, or eager)."""
    return Target.model_validate(records[-1]["target"])


@dataclass
class RunFolder:
    """The run being written: its folder, recipe, task and run state."""

    out: Path
    recipe: Recipe
    task: Task
    state: dict[str, Any]


@dataclass
class Done:
    """A finished step (or the baseline), as the runner records it."""

    index: int
    name: str
    technique: str
    params: Any
    seconds: float
    target: Target
    info: dict[str, Any] = field(default_factory=dict)
    structure: dict[str, Any] | None = None  # the step's recorded structure, as JSON
    measured: dict[str, Any] | None = None  # the target's measurement, if the step took it


def _finish(run: RunFolder, model: nn.Module, done: Done) -> dict[str, Any]:
    """Checkpoint the step's model, measure it on its target, record it in the run state, rewrite
    the outputs."""
    from slimkit.backends.measure import ModelSpec, measure_on_target

    out, recipe, task = run.out, run.recipe, run.task
    folder = _step_dir(done.index, done.name)
    artifact = f"{folder}/model.safetensors"
    save_state_dict(out / artifact, model.state_dict(), metadata={"slimkit_step": done.name, "task": task.name})
    spec = ModelSpec(recipe.task.to_json_dict(), str((out / artifact).resolve()),
                     [*_structures(run.state["steps"]), (done.technique, done.structure)])
    from slimkit.core.distributed import is_main

    if not is_main():  # a torchrun rank other than 0: rank 0 measures and writes the results
        run.state["steps"].append({"name": done.name, "technique": done.technique, "params": done.params,
                                   "info": {}, "metrics": {}, "artifact": artifact, "structure": done.structure,
                                   "target": done.target.to_json_dict()})
        return run.state["steps"][-1]
    metrics = measure_on_target(model, task, recipe.measure, done.target, artifact=out / artifact, spec=spec,
                                workdir=out / folder, measured=done.measured)
    _relative_artifacts(metrics, out)
    record = {"name": done.name, "technique": done.technique, "params": done.params, "info": _jsonable(done.info),
              "metrics": metrics, "seconds": round(done.seconds, 3), "artifact": artifact,
              "structure": done.structure, "target": done.target.to_json_dict(),
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    run.state["steps"].append(record)
    atomic_write_json(out / STATE_FILE, run.state)
    results = _results(recipe, task, run.state["steps"])
    atomic_write_json(out / "results.json", results)
    write_report(results, out)
    return record


def _relative_artifacts(metrics: dict[str, Any], out: Path) -> None:
    """``metrics["artifact"]``: the files measured, as paths inside the run folder (" + "-joined)."""
    files = metrics.get("artifact")
    if isinstance(files, list):
        metrics["artifact"] = " + ".join(str(Path(f).resolve().relative_to(out.resolve())) for f in files)


def _results(recipe: Recipe, task: Task, records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "task": task.name,
        "task_info": _jsonable(task.info),
        "quality_metric": task.quality_metric,
        "recipe": recipe.to_dict(),
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "threads": recipe.measure.threads},
        "steps": [_public_record(r) for r in records],
    }


def _public_record(record: dict[str, Any]) -> dict[str, Any]:
    """A step as results.json shows it: no structure; ``deployment`` ({backend, precision}) when it
    was measured on a backend other than eager."""
    target = record["target"]
    deployment = None if target["backend"] == "eager" else {k: target[k] for k in ("backend", "precision")}
    return {**{k: v for k, v in record.items() if k != "structure"}, "deployment": deployment}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _line(rec: dict[str, Any]) -> str:
    m = rec["metrics"]
    if not m:  # a torchrun rank other than 0 measures nothing
        return f"{rec['name']}: done"
    return (f"{rec['name']}: quality {m['quality']:.4f}  size {m['size_bytes'] / 1024:.1f} KiB  "
            f"MACs {m['macs']:,}  b1 {m['latency_ms_b1']:.3f} ms")
