"""slimkit as verbs on a plain model and a user's data, for a script that has a model, a
DataLoader and no recipe.

Each verb is its recipe step, called with a context built from the user's data
(``user_context``): the same function, the same config (validated the same way, errors named
``slimkit.<verb>``), so a verb and its step give identical weights for the same data and seed.
Verbs never change the model they are given: they work on a copy and return the result, which
remembers what was done (``history``) so ``save`` / ``load`` can ship it.

    import slimkit.api as sk
    q = sk.quantize(model, loader, transform_fn=lambda b: (b[0], None))   # static int8
    sk.save(q, "model.safetensors")
    q2 = sk.load("model.safetensors", build_model)
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.api.data import TransformFn, as_split
from slimkit.core.errors import CheckpointError, ConfigError
from slimkit.data.base import DataSplits, Split
from slimkit.tasks.base import Task
from slimkit.tasks.context import Context

Metric = Callable[[torch.Tensor, torch.Tensor], float]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_HISTORY = "_slimkit_history"  # the attribute a verb's result carries: [{"technique", "structure", "info"}]
STRUCTURES_KEY = "slimkit.structures"  # safetensors metadata: the recorded structural edits, JSON


@dataclass
class UserTask(Task):
    """A task made of a user's data: quality is ``metric(outputs, targets)`` (higher is better)."""

    metric_fn: Metric | None = None
    labelled: bool = True
    splits: DataSplits | None = field(default=None, repr=False)

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        if not self.labelled:
            raise ConfigError("this needs labelled data (targets) to score the model; the data given has none")
        return {"quality": float(self.metric_fn(outputs, targets))}


def _accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    from slimkit.measure.quality import accuracy

    return accuracy(outputs, targets)["accuracy"]


def _unlabelled_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    raise ConfigError("this trains the model, which needs labelled data: give (inputs, targets) batches "
                      "(or a transform_fn that returns them) and a loss if the targets are not class indices")


def user_context(model: nn.Module, data: Iterable[Any] | Split, *, val_data: Iterable[Any] | Split | None = None,
                 transform_fn: TransformFn | None = None, loss: Loss | None = None, metric: Metric | None = None,
                 max_samples: int | None = None, device: str | torch.device | None = None, seed: int = 0,
                 progress: bool = False, what: str = "data") -> Context:
    """The ``Context`` a step gets, built from a user's data instead of a registered task.

    ``data`` trains and calibrates; ``val_data`` (default: ``data``) scores the quality-aware
    choices (a pruning or fallback search). Class-index targets default to cross-entropy and
    accuracy; float targets to MSE and minus the MSE; anything else needs ``loss`` and ``metric``.
    """
    train, labelled = as_split(data, transform_fn=transform_fn, max_samples=max_samples, what=what)
    val, val_labelled = (train, labelled) if val_data is None else as_split(
        val_data, transform_fn=transform_fn, what="val_data")
    classes = labelled and not train.targets.is_floating_point()
    if loss is None:
        loss = (F.cross_entropy if classes else F.mse_loss) if labelled else _unlabelled_loss
    if metric is None:
        metric = _accuracy if classes else (lambda o, t: -float(F.mse_loss(o.float(), t.float())))
    splits = DataSplits(train, val, val)
    builder = _builder(model)
    task = UserTask(name="user", quality_metric="user", build_model=builder, load_data=lambda: splits, loss=loss,
                    baseline_train=None, description="a user's model and data", metric_fn=metric,
                    labelled=labelled and val_labelled, splits=splits,
                    pseudo_label=(lambda logits: logits.argmax(-1)) if classes else None)
    return Context(task=task, device=torch.device(device) if device is not None else _device(model), seed=seed,
                   progress=progress)


