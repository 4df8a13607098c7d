"""``torch.compile`` with the inductor backend: generated C++/OpenMP (or Triton on CUDA) kernels.

The artifact is the weights file: inductor compiles at load time, so what ships is the
same safetensors file as eager plus the compile time reported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from slimkit.backends.base import Availability, Compiled, check_precision, require, timed
from slimkit.backends.eager import prepare_torch_model, torch_precisions, torch_runner
from slimkit.core.registry import BACKENDS


@BACKENDS.register("torch_compile", summary="torch.compile (inductor); fp32, bf16 (fp16 on CUDA)")
class TorchCompileBackend:
    name = "torch_compile"

    @staticmethod
    def available() -> Availability:
        import shutil

        if torch.cuda.is_available() or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++"):
            return Availability(True)
        return Availability(False, "inductor needs a C++ compiler on the CPU (g++ or clang++) and none is on PATH")

    @staticmethod
    def precisions(device: str = "cpu") -> tuple[str, ...]:
        return torch_precisions(device)

    @classmethod
    def compile(cls, model: nn.Module, example_inputs: Sequence[torch.Tensor], *, precision: str = "fp32",
                threads: int | None = None, workdir: Path, device: str = "cpu") -> Compiled:
        require(cls)
        check_precision(cls, precision, device)
        with timed() as t:
            model, artifact = prepare_torch_model(model.to(device), precision, workdir)
            compiled = torch.compile(model, backend="inductor", dynamic=None)
            run = torch_runner(compiled, precision, torch.device(device))
            run(*example_inputs)  # the first call compiles; count it as compile time
        return Compiled(run, cls.name, precision, artifact, compile_seconds=t[0],
                        info={"artifact": "weights; inductor compiles at load time"})
