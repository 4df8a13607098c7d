"""TinyML: slimkit's int8 models as dependency-free C for microcontrollers (the ``tinyml`` backend).

``lower`` (graph.py) turns a static int8 model into integer ops; ``plan_memory`` (planner.py)
places every tensor in one arena; ``write_sources`` (codegen.py) writes C99 with the weights in
flash and no heap or floating point; build.py compiles it (host harness, shared library, ARM
cross-compile) and report.py checks the footprint against microcontroller classes. The Python
integer reference (reference.py) is what the C is tested against, bit for bit.

As a deploy backend the generated C runs on this host through ctypes: quality is the C's, and
latency is this CPU's (a microcontroller's would be orders of magnitude longer).
"""

from __future__ import annotations

from pathlib import Path

import torch

from slimkit.backends.base import Availability, Backend, Built
from slimkit.core.registry import BACKENDS


@BACKENDS.register("tinyml", summary="generated C99 int8 code for microcontrollers, compiled with the host gcc "
                                     "(needs a static int8 model)")
class TinyMLBackend(Backend):
    name = "tinyml"
    int8_only = True

    @classmethod
    def available(cls) -> Availability:
        from slimkit.backends.tinyml.build import host_compiler

        if host_compiler() is None:
            return Availability(False, "no C compiler on PATH (gcc, or set CC); apt install gcc")
        return Availability(True)

    @classmethod
    def device_for(cls, requested: str) -> str:
        return "cpu"

    @classmethod
    def build(cls, model, example_inputs, *, precision, threads, workdir, device, spin_wait=True) -> Built:
        return build_c_model(model, example_inputs, Path(workdir))


def build_c_model(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], workdir: Path,
                  name: str = "slimkit_model") -> Built:
    """Lower, plan, generate, compile (shared library; ARM size where the cross compiler is
    installed); a runnable taking float inputs (quantized on the host as the model's first
    quantizer does) and returning the dequantized output."""
    from slimkit.backends.tinyml import build
    from slimkit.backends.tinyml.codegen import c_identifier, write_sources
    from slimkit.backends.tinyml.graph import lower
    from slimkit.backends.tinyml.planner import plan_memory
    from slimkit.backends.tinyml.reference import dequantize_output, quantize_input
    from slimkit.backends.tinyml.report import footprint
    from slimkit.core.errors import UnsupportedModelError

    if len(example_inputs) != 1:
        raise UnsupportedModelError(f"tinyml: the model takes {len(example_inputs)} inputs; one image tensor is supported")
    name = c_identifier(name)
    graph = lower(model.cpu(), example_inputs[0].cpu())
    plan = plan_memory(graph)
    write_sources(graph, plan, workdir, name)
    shared = build.SharedModel(build.compile_shared(workdir, name), graph, name)
    arm = build.arm_cross_compile(workdir, name)
    fp = footprint(graph, plan, arm)

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        return dequantize_output(graph, shared.run(quantize_input(graph, inputs[0].cpu())))

    info = {**fp.to_dict(), "naive_arena_bytes": plan.naive, "in_place_ops": len(plan.in_place),
            "ops": len(graph.ops), "arm": arm if isinstance(arm, str) else
            {"text": arm.text, "data": arm.data, "bss": arm.bss, "compiler": arm.compiler}}
    return Built(run, build.source_files(workdir, name), info)


from slimkit.backends.tinyml import step  # noqa: E402,F401 - registers the ``tinyml`` recipe step
