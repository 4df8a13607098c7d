"""Eager PyTorch: the reference backend every other runtime is compared to."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn

from slimkit.backends.base import TORCH_DTYPES, Backend, Built, cast_floats, first_output
from slimkit.core.io import save_state_dict
from slimkit.core.registry import BACKENDS


def torch_precisions(device: str) -> tuple[str, ...]:
    # fp16 matmuls on CPUs without native fp16 arithmetic take seconds (docs/ARCHITECTURE.md):
    # offered on CUDA only; bf16 on CPUs that compute it natively (emulated, it is slower than fp32)
    from slimkit.core.hardware import cpu_has_native_bf16

    if device == "cuda":
        return ("fp32", "bf16", "fp16")
    return ("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",)


def prepare_torch_model(model: nn.Module, precision: str, device: str, workdir: Path) -> tuple[nn.Module, list[Path]]:
    """The model on ``device`` in ``precision`` (a copy unless fp32) and its weights saved as the artifact."""
    model = model.to(device)
    if precision != "fp32":
        model = copy.deepcopy(model).to(TORCH_DTYPES[precision])
    path = save_state_dict(workdir / "model.safetensors", model.state_dict())
    return model, [path]


def torch_runner(fn, precision: str, device: str):
    dtype = TORCH_DTYPES[precision]

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return first_output(fn(*cast_floats([t.to(device) for t in inputs], dtype)))

    return run


@BACKENDS.register("eager", summary="eager PyTorch (the reference runtime); fp32, bf16 (fp16 on CUDA)")
class EagerBackend(Backend):
    name = "eager"
    reads_sparse_encoding = True

    @classmethod
    def precisions(cls, device: str = "cpu") -> tuple[str, ...]:
        return torch_precisions(device)

    @classmethod
    def build(cls, model, example_inputs, *, precision, threads, workdir, device, spin_wait=True) -> Built:
        model, artifact = prepare_torch_model(model, precision, device, workdir)
        return Built(torch_runner(model, precision, device), artifact)
