"""Measure a model on one backend, each backend in a process of its own.

Runtimes disturb each other when they share a process: ONNX Runtime's spinning worker threads
slow PyTorch, OpenMP pools of different runtimes fight for the same cores, and TVM reads its
thread count once. So every (backend, precision) is compiled, timed and evaluated by
``python -m slimkit.backends.worker`` in a fresh process, one after the other. The child
rebuilds the model from a ``ModelSpec`` (the task, the structural edits of the run's steps and
a safetensors file: nothing is pickled), writes the backend's artifact, times batch 1 and batch
N with the shared latency code, and saves its outputs on the test split. The parent scores the
outputs with the task's metric and compares them with eager FP32 outputs.

``isolate=False`` runs the same code in this process (for tests and for models that have no
spec, such as a module built in a notebook).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn as nn

from slimkit.core.errors import SlimkitError
from slimkit.core.io import atomic_write_json, load_state_dict, read_json, save_state_dict
from slimkit.core.process import import_path, parent_alive, run_child
from slimkit.measure.config import MeasureConfig

if TYPE_CHECKING:
    from slimkit.core.target import Target


@dataclass(frozen=True)
class ModelSpec:
    """Everything a fresh process needs to rebuild a model exactly (all JSON)."""

    task: dict[str, Any]
    weights: str
    structures: list[tuple[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "weights": self.weights, "structures": [list(s) for s in self.structures]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        return cls(data["task"], data["weights"], [tuple(s) for s in data.get("structures", [])])

    def build(self):
        """(task, model) rebuilt from the spec."""
        from slimkit.core.step import rebuild_model
        from slimkit.tasks.base import build_task, parse_task_config

        task = build_task(parse_task_config(self.task, "model spec: task"))
        return task, rebuild_model(task.build_model, list(self.structures), self.weights)


@dataclass
class BackendRun:
    """One (backend, precision) measured: timings from its process, scores from the parent."""

    backend: str
    precision: str
    ok: bool
    error: str | None = None
    latency_b1: dict[str, Any] | None = None
    latency_bN: dict[str, Any] | None = None
    artifact: list[str] = field(default_factory=list)
    artifact_bytes: int | None = None
    compile_seconds: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    quality: float | None = None
    quality_metrics: dict[str, float] = field(default_factory=dict)
    val_quality: float | None = None  # on the validation split: what a quality budget is judged on
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None  # max |out - eager| / max |eager|
    # with a comparison model: both timed interleaved in one process (``paired_*`` is this model)
    versus_latency_b1: dict[str, Any] | None = None
    versus_latency_bN: dict[str, Any] | None = None
    paired_latency_b1: dict[str, Any] | None = None
    paired_latency_bN: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def b1_ms(self) -> float | None:
        return self.latency_b1["median_ms"] if self.latency_b1 else None

    @property
    def bN_ms(self) -> float | None:
        return self.latency_bN["median_ms"] if self.latency_bN else None


def compile_and_time(model: nn.Module, task: Any, backend: str, precision: str, cfg: MeasureConfig,
                     workdir: Path, versus: nn.Module | None = None) -> tuple[dict[str, Any], torch.Tensor]:
    """Compile ``model`` for ``backend``, time it at batch 1 and N, predict the test split.

    With ``versus`` (e.g. the model before fusion), that model is compiled for the same backend
    too and, after the model's own timings, both are timed interleaved, round by round, so their
    ratio is not at the mercy of the machine's load drifting between two separate measurements.
    """
    from slimkit.core.registry import BACKENDS
    from slimkit.measure.latency import measure_latency, measure_paired_latency, torch_threads
    from slimkit.measure.model import resolve_device
    from slimkit.measure.quality import predict

    device = BACKENDS.get(backend).device_for(resolve_device(cfg.device).type)
    test = task.data.test
    workdir.mkdir(parents=True, exist_ok=True)
    with torch_threads(cfg.threads):
        compiled = BACKENDS.get(backend).compile(model, test.example_inputs(1), precision=precision,
                                                 threads=cfg.threads, workdir=workdir, device=device)
        sync = torch.cuda.synchronize if device == "cuda" else None
        timing = dict(warmup=cfg.warmup, repeats=cfg.repeats, threads=cfg.threads, sync=sync,
                      max_seconds=cfg.max_seconds)
        lat1 = measure_latency(compiled, test.example_inputs(1), **timing)
        latn = measure_latency(compiled, test.example_inputs(cfg.batch_n), **timing)
        paired = {}
        if versus is not None:
            runtime = BACKENDS.get(backend)
            build = dict(precision=precision, threads=cfg.threads, device=device, spin_wait=False)
            # spin-waiting runtimes are rebuilt with parked threads for the comparison; the
            # latencies reported above stay those of the runtime as it ships
            mine = runtime.compile(model, test.example_inputs(1), workdir=workdir / "paired", **build) \
                if runtime.spin_waits else compiled
            other = runtime.compile(versus, test.example_inputs(1), workdir=workdir / "versus", **build)
            both = {"model": mine, "versus": other}
            for tag, batch in (("b1", 1), ("bN", cfg.batch_n)):
                pair = measure_paired_latency(both, test.example_inputs(batch), **timing)
                paired[f"paired_latency_{tag}"] = pair["model"].to_dict()
                paired[f"versus_latency_{tag}"] = pair["versus"].to_dict()
        outputs = predict(compiled, test, cfg.eval_batch_size)
        val_outputs = predict(compiled, task.data.val, cfg.eval_batch_size)
        graph = _graph_difference(model, compiled.artifact, test)
    if graph is not None:
        compiled.info["graph_rel_diff"] = graph
    result = {"latency_b1": lat1.to_dict(), "latency_bN": latn.to_dict(), **paired,
              "artifact": [str(p) for p in compiled.artifact], "artifact_bytes": compiled.artifact_bytes,
              "compile_seconds": round(compiled.compile_seconds, 3), "info": compiled.info,
              "val_outputs": val_outputs}
    return result, outputs


def _graph_difference(model: nn.Module, artifact: Sequence[Path], test: Any) -> float | None:
    """For a model with integer layers shipped as ONNX: the file without runtime optimisations vs
    eager on the test split's first 64 rows (``unoptimized_difference``); None otherwise."""
    from slimkit.encoding import is_encoded
    from slimkit.encoding.layer import INTEGER_KINDS

    onnx_files = [p for p in artifact if str(p).endswith(".onnx")]
    if not onnx_files or not is_encoded(model, INTEGER_KINDS):
        return None
    from slimkit.backends.onnxruntime import unoptimized_difference

    return unoptimized_difference(onnx_files[0], model, tuple(t[:64] for t in test.inputs))