def _builder(model: nn.Module) -> Callable[[], nn.Module]:
    """A factory of fresh copies of ``model``'s architecture (a teacher rebuilt from saved weights)."""
    blank = copy.deepcopy(model)
    return lambda: copy.deepcopy(blank)


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def apply(technique: str, model: nn.Module, data: Iterable[Any] | Split | None = None, *,
          transform_fn: TransformFn | None = None, val_data: Iterable[Any] | Split | None = None,
          loss: Loss | None = None, metric: Metric | None = None, max_samples: int | None = None,
          device: str | torch.device | None = None, seed: int = 0, progress: bool = False,
          context: Context | None = None, **options: Any) -> nn.Module:
    """Run the recipe step ``technique`` on a copy of ``model`` with ``options`` (its recipe
    fields) and a context from the user's data; return the result, ``history`` recorded."""
    from slimkit.core.config import parse_config
    from slimkit.core.registry import STEPS

    entry = STEPS.entry(technique)
    cfg = parse_config(entry.config, options, f"slimkit.{technique}")
    if context is None:
        if data is None:
            raise ConfigError(f"slimkit.{technique}: needs data (an iterable of batches, e.g. a DataLoader)")
        context = user_context(model, data, val_data=val_data, transform_fn=transform_fn, loss=loss, metric=metric,
                               max_samples=max_samples, device=device, seed=seed, progress=progress)
    work = copy.deepcopy(model).to(context.device)
    result = entry.obj.fn(work, cfg, context)
    step = entry.obj
    structure = step.record(technique, result.structure)
    history = [*_history(model), {"technique": technique, "structure": structure, "info": result.info}]
    setattr(result.model, _HISTORY, history)
    return result.model


def _history(model: nn.Module) -> list[dict[str, Any]]:
    return list(getattr(model, _HISTORY, []))


def history(model: nn.Module) -> list[dict[str, Any]]:
    """What slimkit verbs did to ``model``, in order: technique, recorded structure, the step's info."""
    return _history(model)


# -- the verbs -----------------------------------------------------------------------------------

def train(model: nn.Module, data: Iterable[Any] | Split, **kwargs: Any) -> nn.Module:
    """Train on labelled ``data`` in slimkit's loop (``epochs``, ``lr``, ``optimizer``,
    ``schedule``...; with ``val_data``, ``keep_best`` keeps the best validated epoch)."""
    return apply("train", model, data, **kwargs)


def quantize(model: nn.Module, data: Iterable[Any] | Split, **kwargs: Any) -> nn.Module:
    """Static int8 (calibrated on ``data``) or, with ``method="dynamic"``, dynamic int8: the
    ``quantize`` step's fields as keywords (``calibration_samples``, ``skip``, ``max_quality_drop``...)."""
    return apply("quantize", model, data, **kwargs)


def quantize_weights(model: nn.Module, data: Iterable[Any] | Split, **kwargs: Any) -> nn.Module:
    """Weight-only int4/int8 (``bits``, ``group_size``, ``method``: rtn, gptq, awq...)."""
    return apply("quantize_weights", model, data, **kwargs)


def qat(model: nn.Module, data: Iterable[Any] | Split, **kwargs: Any) -> nn.Module:
    """Quantization-aware training (LSQ) through slimkit's loop on labelled ``data``."""
    return apply("qat", model, data, **kwargs)


def prune(model: nn.Module, data: Iterable[Any] | Split, **kwargs: Any) -> nn.Module:
    """Unstructured pruning to ``sparsity`` (magnitude, Taylor, gradual with fine-tuning...)."""
    return apply("prune", model, data, **kwargs)


def prune_structured(model: nn.Module, data: Iterable[Any] | Split, **kwargs: Any) -> nn.Module:
    """Channels, heads and blocks removed toward ``target_macs`` / ``ratio`` (a smaller dense model)."""
    return apply("prune_structured", model, data, **kwargs)


def _with_initial(technique: str, model: nn.Module, data, initial_weights, kwargs: dict[str, Any]) -> nn.Module:
    """Run ``technique`` with the model's initial weights (a safetensors path or a state dict)
    in the context, for the steps that rewind to them."""
    from slimkit.core.io import save_state_dict

    if initial_weights is None:
        return apply(technique, model, data, **kwargs)
    context = kwargs.pop("context", None)
    with tempfile.TemporaryDirectory(prefix="slimkit-initial-") as tmp:
        path = initial_weights
        if isinstance(initial_weights, dict):
            path = save_state_dict(Path(tmp) / "initial.safetensors", initial_weights)
        if context is None:
            context = user_context(model, data, **{k: kwargs.pop(k) for k in list(kwargs) if k in _CONTEXT_ARGS})
        context.initial_weights = str(path)
        return apply(technique, model, data, context=context, **kwargs)


