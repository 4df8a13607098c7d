"""``torch.compile`` with the inductor backend: generated C++/OpenMP (or Triton on CUDA) kernels.

The artifact is the weights file: inductor compiles at load time, so what ships is the
same safetensors file as eager plus the compile time reported here.
"""

from __future__ import annotations

import shutil

import torch

from slimkit.backends.base import Availability, Built
from slimkit.backends.eager import EagerBackend, prepare_torch_model, torch_runner
from slimkit.core.registry import BACKENDS


@BACKENDS.register("torch_compile", summary="torch.compile (inductor); fp32, bf16 (fp16 on CUDA)")
class TorchCompileBackend(EagerBackend):
    """Eager's precisions and artifact, with the model compiled by inductor."""

    name = "torch_compile"

    @classmethod
    def available(cls) -> Availability:
        if torch.cuda.is_available() or any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
            return Availability(True)
        return Availability(False, "inductor needs a C++ compiler on the CPU (g++ or clang++) and none is on PATH")

    @classmethod
    def build(cls, model, example_inputs, *, precision, threads, workdir, device, spin_wait=True) -> Built:
        model, artifact = prepare_torch_model(model, precision, device, workdir)
        run = torch_runner(torch.compile(model, backend="inductor", dynamic=None), precision, device)
        run(*example_inputs)  # the first call compiles: counted in the compile time
        return Built(run, artifact, {"artifact": "weights; inductor compiles at load time"})
