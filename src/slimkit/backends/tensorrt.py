"""NVIDIA TensorRT: the ONNX export of the model built into a TensorRT engine (fp32 or fp16), run
on CUDA tensors. Available only where a CUDA GPU and the ``tensorrt`` package exist.

The engine has one optimisation profile: batch 1 to ``MAX_BATCH``, the example's other
dimensions as the maximum (token inputs may be shorter).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from slimkit.backends.base import Availability, Backend, Built, packages_available
from slimkit.core.errors import SlimkitError
from slimkit.core.registry import BACKENDS

MAX_BATCH = 512


def _build_engine(onnx_path: Path, example_inputs: Sequence[torch.Tensor], precision: str, engine_path: Path):
    import tensorrt as trt

    from slimkit.core.io import atomic_write_bytes

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SlimkitError(f"tensorrt: cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i, example in enumerate(example_inputs):
        name = network.get_input(i).name
        full = tuple(example.shape)
        low = (1, *[1 if d < 0 else s for d, s in zip(network.get_input(i).shape[1:], full[1:])])
        profile.set_shape(name, low, full, (MAX_BATCH, *full[1:]))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SlimkitError("tensorrt: the engine build failed (see TensorRT's log above)")
    atomic_write_bytes(engine_path, bytes(serialized))
    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(serialized))
    return engine


def _runner(engine):
    import tensorrt as trt

    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    dtypes = {n: torch.from_numpy(trt.nptype(engine.get_tensor_dtype(n))(0).reshape(1)).dtype for n in names}

    def run(*tensors: torch.Tensor) -> torch.Tensor:
        feeds = [t.to("cuda", dtypes[n]).contiguous() for n, t in zip(inputs, tensors)]
        for name, t in zip(inputs, feeds):
            context.set_input_shape(name, tuple(t.shape))
            context.set_tensor_address(name, t.data_ptr())
        outs = [torch.empty(tuple(context.get_tensor_shape(n)), dtype=dtypes[n], device="cuda") for n in outputs]
        for name, t in zip(outputs, outs):
            context.set_tensor_address(name, t.data_ptr())
        stream = torch.cuda.current_stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise SlimkitError("tensorrt: execution failed")
        stream.synchronize()
        return outs[0].float().cpu()

    return run


@BACKENDS.register("tensorrt", summary="NVIDIA TensorRT engine from the ONNX export; fp32, fp16 (CUDA GPUs only)")
class TensorRtBackend(Backend):
    name = "tensorrt"

    @classmethod
    def available(cls) -> Availability:
        if not torch.cuda.is_available():
            return Availability(False, "no CUDA GPU on this machine (TensorRT runs on NVIDIA GPUs only)")
        from slimkit.backends.onnxruntime import OnnxRuntimeBackend

        trt = packages_available("tensorrt", extra="tensorrt")
        return trt if not trt else OnnxRuntimeBackend.available()

    @classmethod
    def precisions(cls, device: str = "cuda") -> tuple[str, ...]:
        return ("fp32", "fp16")

    @classmethod
    def device_for(cls, requested: str) -> str:
        return "cuda"

    @classmethod
    def build(cls, model, example_inputs, *, precision, threads, workdir, device, spin_wait=True) -> Built:
        from slimkit.backends.onnxruntime import export_onnx

        onnx_path = export_onnx(model.cpu(), [x.cpu() for x in example_inputs], workdir / "model.onnx")
        engine = _build_engine(onnx_path, example_inputs, precision, workdir / "model.engine")
        return Built(_runner(engine), [workdir / "model.engine"], {"max_batch": MAX_BATCH})
