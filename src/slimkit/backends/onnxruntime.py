"""ONNX Runtime: the model exported through ``torch.export`` and ``torch.onnx`` (dynamo exporter),
run with all graph optimisations on the CPU execution provider (CUDA's where asked and present).

The exported graph keeps dynamic batch (and, for token inputs, sequence) dimensions, so one
``.onnx`` file serves batch 1, batch N and the evaluation batches.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from slimkit.core.outputs import returns_tensor
from slimkit.encoding import is_encoded
from slimkit.encoding.layer import INTEGER_KINDS
from slimkit.backends.base import Availability, Backend, Built, export_program, packages_available, traceable
from slimkit.core.registry import BACKENDS


def export_onnx(model: nn.Module, example_inputs: Sequence[torch.Tensor], path: Path, *,
                contrib_ops: bool = False, target: str = "onnx") -> Path:
    """``model`` as an ONNX file at ``path`` (written to a temporary name, then renamed).

    ``contrib_ops``: the file is for ONNX Runtime only and may use its ``com.microsoft`` operators
    (weight-only int4/int8 linears as ``MatMulNBits``); without it, standard ONNX only (what
    OpenVINO and TensorRT read). ``target`` names the runtime a standard file is for, where a
    layer writes itself differently for it (``"openvino"``: see ``encoding.export``).

    The exporter does not give up at its first failure. Routes, in order: ``torch.export`` + the
    dynamo exporter; the same program decomposed to core ATen by torch first (where the
    exporter's own decompositions fail: transformers' Swin, a ``view`` of a non-contiguous
    tensor); the TorchScript exporter (where ``torch.export`` fails, or the dynamo exporter wrote
    a graph that does not load: BEiT's relative position bias). A route's file counts only once
    ONNX Runtime loads it. The route taken is stored in the file's metadata (``slimkit.export``,
    with the earlier routes' errors in ``slimkit.export_failures``); callers compare the file's
    outputs with eager's either way."""
    import warnings

    failures: list[str] = []
    model = traceable(model)
    target = "onnxruntime" if contrib_ops else target
    program: list = []  # torch.export's program, made once for both dynamo routes

    def exported():
        if not program:
            program.append(export_program(model, example_inputs, target=target))
        return program[0]

    def dynamo(decompose: bool, contiguous: bool = False):
        ep = _contiguous_before_views(exported()) if contiguous else exported()
        onnx_program = torch.onnx.export(_core_aten(ep) if decompose else ep, tuple(example_inputs),
                                         dynamo=True, verbose=False, optimize=False)
        _optimize(onnx_program.model)
        return onnx_program.model_proto

    routes = (("dynamo", lambda: dynamo(False)), ("dynamo+contiguous", lambda: dynamo(False, contiguous=True)),
              ("dynamo+core-aten", lambda: dynamo(True)),
              ("torchscript", lambda: _torchscript_export(model, example_inputs)))
    proto = route = None
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        for name, make in routes:
            if name.startswith("dynamo+") and not program:
                failures.append(f"{name}: skipped (torch.export failed)")
                continue
            if name == "dynamo+contiguous" and not _has_view_of_transpose(exported()):
                continue
            if name == "torchscript" and is_encoded(model, INTEGER_KINDS):
                failures.append(f"{name}: skipped (integer layers export through torch.export only)")
                continue
            try:
                proto = make()
                _compact(proto, {"slimkit.export": name,
                                 **({"slimkit.export_failures": " | ".join(failures)} if failures else {})})
                _check_loads(proto)
                route = name
                break
            except Exception as err:  # noqa: BLE001 - recorded, and the next route tried
                failures.append(f"{name}: {plain_error(err)}")
    if route is None:
        from slimkit.core.errors import UnsupportedModelError

        raise UnsupportedModelError("ONNX export failed on every route (" + "; ".join(failures) + ")")
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path


def unoptimized_difference(path: Path, model: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
    """max |out - eager| / max |eager| of the ONNX file at ``path`` run by ONNX Runtime with every
    graph optimisation off (QuantizeLinear, DequantizeLinear and float ops as written, no integer
    kernels). Near 0 proves the exported graph computes what eager does; for a model with integer
    layers, what a runtime's integer kernels add beyond it is rounding."""
    import onnxruntime as ort

    from slimkit.backends.base import first_output

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    out = torch.from_numpy(session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)})[0])
    with torch.no_grad():
        eager = first_output(model.eval()(*inputs)).float()
    return float((out - eager).abs().max() / eager.abs().max().clamp_min(1e-12))