def measure_backend(task: Any, backend: str, precision: str, cfg: MeasureConfig, workdir: str | os.PathLike[str], *,
                    spec: ModelSpec | None = None, model: nn.Module | None = None,
                    reference: torch.Tensor | None = None, isolate: bool = True,
                    versus_spec: ModelSpec | None = None, versus_model: nn.Module | None = None,
                    timeout_s: float = 3600) -> BackendRun:
    """Measure on ``backend``; failures come back as ``ok=False`` with the reason, never raised.

    ``versus_spec`` (isolated) or ``versus_model`` (in process): a second model timed on the same
    backend, interleaved with this one (``BackendRun.versus_latency_*``)."""
    from slimkit.core.registry import BACKENDS

    workdir = Path(workdir)
    run = BackendRun(backend, precision, ok=False)
    avail = BACKENDS.get(backend).available()
    if not avail:
        run.error = f"unavailable: {avail.reason}"
        return run
    try:
        if isolate:
            if spec is None:
                raise SlimkitError("isolated measurement needs a ModelSpec (task, weights, structural edits)")
            result, outputs = _in_child(spec, backend, precision, cfg, workdir, timeout_s, versus_spec)
        else:
            if model is None:
                model = spec.build()[1] if spec is not None else None
            if model is None:
                raise SlimkitError("measure_backend needs a model or a ModelSpec")
            if versus_model is None and versus_spec is not None:
                versus_model = versus_spec.build()[1]
            result, outputs = compile_and_time(model, task, backend, precision, cfg, workdir, versus_model)
    except SlimkitError as err:
        run.error = str(err)
        return run
    except Exception as err:  # noqa: BLE001 - a runtime's failure is reported in the table, not fatal
        run.error = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"
        return run
    run.ok = True
    run.latency_b1, run.latency_bN = result["latency_b1"], result["latency_bN"]
    run.artifact = [os.path.relpath(p, workdir) for p in result["artifact"]]
    run.artifact_bytes, run.compile_seconds, run.info = result["artifact_bytes"], result["compile_seconds"], result["info"]
    for key in ("versus_latency_b1", "versus_latency_bN", "paired_latency_b1", "paired_latency_bN"):
        setattr(run, key, result.get(key))
    scores = task.evaluate(outputs, task.data.test.targets)
    run.val_quality = validation_quality(task, result)
    run.quality = scores["quality"]
    run.quality_metrics = {k: v for k, v in scores.items() if k != "quality"}
    if reference is not None:
        run.max_abs_diff, run.max_rel_diff = output_difference(outputs, reference)
    return run


