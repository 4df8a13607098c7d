"""OpenVINO on its CPU plugin: the model converted from a ``torch.export`` program to OpenVINO IR.

Two defaults of OpenVINO would make an "FP32" figure quietly something else, so both are set
explicitly: the CPU plugin runs bf16 on CPUs that support it unless ``INFERENCE_PRECISION_HINT``
says otherwise, and ``save_model`` compresses weights to fp16 unless told not to. Here the
precision is always asked for by name, and weights are saved as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from slimkit.backends.base import Availability, Backend, Built, export_program, packages_available
from slimkit.core.registry import BACKENDS

HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
CAPABILITY = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16"}


def save_ir(model: nn.Module, example_inputs: Sequence[torch.Tensor], xml: Path) -> list[Path]:
    """OpenVINO IR (``.xml`` + ``.bin``, weights uncompressed) written through temporary names."""
    import os
    import warnings

    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from slimkit.encoding import is_encoded

        ir, route = None, None
        if not is_encoded(model, ("quantized", "dynamic_int8")):
            try:
                ir, route = ov.convert_model(export_program(model, example_inputs)), "torch.export"
                _check_against_eager(ir, model, example_inputs)
            except Exception:  # noqa: BLE001 - the ONNX route below has its own fallbacks and errors
                ir = None
        if ir is None:
            # Quantized layers: OpenVINO's torch.export frontend does not take convolutions on
            # dequantized weights; its ONNX frontend reads QuantizeLinear/DequantizeLinear as
            # FakeQuantize, which its low-precision transformations run as int8. Any other model
            # that its torch.export frontend refused goes this way too.
            import onnx

            from slimkit.backends.onnx_graph import unshare_zero_points
            from slimkit.backends.onnxruntime import export_onnx

            path = export_onnx(model, example_inputs, xml.with_name(f".tmp-{xml.stem}.onnx"), target="openvino")
            graph = onnx.load(str(path))
            route = "onnx/" + next((p.value for p in graph.metadata_props if p.key == "slimkit.export"), "?")
            if unshare_zero_points(graph):
                onnx.save(graph, str(path))
            try:
                ir = ov.convert_model(str(path))
            except Exception as err:  # noqa: BLE001 - an op OpenVINO cannot convert is named, in one line
                raise _unconverted(err) from None
            finally:
                path.unlink()
        ir.set_rt_info(route, ["slimkit", "export"])
    tmp_xml = xml.with_name(f".tmp-{xml.name}")
    ov.save_model(ir, str(tmp_xml), compress_to_fp16=False)
    os.replace(tmp_xml.with_suffix(".bin"), xml.with_suffix(".bin"))
    os.replace(tmp_xml, xml)
    return [xml, xml.with_suffix(".bin")]


def _unconverted(err: Exception) -> Exception:
    """OpenVINO's conversion failure as an ``UnsupportedModelError`` naming the operators it could
    not convert and why (transformers' EfficientNet: an AveragePool whose kernel, 320, exceeds its
    1x1 input, which PyTorch's ceil_mode allows), or the error itself if it is something else."""
    from slimkit.core.errors import UnsupportedModelError

    text = str(err)
    if "Conversion is failed for" not in text:
        return err
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    summary = lines.index("Summary:") if "Summary:" in lines else len(lines)
    ops = [line.split("for:", 1)[1].strip() for line in lines[summary:] if "Conversion is failed for:" in line]
    why = lines[summary - 1] if summary > 0 else ""
    return UnsupportedModelError(f"openvino cannot convert {', '.join(ops) or 'the model'}: {why[:200]}")


def _check_against_eager(ir, model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> None:
    """Raise unless the converted model, compiled in f32, computes eager's output on the examples
    (repeated to batch 2, so a dynamic batch is exercised): OpenVINO's torch.export frontend can
    convert without error and compute something else (transformers' EfficientNet came out
    returning an empty tensor)."""
    import openvino as ov

    from slimkit.backends.base import first_output

    inputs = [t.repeat(2, *([1] * (t.dim() - 1))) for t in example_inputs]
    compiled = ov.Core().compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = torch.from_numpy(np.array(compiled([t.numpy() for t in inputs])[compiled.output(0)])).float()
    with torch.no_grad():
        want = first_output(model(*inputs))
    if got.shape != want.shape or not float((got - want).abs().max()) <= 1e-4 * max(float(want.abs().max()), 1e-6):
        raise ValueError(f"OpenVINO's torch.export frontend computes another function (shape {tuple(got.shape)}, "
                         f"eager {tuple(want.shape)})")


def request_runner(compiled):
    request = compiled.create_infer_request()
    n_inputs = len(compiled.inputs)
    output = compiled.output(0)

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != n_inputs:
            from slimkit.core.errors import SlimkitError

            raise SlimkitError(f"openvino: the model takes {n_inputs} inputs, got {len(inputs)}")
        result = request.infer([np.ascontiguousarray(t.detach().cpu().numpy()) for t in inputs])
        return torch.from_numpy(np.array(result[output])).float()

    return run


@BACKENDS.register("openvino", summary="OpenVINO CPU plugin (IR from torch.export); fp32, bf16 where the CPU has it")
class OpenVinoBackend(Backend):
    name = "openvino"

    @classmethod
    def available(cls) -> Availability:
        return packages_available("openvino", extra="openvino")

    @classmethod
    def precisions(cls, device: str = "cpu") -> tuple[str, ...]:
        if device != "cpu" or not cls.available():
            return ()
        import openvino as ov

        caps = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        return tuple(p for p in ("fp32", "bf16", "fp16") if CAPABILITY[p] in caps)

    @classmethod
    def build(cls, model, example_inputs, *, precision, threads, workdir, device, spin_wait=True) -> Built:
        files = save_ir(model.cpu(), example_inputs, workdir / "model.xml")
        return load_ir(files, precision=precision, threads=threads)


def load_ir(files: Sequence[Path], *, precision: str = "fp32", threads: int | None = None) -> Built:
    """A model file OpenVINO reads (IR ``.xml`` + ``.bin``, or ``.onnx``) compiled for its CPU plugin
    as this backend runs it: the precision asked for by name, latency mode, ``threads`` threads."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    core = ov.Core()
    model = core.read_model(str(files[0]))
    route = model.get_rt_info(["slimkit", "export"]).astype(str) if model.has_rt_info(["slimkit", "export"]) else None
    compiled = core.compile_model(model, "CPU", config)
    applied = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    info = {"openvino": ov.__version__, "inference_precision": applied, **({"export": route} if route else {})}
    return Built(request_runner(compiled), [Path(f) for f in files], info)
