"""The ``deploy`` recipe step: choose the runtime the model ships on; every later measurement
of the run (this step's included) is taken on it, in its own process.

``backend: auto`` measures every available backend (and each asked precision), rejects those
whose outputs differ from eager FP32 by more than ``tolerance`` (relative to the output scale)
and keeps the fastest of the rest at batch 1 (or batch N); the step's info records every
candidate with the reason it was chosen or not, and the report prints that table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch.nn as nn
from pydantic import Field, field_validator, model_validator

from slimkit.core.config import Config
from slimkit.tasks.context import Context
from slimkit.core.errors import SlimkitError
from slimkit.core.step import StepResult, register_step
from slimkit.core.target import Target
from slimkit.encoding import is_encoded
from slimkit.encoding.layer import INTEGER_KINDS


def _check_backend(name: str) -> str:
    from slimkit.core.errors import UnknownNameError
    from slimkit.core.registry import BACKENDS

    try:
        BACKENDS.entry(name)
    except UnknownNameError as err:
        raise ValueError(str(err)) from None
    return name


class DeployConfig(Config):
    backend: str = Field("auto", description="a backend name, or 'auto': the fastest within tolerance")
    precision: list[Literal["fp32", "bf16", "fp16"]] = Field(
        default_factory=lambda: ["fp32"], description="precisions to consider (one for a named backend)")
    candidates: list[str] | None = Field(None, description="auto: only these backends (default: every available one)")
    tolerance: float | None = Field(None, gt=0, description="max |out - eager| / max |eager| a backend may show "
                                                            "(default 1e-4). A model with integer layers is judged "
                                                            "by quality instead unless this is given: its runtimes' "
                                                            "integer kernels round differently from eager by about "
                                                            "an LSB per layer, so the output difference is reported")
    max_quality_drop: float | None = Field(None, ge=0, description="and at most this drop, in points (100 x quality), "
                                                                   "of the validation quality from eager fp32 "
                                                                   "(e.g. to accept bf16; default 1 for a model with "
                                                                   "integer layers); test quality is only reported")
    objective: Literal["b1", "bN"] = Field("b1", description="auto: fastest at batch 1 or at batch N")
    versus_baseline: bool = Field(False, description="also time the run's baseline model on every candidate, "
                                                     "interleaved with this one in its process, and report the ratio")

    @field_validator("precision", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("backend")
    @classmethod
    def _known_or_auto(cls, value: str) -> str:
        return value if value == "auto" else _check_backend(value)

    @field_validator("candidates")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for name in value:
                _check_backend(name)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "DeployConfig":
        if self.backend != "auto" and len(self.precision) != 1:
            raise ValueError(f"backend {self.backend!r}: give one precision, not {self.precision}")
        if self.backend != "auto" and self.candidates is not None:
            raise ValueError("'candidates' applies to backend 'auto' only")
        return self


@register_step("deploy", config=DeployConfig)
def deploy(model: nn.Module, cfg: DeployConfig, ctx: Context) -> StepResult:
    """Pick the runtime (or 'auto': the fastest within tolerance); later steps are measured on it."""
    from slimkit.backends.measure import ModelSpec, all_candidates, eager_reference, measure_backends, write_table
    from slimkit.core.io import save_state_dict
    from slimkit.core.registry import BACKENDS
    from slimkit.measure.config import MeasureConfig

    if ctx.out_dir is None or ctx.task_config is None:
        raise SlimkitError("deploy: runs inside a recipe run (it needs the run folder and the task's config)")
    measure = ctx.measure or MeasureConfig()
    device = ctx.target.device
    if cfg.backend == "auto":
        pairs = all_candidates(cfg.precision, cfg.candidates, device)
    else:
        pairs = [(cfg.backend, cfg.precision[0])]
    weights = save_state_dict(ctx.out_dir / "candidates" / "model.safetensors", model.state_dict())
    spec = ModelSpec(ctx.task_config, str(weights.resolve()), list(ctx.structures))
    versus = None
    if cfg.versus_baseline:
        if ctx.baseline_weights is None:
            raise SlimkitError("deploy: versus_baseline needs the run's baseline checkpoint (run it in a recipe)")
        versus = ModelSpec(ctx.task_config, str(Path(ctx.baseline_weights).resolve()), list(ctx.structures[:1]))
    runs = measure_backends(ctx.task, pairs, measure, ctx.out_dir / "candidates", spec=spec, model=model,
                            progress=ctx.progress, versus_spec=versus)
    rows = write_table(runs)
    key = "b1_ms" if cfg.objective == "b1" else "bN_ms"
    reference_quality = ctx.task.evaluate(eager_reference(model, ctx.task, measure), ctx.data.test.targets)["quality"]
    reference_val_quality = ctx.validate(model)
    integer = is_encoded(model, INTEGER_KINDS) and cfg.tolerance is None
    tolerance = None if integer else cfg.tolerance if cfg.tolerance is not None else default_tolerance(model)
    max_drop = INTEGER_QUALITY_DROP if integer and cfg.max_quality_drop is None else cfg.max_quality_drop
    graph_tolerance = _graph_tolerance(model, ctx) if integer else GRAPH_TOLERANCE
    for row in rows:
        row["decision"] = _verdict(row, tolerance, max_drop, reference_val_quality, graph_tolerance)
    eligible = [i for i, row in enumerate(rows) if row["decision"] == "eligible"]
    if not eligible:
        detail = "; ".join(f"{r['backend']}/{r['precision']}: {r['decision']}" for r in rows)
        raise SlimkitError(f"deploy: no backend qualifies ({detail})")
    best = min(eligible, key=lambda i: rows[i][key])
    for i in eligible:
        rows[i]["decision"] = (f"chosen: fastest at {cfg.objective} within tolerance" if i == best else
                               f"slower at {cfg.objective}: {rows[i][key]:.3f} ms vs {rows[best][key]:.3f} ms")
    chosen = runs[best]
    run_dir = f"candidates/{chosen.backend}-{chosen.precision}"
    info = {"backend": chosen.backend, "precision": chosen.precision, "objective": cfg.objective,
            "tolerance": tolerance, "max_quality_drop": max_drop,
            **({"graph_tolerance": graph_tolerance} if integer else {}),
            "judged_by": "quality (integer layers: output differences reported)" if integer else "outputs",
            "eager_fp32_quality": reference_quality, "eager_fp32_val_quality": reference_val_quality,
            "candidates": rows}
    target = Target(backend=chosen.backend, precision=chosen.precision,
                    device=BACKENDS.get(chosen.backend).device_for(device))
    measured = {**chosen.to_dict(), "artifact": [f"{run_dir}/{a}" for a in chosen.artifact]}
    return StepResult(model, info=info, target=target, measured=measured)


GRAPH_TOLERANCE = 0.01  # an integer model's exported graph vs eager, run without runtime optimisations: a
# rounding tie that ONNX Runtime's QuantizeLinear breaks otherwise than eager moves an output by about an
# LSB (0.3% on a tiny MLP sharing one Linear); a wrong graph moves outputs by far more
INTEGER_QUALITY_DROP = 1.0  # points of validation quality an integer model may lose to a runtime's rounding


def _graph_tolerance(model: nn.Module, ctx: Context) -> float:
    """How far an integer model's exported graph may sit from eager: ``GRAPH_TOLERANCE``, or what
    float-level noise on the rows the graph is compared on (the test split's first 64) moves the
    outputs, if more: the graph runs its float ops in another order, and a model that amplifies
    one flipped rounding tie cannot be held closer (see ``slimkit.measure.sensitivity``)."""
    from slimkit.measure.sensitivity import FLOAT_NOISE, rounding_sensitivity

    rows = tuple(t[:64].to(ctx.device) for t in ctx.data.test.inputs)
    return max(GRAPH_TOLERANCE, rounding_sensitivity(model.eval(), rows, noise=FLOAT_NOISE).output)


def default_tolerance(model: nn.Module) -> float:
    """1e-4 relative for a float model; 0.02 for one with layers that runtimes compute on integers
    (static and dynamic int8: their rounding differs from eager's float reference by an LSB)."""
    return 0.02 if is_encoded(model, INTEGER_KINDS) else 1e-4


def _verdict(row: dict[str, Any], tolerance: float | None, max_quality_drop: float | None,
             reference_val_quality: float, graph_tolerance: float = GRAPH_TOLERANCE) -> str:
    """'eligible', or why not: outputs beyond ``tolerance`` (None: a model with integer layers,
    whose exported graph must match eager before runtime optimisations within ``graph_tolerance``:
    ``GRAPH_TOLERANCE``, or more for a model whose outputs float-level noise moves more), or a
    validation quality more than ``max_quality_drop`` points below eager fp32's (the test split
    is never used to choose)."""
    if not row["ok"]:
        return row["error"] or "failed"
    if tolerance is None:
        graph = (row.get("info") or {}).get("graph_rel_diff")
        if graph is not None and graph > graph_tolerance:
            return (f"rejected: the exported graph, run without optimisations, differs from eager by {graph:.2g} "
                    f"> {graph_tolerance:.2g} (a wrong graph, not rounding)")
    elif row["max_rel_diff"] is not None and row["max_rel_diff"] > tolerance:
        return f"rejected: outputs differ from eager fp32 by {row['max_rel_diff']:.2g} > tolerance {tolerance:g}"
    if max_quality_drop is None:
        return "eligible"
    if row.get("val_quality") is None:
        return "rejected: no validation quality measured for max_quality_drop"
    drop = 100 * (reference_val_quality - row["val_quality"])
    if drop > max_quality_drop:
        return (f"rejected: validation quality drops by {drop:.3g} points > max_quality_drop "
                f"{max_quality_drop:g}")
    return "eligible"
