"""The ``tinyml`` step: the run's int8 model as C for microcontrollers, proven on the test rows.

It writes the C package (``<name>.h``, ``<name>.c``, ``slimkit_kernels.h``) into the step's
folder, compiles the host harness, runs every test row through it and through the Python integer
reference (bit-exactness is a hard check: a mismatch fails the step), scores the C's outputs
with the task's metric beside the int8 model's eager quality, measures the arena bytes a run
touches, checks that the model compiles without floating point, cross-compiles for a Cortex-M4
where ``arm-none-eabi-gcc`` is installed, and reports the footprint against microcontroller
classes. The model itself passes on unchanged (later steps still see the int8 model).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from typing import Literal

from pydantic import Field, field_validator, model_validator

from slimkit.core.config import Config
from slimkit.core.errors import SlimkitError
from slimkit.core.step import StepResult, register_step
from slimkit.tasks.context import Context
from slimkit.train.config import TrainConfig, TrainingStepConfig


class PatchConfig(Config):
    ops: int = Field(ge=1, description="how many of the first ops run patch by patch")
    grid: int = Field(ge=1, le=32, description="tiles per side of the stage's output map")


class TinyMLConfig(Config):
    name: str = Field("slimkit_model", description="C identifier prefix of the generated files and functions")
    calibration_samples: int = Field(512, ge=1, description="training rows on which to observe the range of "
                                                            "tensors that have no quantizer (e.g. a residual sum "
                                                            "read only by a global pooling)")
    in_place: bool = Field(True, description="let ReLU, requantize, add and depthwise conv write over their input "
                                             "(smaller arena)")
    patch: Literal["off", "auto"] | PatchConfig = Field(
        "off", description="run the first layers patch by patch (MCUNetV2): 'auto' takes the stage and grid with "
                           "the smallest arena, {ops, grid} a given one; smaller SRAM for recomputed halos (MACs)")
    require_fit: str | None = Field(None, description="a target the model must fit (e.g. cortex-m4-256k); the "
                                                      "step fails with what overflows otherwise")
    check_rows: int | None = Field(None, ge=1, description="test rows run through the C (default: all)")
    sanitize: bool = Field(False, description="also run the test rows through a harness built with "
                                              "AddressSanitizer and UndefinedBehaviorSanitizer")

    @field_validator("name")
    @classmethod
    def _c_identifier(cls, value: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"name must be a C identifier (letters, digits, _; not starting with a digit), got {value!r}")
        return value

    @field_validator("require_fit")
    @classmethod
    def _known_target(cls, value: str | None) -> str | None:
        from slimkit.backends.tinyml.report import TARGETS

        if value is not None and value not in TARGETS:
            raise ValueError(f"unknown target {value!r} (known: {', '.join(TARGETS)})")
        return value


@register_step("tinyml", config=TinyMLConfig)
def tinyml(model: nn.Module, cfg: TinyMLConfig, ctx: Context) -> StepResult:
    """Generate the int8 model as C99 for microcontrollers, check it bit for bit and report its footprint."""
    import numpy as np

    from slimkit.backends.tinyml import build
    from slimkit.backends.tinyml.codegen import write_sources
    from slimkit.backends.tinyml.graph import lower
    from slimkit.backends.tinyml.patch import choose_patching, patch_graph
    from slimkit.backends.tinyml.planner import plan_memory
    from slimkit.backends.tinyml.reference import dequantize_output, quantize_input, run_reference
    from slimkit.backends.tinyml.report import TARGETS, footprint
    from slimkit.data.batches import calibration_batches

    if ctx.out_dir is None:
        raise SlimkitError("tinyml: runs inside a recipe run (it writes the C files to the step's folder)")
    model = model.cpu().eval()
    rows = torch.cat([b[0] for b in calibration_batches(ctx.data.train, cfg.calibration_samples, 256, ctx.seed)])
    graph = lower(model, rows[:1], calibration=rows)
    whole_arena = plan_memory(graph, in_place=cfg.in_place).peak
    patching: dict = {"mode": "off"}
    if cfg.patch == "auto":
        choice = choose_patching(graph, in_place=cfg.in_place)
        patching = {"mode": "auto", "candidates": len(choice.tried) if choice else 0}
        if choice is not None:
            graph = choice.graph
    elif isinstance(cfg.patch, PatchConfig):
        graph = patch_graph(graph, cfg.patch.ops, cfg.patch.grid)
        patching = {"mode": "given"}
    if graph.ops[0].kind == "patch_stage":
        stage = graph.ops[0].attrs
        patching.update(ops=len(stage["ops"]), grid=stage["grid"], scratch_bytes=stage["scratch_bytes"],
                        executed_macs=stage["executed_macs"] + sum(op.macs(graph.tensors) for op in graph.ops[1:]))
    plan = plan_memory(graph, in_place=cfg.in_place)
    folder = ctx.out_dir / "c"
    write_sources(graph, plan, folder, cfg.name)
    test = ctx.data.test
    n = len(test) if cfg.check_rows is None else min(cfg.check_rows, len(test))
    x, targets = test.inputs[0][:n].cpu(), test.targets[:n]
    codes = quantize_input(graph, x)
    reference = run_reference(graph, codes)
    ran = build.run_harness(build.compile_harness(folder, cfg.name), graph, codes, high_water=True)
    mismatched = int((ran.outputs.reshape(n, -1) != reference.reshape(n, -1)).any(axis=1).sum())
    if mismatched:
        raise SlimkitError(f"tinyml: the generated C differs from the Python integer reference on {mismatched} of "
                           f"{n} test rows (a defect in slimkit's C generator; please report it with the recipe)")
    if cfg.sanitize:
        sanitized = build.run_harness(build.compile_harness(folder, cfg.name, sanitize=True), graph, codes)
        if not np.array_equal(sanitized.outputs, reference):
            raise SlimkitError("tinyml: the sanitized harness's outputs differ from the reference")
    no_float = build.check_no_float(folder, cfg.name)
    arm = build.arm_cross_compile(folder, cfg.name)
    fp = footprint(graph, plan, arm)
    with torch.no_grad():
        eager = torch.cat([model(x[i:i + 256]) for i in range(0, n, 256)])
    c_quality = ctx.task.evaluate(dequantize_output(graph, ran.outputs), targets)["quality"]
    eager_quality = ctx.task.evaluate(eager, targets)["quality"]
    fits = {t: fp.fit(TARGETS[t]) for t in TARGETS}
    if cfg.require_fit and not fits[cfg.require_fit]["fits"]:
        raise SlimkitError(f"tinyml: the model does not fit {cfg.require_fit}: {fits[cfg.require_fit]['why']}")
    info = {
        "files": [str(p.relative_to(ctx.out_dir)) for p in build.source_files(folder, cfg.name)],
        "test_rows": n, "bit_exact_rows": n, "c_quality": c_quality, "int8_eager_quality": eager_quality,
        **fp.to_dict(), "constant_bytes": graph.const_bytes(), "arena_high_water": ran.high_water, "naive_arena_bytes": plan.naive,
        "whole_map_arena_bytes": whole_arena, "patch": patching,
        "in_place_ops": len(plan.in_place), "ops": len(graph.ops),
        "no_float_check": no_float or "passed (compiled with -mgeneral-regs-only)",
        "arm": arm if isinstance(arm, str) else {"text": arm.text, "data": arm.data, "bss": arm.bss,
                                                 "float_calls": arm.float_calls, "compiler": arm.compiler},
        "sanitized": cfg.sanitize,
    }
    return StepResult(model, info)


class OnDeviceTrainConfig(TrainingStepConfig):
    mode: Literal["auto", "bias", "last", "bias+last", "full"] = Field(
        "auto", description="what trains on the device (TinyTL): biases, the last layer, both, or every weight; "
                            "auto: the mode with the most trained parameters whose SRAM fits budget_bytes")
    budget_bytes: int | None = Field(None, ge=1, description="SRAM one training step may use (arena, what the "
                                                             "backward pass needs, trained parameters' state)")
    finetune: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=10, batch_size=8, lr=0.01,
                                                                      optimizer="sgd", keep_best=False),
                                  description="training settings (SGD with momentum by default, as on a device)")

    @model_validator(mode="after")
    def _auto_needs_budget(self) -> "OnDeviceTrainConfig":
        if self.mode == "auto" and self.budget_bytes is None:
            raise ValueError("mode 'auto' chooses within budget_bytes: give budget_bytes or a mode")
        return self


def _optimizer_name(cfg: TrainConfig) -> str:
    return "sgd-momentum" if cfg.optimizer == "sgd" and cfg.momentum > 0 else cfg.optimizer


@register_step("on_device_train", config=OnDeviceTrainConfig)
def on_device_train(model: nn.Module, cfg: OnDeviceTrainConfig, ctx: Context) -> StepResult:
    """Fine-tune an int8 model as a microcontroller could (TinyTL): only biases and/or the last layer, within an SRAM budget."""
    from slimkit.backends.tinyml.graph import lower
    from slimkit.backends.tinyml.ondevice import MODES, train_on_device, training_memory

    model = model.cpu()
    rows = ctx.data.train.inputs[0][:1].cpu()
    graph = lower(model.eval(), rows, calibration=ctx.data.train.inputs[0][:256].cpu())
    optimizer = _optimizer_name(cfg.finetune)
    memory = {m: training_memory(graph, model, m, optimizer) for m in MODES}
    if cfg.mode == "auto":
        fitting = [m for m in MODES if memory[m].total_bytes <= cfg.budget_bytes]
        if not fitting:
            need = min(memory.values(), key=lambda m: m.total_bytes)
            raise SlimkitError(f"on_device_train: no mode fits budget_bytes={cfg.budget_bytes:,}; the smallest, "
                               f"{need.mode!r}, needs {need.total_bytes:,} B")
        mode = max(fitting, key=lambda m: memory[m].trained_params)
    else:
        mode = cfg.mode
        if cfg.budget_bytes is not None and memory[mode].total_bytes > cfg.budget_bytes:
            raise SlimkitError(f"on_device_train: mode {mode!r} needs {memory[mode].total_bytes:,} B of SRAM, over "
                               f"budget_bytes={cfg.budget_bytes:,}")
    model, fit = train_on_device(model, ctx, mode, cfg.finetune)
    return StepResult(model, {"mode": mode, "sram_bytes": memory[mode].total_bytes, **fit,
                              "memory": {m: v.to_dict() for m, v in memory.items()}})