_CONTEXT_ARGS = ("val_data", "transform_fn", "loss", "metric", "max_samples", "device", "seed", "progress")


def sparse_train(model: nn.Module, data: Iterable[Any] | Split, *, initial_weights: Any = None,
                 **kwargs: Any) -> nn.Module:
    """Sparse training under a ``method`` mask (static, snip, rigl) to ``sparsity``; from
    ``initial_weights`` (a state dict or safetensors path) with ``start="initial"``, else pass
    ``start="current"`` to start from ``model``'s weights."""
    return _with_initial("sparse_train", model, data, initial_weights, kwargs)


def lottery(model: nn.Module, data: Iterable[Any] | Split, *, initial_weights: Any, **kwargs: Any) -> nn.Module:
    """Lottery ticket of the trained ``model`` at ``sparsity`` (``rounds`` of magnitude pruning,
    rewound to ``initial_weights``: the state dict the model had before training)."""
    return _with_initial("lottery", model, data, initial_weights, kwargs)


def l0(model: nn.Module, data: Iterable[Any] | Split, **kwargs: Any) -> nn.Module:
    """L0 hard-concrete gates on channels (removed physically) or weights (stored sparse), trained
    on labelled ``data`` with ``penalty``."""
    return apply("l0", model, data, **kwargs)


def variational_dropout(model: nn.Module, data: Iterable[Any] | Split, **kwargs: Any) -> nn.Module:
    """Sparse variational dropout trained on labelled ``data``; weights whose dropout rate tends to
    1 (``log alpha > threshold``) removed, the rest stored sparse."""
    return apply("variational_dropout", model, data, **kwargs)


def bayesian_compression(model: nn.Module, data: Iterable[Any] | Split, **kwargs: Any) -> nn.Module:
    """Bayesian compression trained on labelled ``data``: channels whose scale is mostly noise
    removed physically, each layer's weights stored at the bits its posterior variance allows."""
    return apply("bayesian_compression", model, data, **kwargs)


def early_exit(model: nn.Module, data: Iterable[Any] | Split, **kwargs: Any) -> nn.Module:
    """Exit heads after chosen children of an ``nn.Sequential`` (or hooked onto a model's layer
    list) trained on labelled ``data``, confidence thresholds calibrated on its validation rows
    within ``budget`` (one shared, or ``thresholds="per_exit"``): returns the exit network, whose
    rows stop at the first confident exit."""
    return apply("early_exit", model, data, **kwargs)


def layer_skip(model: nn.Module, data: Iterable[Any] | Split, **kwargs: Any) -> nn.Module:
    """A gate before each residual block (or each of ``blocks``), trained on labelled ``data`` with
    a penalty pulling the mean executed MACs toward ``target_macs``: returns the ``SkipNetwork``,
    whose rows run only the blocks their gates open."""
    return apply("layer_skip", model, data, **kwargs)


def nas(model: nn.Module, data: Iterable[Any] | Split, **kwargs: Any) -> nn.Module:
    """Architecture search over ``space`` (a shipped space's name or base + per-stage choices),
    candidates trained on labelled ``data`` and scored on its validation rows within the MACs,
    parameter, byte or latency budgets: returns the chosen network (``model`` gives only the
    input shape and the number of classes)."""
    return apply("nas", model, data, **kwargs)


def distill(student: nn.Module, teacher: nn.Module, data: Iterable[Any] | Split, **kwargs: Any) -> nn.Module:
    """Train ``student`` on ``data`` with ``teacher``'s outputs as loss terms (``losses``,
    ``temperature``, ``finetune``...); the teacher is not changed."""
    if "teacher" in kwargs or "student" in kwargs:
        raise ConfigError("slimkit.distill: the teacher and the student are the first two arguments")
    from slimkit.core.io import save_state_dict

    # the context's model factory builds the teacher's architecture; its weights come from the file
    context = user_context(teacher, data, **{k: kwargs.pop(k) for k in list(kwargs) if k in _CONTEXT_ARGS})

    with tempfile.TemporaryDirectory(prefix="slimkit-distill-") as folder:
        context.baseline_weights = str(save_state_dict(Path(folder) / "teacher.safetensors", teacher.state_dict()))
        return apply("distill", student, context=context, teacher="baseline", student="input", **kwargs)


