"""ONNX Runtime: the model exported through ``torch.export`` and ``torch.onnx`` (dynamo exporter),
run with all graph optimisations on the CPU execution provider (CUDA's where asked and present).

The exported graph keeps dynamic batch (and, for token inputs, sequence) dimensions, so one
``.onnx`` file serves batch 1, batch N and the evaluation batches.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from slimkit.backends.base import Availability, Backend, Built, export_program, packages_available
from slimkit.core.registry import BACKENDS


def export_onnx(model: nn.Module, example_inputs: Sequence[torch.Tensor], path: Path, *,
                contrib_ops: bool = False) -> Path:
    """``model`` as an ONNX file at ``path`` (written to a temporary name, then renamed).

    ``contrib_ops``: the file is for ONNX Runtime only and may use its ``com.microsoft`` operators
    (weight-only int4/int8 linears as ``MatMulNBits``); without it, standard ONNX only (what
    OpenVINO and TensorRT read)."""
    import warnings

    program = export_program(model, example_inputs, target="onnxruntime" if contrib_ops else "onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(program, tuple(example_inputs), dynamo=True, verbose=False, optimize=False)
        _optimize(onnx_program.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx_program.save(str(tmp))
    _compact(tmp)
    os.replace(tmp, path)
    return path


def _optimize(model) -> None:
    """The exporter's own optimisation (onnxscript's constant folding and fusions), except that no
    node reading a uint8 constant is folded: those are packed weight encodings (4-bit codes,
    sparse bitmasks) that the file must ship packed, not as the float tensor they decode to
    (onnxscript folds results of up to 262,144 elements, so small layers came out dense). Nor is
    a ``Range``: HashedNets' bucket indices are computed from one, and folded they would ship as
    an int64 tensor twice the size of the weight they replace. Runtimes fold both at load time."""
    import onnx_ir as ir
    import onnxscript
    from onnxscript.rewriter import onnx_fusions

    def should_fold(node) -> bool | None:
        if node.op_type == "Range":
            return False
        for value in node.inputs:
            const = None if value is None else value.const_value
            if const is not None and const.dtype == ir.DataType.UINT8 and const.size > 1:
                return False
        return None

    onnxscript.optimizer.optimize_ir(model, should_fold=should_fold)
    onnx_fusions.fuse(model)


def _compact(path: Path) -> None:
    """Rewrite the file without debug metadata, long names or re-quantizations
    (:func:`slimkit.backends.onnx_graph.compact`)."""
    import onnx

    from slimkit.backends.onnx_graph import compact

    model = onnx.load(str(path))
    compact(model)
    onnx.save(model, str(path))


def session_runner(session):
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(names):
            from slimkit.core.errors import SlimkitError

            raise SlimkitError(f"onnxruntime: the model takes {len(names)} inputs ({', '.join(names)}), got {len(inputs)}")
        feeds = {n: np.ascontiguousarray(t.detach().cpu().numpy()) for n, t in zip(names, inputs)}
        return torch.from_numpy(np.asarray(session.run(None, feeds)[0])).float()

    return run


@BACKENDS.register("onnxruntime", summary="ONNX Runtime (torch.onnx dynamo export, all graph optimisations); fp32")
class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    reads_sparse_encoding = True
    spin_waits = True  # its intra-op worker threads spin after each call unless told not to

    @classmethod
    def available(cls) -> Availability:
        return packages_available("onnx", "onnxscript", "onnxruntime", extra="onnx")

    @classmethod
    def build(cls, model, example_inputs, *, precision, threads, workdir, device, spin_wait=True) -> Built:
        path = export_onnx(model.cpu(), example_inputs, workdir / "model.onnx", contrib_ops=True)
        return load_onnx(path, threads=threads, device=device, spin_wait=spin_wait)


def load_onnx(path: Path, *, threads: int | None = None, device: str = "cpu", spin_wait: bool = True) -> Built:
    """An ONNX file (slimkit's export or anyone's) in an ONNX Runtime session configured as this
    backend runs it: all graph optimisations, ``threads`` intra-op threads, one inter-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spin_wait:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(path), options, providers=providers)
    return Built(session_runner(session), [Path(path)], {"providers": session.get_providers(),
                                                        "onnxruntime": ort.__version__})
