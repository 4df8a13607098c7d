"""Apache TVM (Relax): ``torch.export`` program -> ``from_exported_program`` -> ``tvm.compile`` for
the host CPU (LLVM, ``mcpu`` of this machine) -> a shared library run by the Relax VM.

TVM's default CPU schedules are untuned; MetaSchedule tuning is what makes TVM fast and takes
minutes to hours per model, so it is not run here (docs/ARCHITECTURE.md, "Backends"). Where the
Relax frontend cannot lower a graph with symbolic shapes (MiniLM's attention, in 0.27), the
backend compiles one library per input shape, on first use of that shape, and says so.
The thread count comes from ``TVM_NUM_THREADS``, read once when TVM starts its thread pool: the
isolated runner sets it before importing TVM.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from slimkit.backends.base import Availability, Backend, Built, export_program, packages_available
from slimkit.core.registry import BACKENDS


def _build(model: nn.Module, example_inputs: Sequence[torch.Tensor], lib: Path, dynamic: bool) -> Any:
    import warnings

    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = export_program(model, example_inputs, dynamic=dynamic)
        mod = from_exported_program(program, keep_params_as_input=False)  # weights are constants in the library
    target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    executable = tvm.compile(mod, target=target)
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_name(f".tmp-{lib.name}")
    executable.export_library(str(tmp))
    os.replace(tmp, lib)
    return relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())


def _runner(vm_for):
    import tvm

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        vm = vm_for(inputs)
        out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(t.detach().cpu().numpy())) for t in inputs])
        while not hasattr(out, "numpy"):
            out = out[0]
        return torch.from_numpy(out.numpy()).float()

    return run


@BACKENDS.register("tvm", summary="Apache TVM Relax, LLVM for this CPU (untuned schedules); fp32")
class TvmBackend(Backend):
    name = "tvm"

    @classmethod
    def available(cls) -> Availability:
        return packages_available("tvm", "tvm.relax.frontend.torch", extra="tvm")

    @classmethod
    def precisions(cls, device: str = "cpu") -> tuple[str, ...]:
        return ("fp32",) if device == "cpu" else ()

    @classmethod
    def build(cls, model, example_inputs, *, precision, threads, workdir, device, spin_wait=True) -> Built:
        if threads:
            os.environ.setdefault("TVM_NUM_THREADS", str(threads))
        model = model.cpu()
        info: dict[str, Any] = {"schedules": "untuned (TVM default CPU pipeline)"}
        try:
            vm = _build(model, example_inputs, workdir / "model.so", dynamic=True)
            vm_for = lambda inputs: vm  # noqa: E731
            info["shapes"] = "dynamic"
        except Exception as err:  # noqa: BLE001 - any lowering failure falls back to static shapes
            info["shapes"] = "static: one library per input shape"
            info["dynamic_failed"] = str(err).strip().splitlines()[0][:200]
            cache: dict[tuple, Any] = {}

            def vm_for(inputs):
                key = tuple(tuple(x.shape) for x in inputs)
                if key not in cache:
                    name = "model.so" if not cache else f"model-{len(cache)}.so"
                    cache[key] = _build(model, inputs, workdir / name, dynamic=False)
                return cache[key]

        run = _runner(vm_for)
        run(*example_inputs)
        return Built(run, [workdir / "model.so"], info)