def _check_loads(proto) -> None:
    """Raise unless ONNX Runtime (where installed) accepts the graph: the dynamo exporter can
    write a graph that fails shape inference (an ``Unsqueeze`` axis out of range)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _views_of_transposes(program: torch.export.ExportedProgram) -> list[torch.fx.Node]:
    """The view/reshape nodes of ``program`` that read a transpose's or permute's output."""
    aten = torch.ops.aten
    views = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
    moves = {aten.transpose.int, aten.permute.default}
    return [n for n in program.graph_module.graph.nodes
            if n.op == "call_function" and n.target in views and isinstance(n.args[0], torch.fx.Node)
            and n.args[0].target in moves]


def _has_view_of_transpose(program: torch.export.ExportedProgram) -> bool:
    return bool(_views_of_transposes(program))


def _contiguous_before_views(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """A copy of ``program`` with a contiguous clone between each transpose/permute and the
    view/reshape that reads it. With a symbolic batch size the exporter's decomposition can turn
    such a reshape into a ``view`` its own shape check then rejects (transformers' BEiT attention:
    "Cannot view a tensor with shape [s77, 17, 2, 16] and strides (544, 16, 272, 1)"); on
    contiguous memory the view is always valid. The clone is an ONNX Identity, removed by the
    optimiser, so the file computes the same."""
    import copy

    program = copy.deepcopy(program)
    graph = program.graph_module.graph
    for node in _views_of_transposes(program):
        source = node.args[0]
        with graph.inserting_before(node):
            clone = graph.call_function(torch.ops.aten.clone.default, (source,),
                                        {"memory_format": torch.contiguous_format})
        clone.meta = dict(source.meta)
        node.replace_input_with(source, clone)
    program.graph_module.recompile()
    return program


def _core_aten(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` decomposed by torch's own core-ATen table, before the exporter's: where the
    exporter's decompositions fail (transformers' Swin), torch's succeed. ``linear`` is kept
    whole: decomposed it becomes reshape -> mm -> reshape, and OpenVINO's int8 transformations
    apply a quantized Linear's per-channel scales wrongly through that reshape (Swin int8 on
    OpenVINO was 0.73 away from eager that way)."""
    table = torch.export.default_decompositions()
    table.pop(torch.ops.aten.linear.default, None)
    return program.run_decompositions(table)


def plain_error(err: BaseException) -> str:
    """One line for an exception: its type and first line, and its cause's (torch.onnx wraps the
    real reason, e.g. a ``view`` that cannot apply, in a ``ConversionError``), without the ANSI
    colour codes torch.onnx adds."""
    import re

    def first(e: BaseException) -> str:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
        return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"

    cause = err.__cause__
    return first(err) + (f" ({first(cause)})" if cause is not None else "")


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx logs each stage (and torchvision's absence) and onnxscript's constant folder what
    it could not fold, at WARNING: not for a user's console."""
    import logging

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration",
                                              "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _torchscript_export(model: nn.Module, example_inputs: Sequence[torch.Tensor]):
    """The TorchScript exporter's ONNX model, with the dynamic batch (and token sequence) axes the
    dynamo route gives. Encoded layers export their float decoding here (``export_target`` is
    unset outside ``torch.export``)."""
    import io

    import onnx

    from slimkit.backends.base import is_token_input

    names = [f"input_{i}" for i in range(len(example_inputs))]
    axes = {n: ({0: "batch", 1: "sequence"} if is_token_input(t) else {0: "batch"}) for n, t in zip(names, example_inputs)}
    buffer = io.BytesIO()
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # its errors print the whole graph
        torch.onnx.export(returns_tensor(model.eval(), example_inputs), tuple(example_inputs), buffer,
                          dynamo=False, input_names=names,
                          output_names=["output"], dynamic_axes=axes, opset_version=18)
    return onnx.load_from_string(buffer.getvalue())


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


def _compact(model, metadata: dict[str, str]) -> None:
    """Strip the ONNX model of debug metadata, long names and re-quantizations
    (:func:`slimkit.backends.onnx_graph.compact`), in place, with ``metadata`` in its properties."""
    import onnx

    from slimkit.backends.onnx_graph import compact

    compact(model)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **metadata})


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
    control_flow = True
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
    info = {"providers": session.get_providers(), "onnxruntime": ort.__version__}
    route = session.get_modelmeta().custom_metadata_map.get("slimkit.export")
    if route:
        info["export"] = route
    return Built(session_runner(session), [Path(path)], info)