def measure_on_target(model: nn.Module, task: Any, cfg: MeasureConfig, target: "Target", *, artifact: Path,
                      spec: ModelSpec, workdir: Path, measured: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every results.json figure of ``model`` where it runs: eager in this process; on any other
    target, latency, quality and size (the artifact's bytes) from the backend's own process, with
    eager's figures kept under ``"eager"``. ``measured``: the target's run of this model, if the
    step already took it (its artifact paths relative to ``workdir``). ``metrics["artifact"]`` is
    the checkpoint's name for eager, the list of files measured otherwise."""
    from slimkit.measure.contention import latency_warning
    from slimkit.measure.model import measure_model

    metrics = measure_model(model, task, cfg, artifact=artifact)
    if target.is_eager:
        return metrics
    if target.topology is not None:
        raise SlimkitError(f"measuring a split model ({target.describe()}, topology {target.topology}) is not "
                           "supported yet")
    if measured is None:
        where = workdir / f"deploy-{target.backend}-{target.precision}"
        run = measure_backend(task, target.backend, target.precision, cfg, where, spec=spec,
                              reference=eager_reference(model, task, cfg))
        if not run.ok:
            raise SlimkitError(f"measuring on the deployed backend {target.describe()} failed: {run.error}")
        measured = {**run.to_dict(), "artifact": [str(where / a) for a in run.artifact]}
    else:
        measured = {**measured, "artifact": [str(workdir / a) for a in measured["artifact"]]}
    eager = {k: metrics[k] for k in ("quality", "size_bytes", "latency_ms_b1", "latency_ms_bN", "artifact")}
    return {**metrics, "quality": measured["quality"], "quality_metrics": measured["quality_metrics"],
            "size_bytes": measured["artifact_bytes"], "latency_ms_b1": measured["latency_b1"]["median_ms"],
            "latency_ms_bN": measured["latency_bN"]["median_ms"], "latency_b1": measured["latency_b1"],
            "latency_bN": measured["latency_bN"], "backend": measured["backend"], "precision": measured["precision"],
            "timing_warning": latency_warning(measured["latency_b1"], measured["latency_bN"]),
            "device": target.device, "artifact": measured["artifact"],
            "max_rel_diff_vs_eager": measured["max_rel_diff"], "max_abs_diff_vs_eager": measured["max_abs_diff"],
            "eager": eager}


def validation_quality(task: Any, result: dict[str, Any]) -> float | None:
    """The candidate's quality on the validation split, from the outputs ``compile_and_time`` predicted."""
    val_outputs = result.get("val_outputs")
    return None if val_outputs is None else task.evaluate(val_outputs, task.data.val.targets)["quality"]


def output_difference(outputs: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(max |a - b|, max |a - b| / max |b|); shapes must agree."""
    if outputs.shape != reference.shape:
        raise SlimkitError(f"backend outputs have shape {tuple(outputs.shape)}, eager {tuple(reference.shape)}")
    diff = float((outputs.float() - reference.float()).abs().max())
    scale = float(reference.float().abs().max())
    return diff, diff / scale if scale > 0 else diff


def _in_child(spec: ModelSpec, backend: str, precision: str, cfg: MeasureConfig, workdir: Path,
              timeout_s: float, versus: ModelSpec | None = None) -> tuple[dict[str, Any], torch.Tensor]:
    workdir.mkdir(parents=True, exist_ok=True)
    job = workdir / "job.json"
    result_path = workdir / "result.json"
    result_path.unlink(missing_ok=True)
    atomic_write_json(job, {"spec": spec.to_dict(), "backend": backend, "precision": precision,
                            "measure": cfg.to_json_dict(), "workdir": str(workdir),
                            "versus": versus.to_dict() if versus is not None else None})
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads), "TVM_NUM_THREADS": str(cfg.threads),
           "MKL_NUM_THREADS": str(cfg.threads)}
    env["PYTHONPATH"] = import_path([str(Path(__file__).resolve().parents[2])])
    try:
        proc = run_child([sys.executable, "-m", "slimkit.backends.worker", str(job)], env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SlimkitError(f"{backend}/{precision}: timed out after {timeout_s:.0f} s") from None
    if not result_path.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SlimkitError(f"{backend}/{precision}: worker exited with status {proc.returncode}: {' | '.join(tail)}")
    result = read_json(result_path)
    if "error" in result:
        raise SlimkitError(result["error"])
    saved = load_state_dict(workdir / "outputs.safetensors")
    result["val_outputs"] = saved.get("val_outputs")
    return result, saved["outputs"]


def worker_main(job_path: str) -> int:
    """The child's side: rebuild, compile, time, predict; write result.json and outputs (nothing
    once the parent run has died: the folder may belong to a rerun by then)."""
    job = read_json(job_path)
    workdir = Path(job["workdir"])
    try:
        task, model = ModelSpec.from_dict(job["spec"]).build()
        cfg = MeasureConfig.model_validate(job["measure"])
        versus = ModelSpec.from_dict(job["versus"]).build()[1] if job.get("versus") else None
        result, outputs = compile_and_time(model, task, job["backend"], job["precision"], cfg, workdir, versus)
    except Exception as err:  # noqa: BLE001 - reported to the parent, which decides
        message = str(err).strip().splitlines()[0][:400] if str(err).strip() else ""
        if not parent_alive():
            return 1
        atomic_write_json(workdir / "result.json", {"error": f"{type(err).__name__}: {message}"})
        return 1
    if not parent_alive():
        return 1
    val_outputs = result.pop("val_outputs")
    save_state_dict(workdir / "outputs.safetensors", {"outputs": outputs.contiguous(),
                                                      "val_outputs": val_outputs.contiguous()})
    atomic_write_json(workdir / "result.json", result)
    return 0


def eager_reference(model: nn.Module, task: Any, cfg: MeasureConfig) -> torch.Tensor:
    """Eager FP32 outputs on the test split: what every backend is compared with."""
    from slimkit.measure.latency import torch_threads
    from slimkit.measure.quality import predict

    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in model.state_dict().values()
           if t.is_floating_point()):
        model = copy.deepcopy(model).float().cpu()  # e.g. trained on CUDA: the reference is still CPU fp32
    with torch_threads(cfg.threads):
        return predict(model.eval(), task.data.test, cfg.eval_batch_size)


def measure_backends(task: Any, candidates: Sequence[tuple[str, str]], cfg: MeasureConfig, workdir: str | os.PathLike[str],
                     *, spec: ModelSpec | None = None, model: nn.Module | None = None, isolate: bool = True,
                     progress: bool = False, versus_spec: ModelSpec | None = None,
                     versus_model: nn.Module | None = None) -> list[BackendRun]:
    """Every (backend, precision) of ``candidates``, one after the other, each in its own process
    (with ``versus_*``, a second model timed interleaved with it on each backend)."""
    if model is None:
        if spec is None:
            raise SlimkitError("measure_backends needs a model or a ModelSpec")
        model = spec.build()[1]
    reference = eager_reference(model, task, cfg)
    runs = []
    items = list(candidates)
    if progress:
        from rich.progress import track

        items = track(items, description="measuring backends")
    for backend, precision in items:
        runs.append(measure_backend(task, backend, precision, cfg, Path(workdir) / f"{backend}-{precision}",
                                    spec=spec, model=model, reference=reference, isolate=isolate,
                                    versus_spec=versus_spec, versus_model=versus_model))
    return runs


def all_candidates(precisions: Sequence[str] = ("fp32",), backends: Sequence[str] | None = None,
                   device: str = "cpu") -> list[tuple[str, str]]:
    """(backend, precision) pairs to try: every registered backend (or ``backends``), in order,
    with each asked precision it supports here; unavailable backends are kept (reported)."""
    from slimkit.core.registry import BACKENDS

    names = list(backends) if backends is not None else [e.name for e in BACKENDS if not e.obj.int8_only]
    if "eager" in names:
        names.remove("eager")
    names.insert(0, "eager")
    out = []
    for name in names:
        backend = BACKENDS.get(name)
        supported = backend.precisions(device) if backend.available() else ("fp32",)
        out += [(name, p) for p in precisions if p in supported or (not backend.available() and p == "fp32")]
    return out


def write_table(runs: Sequence[BackendRun]) -> list[dict[str, Any]]:
    """Rows for the table: ratios are eager FP32 median latency / this latency (higher is faster)."""
    from slimkit.measure.contention import latency_warning

    eager = next((r for r in runs if r.backend == "eager" and r.precision == "fp32" and r.ok), None)
    rows = []
    for r in runs:
        row = {"backend": r.backend, "precision": r.precision, "ok": r.ok, "error": r.error,
               "b1_ms": r.b1_ms, "bN_ms": r.bN_ms, "batch_N": r.latency_bN["batch_size"] if r.latency_bN else None,
               "speedup_b1": None, "speedup_bN": None, "max_abs_diff": r.max_abs_diff, "max_rel_diff": r.max_rel_diff,
               "quality": r.quality, "val_quality": r.val_quality, "artifact_bytes": r.artifact_bytes,
               "compile_seconds": r.compile_seconds, "info": r.info,
               "timing_warning": latency_warning(r.latency_b1, r.latency_bN, r.paired_latency_b1,
                                                 r.paired_latency_bN, r.versus_latency_b1, r.versus_latency_bN)}
        if eager is not None and r.ok:
            row["speedup_b1"] = eager.b1_ms / r.b1_ms
            row["speedup_bN"] = eager.bN_ms / r.bN_ms
        if r.ok and r.versus_latency_b1 is not None:
            row["versus_b1_ms"], row["versus_bN_ms"] = r.versus_latency_b1["median_ms"], r.versus_latency_bN["median_ms"]
            row["paired_b1_ms"], row["paired_bN_ms"] = r.paired_latency_b1["median_ms"], r.paired_latency_bN["median_ms"]
            row["speedup_vs_versus_b1"] = row["versus_b1_ms"] / row["paired_b1_ms"]
            row["speedup_vs_versus_bN"] = row["versus_bN_ms"] / row["paired_bN_ms"]
        rows.append(row)
    return rows