_CONTEXT_ARGS = ("transform_fn", "val_data", "loss", "metric", "max_samples", "device", "seed", "progress")


def cluster(model: nn.Module, data: Iterable[Any] | Split, **kwargs: Any) -> nn.Module:
    """Weight sharing by k-means (``clusters`` shared values per layer); ``data`` for the optional fine-tuning."""
    return apply("cluster", model, data, **kwargs)


def hash(model: nn.Module, data: Iterable[Any] | Split, **kwargs: Any) -> nn.Module:  # noqa: A001 - the step's name
    """HashedNets weight sharing (``compression``), trained on labelled ``data``."""
    return apply("hash", model, data, **kwargs)


def factorize(model: nn.Module, data: Iterable[Any] | Split, **kwargs: Any) -> nn.Module:
    """Low-rank factorization (SVD for Linear, Tucker-2/CP for conv: ``ratio``, ``layers``...);
    ``data`` gives the input statistics the ranks are chosen and fitted on."""
    return apply("factorize", model, data, **kwargs)


def lora(model: nn.Module, data: Iterable[Any] | Split, **kwargs: Any) -> nn.Module:
    """LoRA adapters (``rank``, ``targets``) trained on labelled ``data``, merged unless ``merge=False``."""
    return apply("lora", model, data, **kwargs)


def fuse(model: nn.Module, example_inputs: Any, **kwargs: Any) -> nn.Module:
    """Fold BatchNorm, fuse activations, merge linears (exact in eval); ``example_inputs`` (a
    tensor or tuple) let BatchNorms in code fx cannot trace be folded from torch.export's dataflow."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    return apply("fuse", model, [(inputs, None)], **kwargs)


# -- saving what the verbs made --------------------------------------------------------------------

def save(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """``model``'s tensors as safetensors, with the structural edits slimkit verbs made to it in
    the file's metadata (JSON, no pickle); written to a temporary file, then renamed."""
    from slimkit.core.io import save_state_dict

    structures = [[h["technique"], h["structure"]] for h in _history(model)]
    return save_state_dict(path, model.state_dict(), {STRUCTURES_KEY: json.dumps(structures)})


def load(path: str | os.PathLike[str], model_fn: Callable[[], nn.Module]) -> nn.Module:
    """A model ``save`` wrote: ``model_fn()`` builds the original architecture, each recorded
    edit is re-applied (through its step's ``restore``), then the tensors load strictly."""
    from safetensors import safe_open

    from slimkit.core.step import rebuild_model

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # noqa: BLE001 - a missing or foreign file: say which and why
        raise CheckpointError(f"{path}: not a safetensors file slimkit can read ({type(err).__name__}: {err})") from None
    try:
        structures = json.loads(metadata.get(STRUCTURES_KEY, "[]"))
        if not isinstance(structures, list) or not all(
                isinstance(s, list) and len(s) == 2 and isinstance(s[0], str) for s in structures):
            raise ValueError("expected a list of [technique, structure] pairs")
    except ValueError as err:
        raise CheckpointError(f"{path}: metadata {STRUCTURES_KEY!r} is not slimkit's record ({err})") from None
    model = rebuild_model(model_fn, [(t, s) for t, s in structures], str(path))
    setattr(model, _HISTORY, [{"technique": t, "structure": s, "info": {}} for t, s in structures])
    return model


