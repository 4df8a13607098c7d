"""Which steps and runtimes work on a model: each step applied alone, its promise checked
(sparsity, fewer MACs, fewer bytes, the same function), then the result exported to each runtime
and compared with eager on real inputs. A cell is ``ok``, ``unsupported`` (the step or runtime
said why in one line: a ``SlimkitError``) or ``error`` (anything else: a defect of slimkit's).

The conformance suite runs this over third-party families (``slimkit.zoo.thirdparty``) and
``benchmarks/thirdparty.py`` prints the matrix that docs/thirdparty.md shows.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from slimkit.core.errors import SlimkitError
from slimkit.core.outputs import primary_output
from slimkit.measure.sensitivity import (FLOAT_NOISE, ROUNDING_NOISE, SENSITIVITY_DRAWS, Sensitivity,  # noqa: F401
                                         rel_diff, rounding_sensitivity, top1_agreement)

# the smallest config of each step that changes a model, and what it promises
STEPS: dict[str, tuple[str, dict[str, Any], str]] = {
    "fuse": ("fuse", {}, "same"),
    "prune": ("prune", {"sparsity": 0.5}, "nonzeros"),
    "prune_structured": ("prune_structured", {"target_macs": 0.7}, "macs"),
    "quantize": ("quantize", {"calibration_samples": 64}, "bytes"),
    "quantize_dynamic": ("quantize", {"method": "dynamic"}, "bytes"),
    "quantize_weights": ("quantize_weights", {"bits": 4, "group_size": 16}, "bytes"),
    "qat": ("qat", {"calibration_samples": 64, "finetune": {"epochs": 1}}, "bytes"),
    "cluster": ("cluster", {"clusters": 8}, "bytes"),
    "hash": ("hash", {"finetune": {"epochs": 1}}, "bytes"),
    "factorize": ("factorize", {"ratio": 0.5}, "params"),
    "factorize_conv": ("factorize", {"ratio": 0.5, "layers": ["linear", "conv"], "min_weights": 256}, "params"),
    "lora": ("lora", {"rank": 4, "finetune": {"epochs": 1}}, "changed"),
    "distill": ("distill", {"student": {"derive": {"width": 0.5}}, "losses": {"logits": {}},
                            "finetune": {"epochs": 1}}, "macs"),
    "sparse_train": ("sparse_train", {"method": "rigl", "sparsity": 0.5, "start": "current", "interval": 2,
                                      "finetune": {"epochs": 1}}, "nonzeros"),
    "l0": ("l0", {"init_keep": 0.05, "finetune": {"epochs": 2}}, "macs"),  # gates start closed: removal exercised
    "variational_dropout": ("variational_dropout", {"warmup": 0.0, "finetune": {"epochs": 2, "lr": 0.01}},
                            "nonzeros"),
    "bayesian_compression": ("bayesian_compression", {"warmup": 0.0, "entropy_code": False,
                                                      "finetune": {"epochs": 2, "lr": 0.01}}, "bytes"),
    "early_exit": ("early_exit", {"budget": 0.05, "finetune": {"epochs": 1}}, "changed"),
}
RUNTIMES = ("onnxruntime", "openvino")
FLOAT_TOLERANCE = 1e-4  # a float model on a runtime vs eager (relative to the largest output)
# An integer model's runtime may round an LSB differently from eager here and there (OpenVINO
# requantizes int32 accumulators its own way), and the network amplifies such flips. The runtime
# may differ from eager by the larger of what quantizing itself changed the outputs (at least 0.02,
# at most 0.25) and the model's rounding sensitivity: the largest change of its outputs when the
# inputs move by far less than one quantization step (ROUNDING_NOISE of their largest value, about
# 1/40 of a uint8 step; SENSITIVITY_DRAWS draws over SENSITIVITY_ROWS test rows). Where that noise
# alone moves the outputs by more than 0.25 the model is chaotic (a small, barely trained 4-bit
# MobileNetV2: 0.63) and element-wise comparison says nothing; the runtime must then keep eager's
# top-1 predictions at least as often as the noise does.
INTEGER_TOLERANCE, INTEGER_CEILING = 0.02, 0.25
SENSITIVITY_ROWS = 64  # test rows the sensitivity and top-1 agreement are measured on
# The exported graph (ONNX Runtime, optimisations off) must match eager within GRAPH_TOLERANCE or
# within what float-level input noise (FLOAT_NOISE: a few float32 ulps) moves the outputs: its
# float ops run in another order, and a chaotic model amplifies the tie they flip. Both noises
# and the measurement live in slimkit.measure.sensitivity (deploy judges graphs the same way).


@dataclass
class Cell:
    model: str
    step: str
    runtime: str  # "eager" for the step itself
    status: str  # ok | unsupported | error
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _facts(model: nn.Module, example: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    from slimkit.encoding.counts import logical_param_count, nonzero_param_count
    from slimkit.measure.macs import count_macs
    from slimkit.measure.size import serialized_bytes

    with torch.no_grad():
        out = primary_output(model.eval()(*example))
    return {"macs": count_macs(model, example), "bytes": serialized_bytes(model),
            "params": logical_param_count(model), "nonzeros": nonzero_param_count(model), "output": out}


def _promise_kept(promise: str, before: dict, after: dict, tolerance: float) -> str:
    """'' when the step did what it promises; else what it did not do."""
    if promise == "same":
        diff = rel_diff(after["output"], before["output"])
        return "" if diff <= tolerance else f"outputs changed by {diff:.2g} (> {tolerance:g}) though it promises the same function"
    if promise == "changed":
        return "" if not torch.equal(after["output"], before["output"]) else "the model computes what it computed before"
    if after[promise] < before[promise]:
        return ""
    return f"{promise} did not fall ({before[promise]:,} -> {after[promise]:,})"




def _integer_verdict(diff: float, tolerance: float, sensitivity: Sensitivity, agreement: Callable[[], float]) -> str:
    """Why an integer model's runtime output is wrong ('' when it is right). Element-wise within
    ``tolerance`` passes. A chaotic model (sub-LSB noise moves its outputs by more than
    INTEGER_CEILING) cannot be judged element-wise: its runtime must keep eager's top-1 predictions
    at least as often as that noise does (``agreement()`` computes the runtime's share)."""
    if diff <= tolerance:
        return ""
    if sensitivity.output <= INTEGER_CEILING:
        return (f"outputs differ from eager by {diff:.2g}, more than quantizing changed them or sub-LSB "
                f"input noise moves them ({tolerance:.2g})")
    kept = agreement()
    if kept >= sensitivity.agreement:
        return ""
    return (f"top-1 agrees with eager on {kept:.0%} of rows, less than sub-LSB input noise keeps "
            f"({sensitivity.agreement:.0%}; outputs differ by {diff:.2g}, noise moves them by {sensitivity.output:.2g})")


def _graph_difference(model: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> float:
    """The model's standard ONNX file without runtime optimisations vs eager."""
    from slimkit.backends.onnxruntime import export_onnx, unoptimized_difference

    return unoptimized_difference(export_onnx(model, tuple(t[:1] for t in example), path), model, example)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}"[:1200]


def _where(err: BaseException) -> str:
    """The innermost slimkit frame of a traceback (where a defect surfaced)."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if "/slimkit/" in f.filename]
    return f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""


def check_model(name: str, build: Callable[[], nn.Module], ctx: Any, *, steps: list[str] | None = None,
                runtimes: tuple[str, ...] = RUNTIMES, workdir: Path | None = None, train: Any = None) -> list[Cell]:
    """Apply each of ``steps`` (keys of ``STEPS``) alone to a copy of ``build()`` (trained first by
    ``train``, a TrainConfig, if given: a random network's outputs can be near-constant, which
    hides what a step or runtime gets wrong), check its promise, export the result to each
    runtime and compare with eager on the test split's first rows."""
    from slimkit.backends.step import GRAPH_TOLERANCE
    from slimkit.core.config import parse_config
    from slimkit.encoding import is_encoded
    from slimkit.encoding.layer import INTEGER_KINDS
    from slimkit.core.registry import BACKENDS, STEPS as REGISTERED, load_builtins

    load_builtins()
    test = ctx.data.test
    example = tuple(t[:8] for t in test.inputs)
    sample = tuple(t[:SENSITIVITY_ROWS] for t in test.inputs)  # rows for top-1 agreement
    base = build()
    if train is not None:
        ctx.train(base, train)
    before = _facts(base, example)
    cells: list[Cell] = []
    workdir = Path(workdir or tempfile.mkdtemp(prefix="slimkit-compat-"))
    if ctx.baseline_weights is None:  # distillation's teacher is the model as it came
        from slimkit.core.io import save_state_dict

        ctx = dataclasses.replace(ctx, baseline_weights=str(save_state_dict(workdir / "baseline.safetensors",
                                                                             base.state_dict())))
    for key in steps or list(STEPS):
        technique, raw, promise = STEPS[key]
        entry = REGISTERED.entry(technique)
        model = copy.deepcopy(base)
        try:
            result = REGISTERED.get(technique).fn(model, parse_config(entry.config, raw, technique), ctx)
            model = result.model.eval()
            after = _facts(model, example)
        except SlimkitError as err:
            cells.append(Cell(name, key, "eager", "unsupported", _one_line(err)))
            continue
        except Exception as err:  # noqa: BLE001 - a traceback is what this check exists to find
            cells.append(Cell(name, key, "eager", "error", _one_line(err) + _where(err)))
            continue
        broken = ("NaN in the outputs" if torch.isnan(after["output"]).any() else
                  f"output shape {tuple(after['output'].shape)} != {tuple(before['output'].shape)}"
                  if after["output"].shape != before["output"].shape else
                  _promise_kept(promise, before, after, FLOAT_TOLERANCE))
        figures = {k: (before[k], after[k]) for k in ("macs", "bytes", "params", "nonzeros")}
        cells.append(Cell(name, key, "eager", "error" if broken else "ok", broken, figures))
        if broken:
            continue
        integer = is_encoded(model, INTEGER_KINDS)
        if integer:  # rounding may differ by what quantizing changed or what the model amplifies
            sensitivity = rounding_sensitivity(model, sample)
            float_sensitivity = rounding_sensitivity(model, sample, noise=FLOAT_NOISE).output
            graph_tolerance = max(GRAPH_TOLERANCE, float_sensitivity)
            tolerance = max(INTEGER_TOLERANCE, min(rel_diff(after["output"], before["output"]), INTEGER_CEILING),
                            sensitivity.output)
            try:
                graph = _graph_difference(model, example, workdir / f"{name}-{key}-graph.onnx")
            except SlimkitError as err:  # no ONNX file at all: every runtime cell says why
                cells += [Cell(name, key, r, "unsupported", _one_line(err)) for r in runtimes]
                continue
        for runtime in runtimes:
            backend = BACKENDS.get(runtime)
            if not backend.available():
                cells.append(Cell(name, key, runtime, "unsupported", f"{runtime} is not installed"))
                continue
            try:
                compiled = backend.compile(model, tuple(t[:1] for t in example), precision="fp32", threads=1,
                                           workdir=workdir / f"{name}-{key}-{runtime}")
                with torch.no_grad():
                    diff = rel_diff(compiled(*example), after["output"])
            except SlimkitError as err:
                cells.append(Cell(name, key, runtime, "unsupported", _one_line(err)))
                continue
            except Exception as err:  # noqa: BLE001
                cells.append(Cell(name, key, runtime, "error", _one_line(err) + _where(err)))
                continue
            info = {"max_rel_diff": diff, "export": compiled.info.get("export")}
            if integer:
                info.update(graph_rel_diff=graph, graph_tolerance=graph_tolerance, tolerance=tolerance,
                            rounding_sensitivity=sensitivity.output, noise_top1_agreement=sensitivity.agreement)

                def agreement(compiled=compiled, model=model) -> float:
                    with torch.no_grad():
                        kept = top1_agreement(compiled(*sample), primary_output(model(*sample)))
                    info["top1_agreement"] = kept
                    return kept

                why = (f"the exported graph differs from eager by {graph:.2g} before runtime optimisations "
                       f"(more than {graph_tolerance:.2g})"
                       if graph > graph_tolerance else _integer_verdict(diff, tolerance, sensitivity, agreement))
            else:
                why = "" if diff <= FLOAT_TOLERANCE else f"outputs differ from eager by {diff:.2g} > {FLOAT_TOLERANCE:g}"
            cells.append(Cell(name, key, runtime, "error" if why else "ok", why, info))
    return cells


def family_task(name: str, rows: int | None = 256):
    """A custom task over a third-party family: digits as 32x32 RGB for vision families, the
    generated token rule for text ones (first ``rows`` rows of each split, for speed)."""
    import torch.nn.functional as F

    from slimkit.data.base import DataSplits
    from slimkit.data.digits import load_digits_rgb_splits
    from slimkit.data.tokens import load_token_rule_splits
    from slimkit.tasks.base import Task
    from slimkit.train.config import TrainConfig
    from slimkit.zoo.thirdparty import family

    fam = family(name)
    classes = 10 if fam.modality == "image" else 4

    def data() -> DataSplits:
        splits = load_digits_rgb_splits() if fam.modality == "image" else load_token_rule_splits()
        return splits if rows is None else DataSplits(*(s.head(rows) for s in (splits.train, splits.val, splits.test)))

    return Task(name=f"hf-{name}", quality_metric="accuracy", build_model=lambda: fam.build(num_classes=classes),
                load_data=data, loss=F.cross_entropy, baseline_train=TrainConfig(epochs=1),
                description=f"transformers {fam.model} (tiny config)", pseudo_label=lambda logits: logits.argmax(-1))