def measure(model: nn.Module, data: Iterable[Any] | Split, *, transform_fn: TransformFn | None = None,
            metric: Metric | None = None, loss: Loss | None = None, max_samples: int | None = None,
            **measure_options: Any) -> dict[str, Any]:
    """Bytes (a real safetensors serialization), MACs, parameters, latency and, when ``data``
    has targets, quality by ``metric`` (default: accuracy for class indices), on ``data``'s rows.
    ``measure_options`` are ``MeasureConfig`` fields (``threads``, ``batch_n``, ``repeats``...).
    ``model`` may also be what ``deploy`` returned: it is then measured on its runtime."""
    from slimkit.backends.base import Compiled
    from slimkit.measure.model import measure_model

    if isinstance(model, Compiled):
        return _measure_compiled(model, data, transform_fn=transform_fn, metric=metric, max_samples=max_samples,
                                 **measure_options)
    context = user_context(model, data, transform_fn=transform_fn, loss=loss, metric=metric, max_samples=max_samples)
    task = context.task
    if not task.labelled:
        metrics = measure_model(model, _quality_free(task), measure_options or None, data=task.splits)
        metrics.pop("quality", None)
        return metrics
    return measure_model(model, task, measure_options or None, data=task.splits)


def _measure_compiled(compiled: Any, data: Iterable[Any] | Split, *, transform_fn: TransformFn | None,
                      metric: Metric | None, max_samples: int | None, **measure_options: Any) -> dict[str, Any]:
    """What ``deploy`` returned, measured on its runtime: the bytes of the files it ships,
    latency at batch 1 and ``batch_n`` (median), and quality from its outputs when ``data`` has
    targets. MACs and parameters are the eager model's: measure it for those."""
    from slimkit.measure.model import measure_config
    from slimkit.measure.latency import measure_latency

    cfg = measure_config(measure_options or None)
    split, labelled = as_split(data, transform_fn=transform_fn, max_samples=max_samples)
    timing = dict(warmup=cfg.warmup, repeats=cfg.repeats, threads=cfg.threads, max_seconds=cfg.max_seconds)
    b1 = measure_latency(compiled, split.example_inputs(1), **timing)
    bn = measure_latency(compiled, split.example_inputs(cfg.batch_n), **timing)
    out = {"backend": compiled.backend, "precision": compiled.precision, "size_bytes": compiled.artifact_bytes,
           "latency_ms_b1": b1.median_ms, "latency_ms_bN": bn.median_ms, "batch_N": cfg.batch_n,
           "timing_warning": b1.timing_warning or bn.timing_warning}
    if labelled:
        from slimkit.measure.quality import predict

        outputs = predict(compiled, split, cfg.eval_batch_size)
        classes = not split.targets.is_floating_point()
        score = metric or (_accuracy if classes else (lambda o, t: -float(F.mse_loss(o.float(), t.float()))))
        out["quality"] = float(score(outputs, split.targets))
    return out


def _quality_free(task: UserTask) -> UserTask:
    """The task with a metric that reads no targets (0.0): measurement of unlabelled data."""
    return dataclasses.replace(task, metric_fn=lambda o, t: 0.0, labelled=True)


# -- export and deploy ---------------------------------------------------------------------------------

def _inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)


def export(model: nn.Module, example_inputs: Any, path: str | os.PathLike[str], *, format: str | None = None) -> list[Path]:
    """Write ``model`` as ONNX (``.onnx``), OpenVINO IR (``.xml`` + ``.bin``) or safetensors with
    its recorded structure (``.safetensors``, see ``save``); ``format`` overrides the suffix.
    Returns the files written (each through a temporary name)."""
    path = Path(path)
    kind = format or {".onnx": "onnx", ".xml": "openvino", ".safetensors": "safetensors"}.get(path.suffix)
    inputs = _inputs(example_inputs)
    model = model.eval()
    if kind == "onnx":
        from slimkit.backends.onnxruntime import export_onnx

        return [export_onnx(model, inputs, path)]
    if kind == "openvino":
        from slimkit.backends.openvino import save_ir

        return save_ir(model, inputs, path)
    if kind == "safetensors":
        return [save(model, path)]
    raise ConfigError(f"slimkit.export: cannot tell the format of {path.name!r}; use a .onnx, .xml or "
                      ".safetensors name, or format='onnx' | 'openvino' | 'safetensors'")


def tinyml(model: nn.Module, data: Iterable[Any] | Split, out_dir: str | os.PathLike[str], *,
           transform_fn: TransformFn | None = None, metric: Metric | None = None, max_samples: int | None = None,
           **kwargs: Any) -> dict[str, Any]:
    """``model`` (a static int8 model: ``quantize`` it first) as C99 for microcontrollers in
    ``out_dir/c``: ``data``'s rows calibrate the tensors without a quantizer and are run through
    the compiled C, which must match slimkit's integer reference bit for bit. Returns the
    ``tinyml`` step's report (footprint, fit per target, the C's quality by ``metric``)."""
    context = user_context(model, data, transform_fn=transform_fn, metric=metric, max_samples=max_samples)
    context.out_dir = Path(out_dir)
    return history(apply("tinyml", model, context=context, **kwargs))[-1]["info"]


def deploy(model: nn.Module, example_inputs: Any, *, backend: str = "auto", precision: str = "fp32",
           candidates: list[str] | None = None, threads: int | None = None, tolerance: float | None = None,
           workdir: str | os.PathLike[str] | None = None):
    """``model`` compiled for a runtime, as a callable (``compiled(*inputs) -> tensor``), its
    outputs checked against eager on ``example_inputs`` first.

    ``backend="auto"`` compiles every available backend (or ``candidates``), keeps those within
    tolerance and picks the fastest at the example's batch size, timed interleaved in this
    process (ABBA rounds); ``compiled.info["candidates"]`` is the table. Tolerance: 1e-4 relative
    for a float model; for one with integer layers, the larger of 0.02 and what sub-LSB input
    noise moves its outputs (its runtimes round differently from eager). A named backend that
    misses it is an error; give ``tolerance`` to accept more."""
    from slimkit.backends.measure import all_candidates
    from slimkit.core.errors import SlimkitError
    from slimkit.core.registry import BACKENDS
    from slimkit.measure.latency import measure_paired_latency

    inputs = _inputs(example_inputs)
    model = model.eval()
    limit = tolerance if tolerance is not None else _tolerance(model, inputs)
    names = [n for n, p in all_candidates([precision], candidates) if p == precision] if backend == "auto" else [backend]
    folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="slimkit-deploy-"))
    with torch.no_grad():
        reference = _primary(model(*inputs)).float()
    built, rows = {}, []
    for name in names:
        entry = BACKENDS.get(name)
        if not entry.available():
            rows.append({"backend": name, "decision": "not installed"})
            continue
        try:
            compiled = entry.compile(model, inputs, precision=precision, threads=threads, workdir=folder / name,
                                     spin_wait=backend != "auto")
            with torch.no_grad():
                diff = float((compiled(*inputs).float() - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
        except SlimkitError as err:
            rows.append({"backend": name, "decision": f"unsupported: {err}"})
            continue
        row = {"backend": name, "max_rel_diff": diff, "tolerance": limit, "artifact_bytes": compiled.artifact_bytes}
        row["decision"] = "within tolerance" if diff <= limit else f"outputs differ by {diff:.2g} > {limit:.2g}"
        rows.append(row)
        if diff <= limit:
            built[name] = compiled
    if not built:
        detail = "; ".join(f"{r['backend']}: {r['decision']}" for r in rows)
        raise SlimkitError(f"slimkit.deploy: no backend qualifies ({detail})")
    if len(built) > 1:
        stats = measure_paired_latency(dict(built), inputs, threads=threads, repeats=30, rounds=6, max_seconds=10)
        for row in rows:
            if row["backend"] in stats:
                row["median_ms"] = stats[row["backend"]].median_ms
        chosen = min(built, key=lambda n: stats[n].median_ms)
    else:
        chosen = next(iter(built))
    for row in rows:
        if row["backend"] == chosen:
            row["decision"] = "chosen" + (": fastest within tolerance" if len(built) > 1 else "")
    compiled = built[chosen]
    compiled.info["candidates"] = rows
    return compiled


def _primary(out: Any) -> torch.Tensor:
    from slimkit.core.outputs import primary_output

    return primary_output(out)


def _tolerance(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    from slimkit.backends.step import default_tolerance
    from slimkit.encoding import is_encoded
    from slimkit.encoding.layer import INTEGER_KINDS
    from slimkit.recipes.compat import rounding_sensitivity

    if not is_encoded(model, INTEGER_KINDS):
        return default_tolerance(model)
    return max(default_tolerance(model), rounding_sensitivity(model, inputs).output)
