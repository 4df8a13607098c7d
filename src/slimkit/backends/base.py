"""What every backend shares: availability with a reason, the compiled runnable, precisions and
the export of a model to a ``torch.export`` program with dynamic batch (and sequence) sizes.

A backend is a registered subclass of ``Backend``::

    name: str
    precisions(device) -> tuple[str, ...]          what it can run here ("fp32", "bf16", "fp16")
    available() -> Availability                      truthy, or falsy with the reason
    build(model, example_inputs, *, precision, threads, workdir, device) -> Built

``Backend.compile`` checks availability and precision, times ``build`` and returns a ``Compiled``.
``build`` writes the artifact that would ship (an ``.onnx`` file, OpenVINO IR, a TVM library,
a TensorRT engine, or the weights for the PyTorch runtimes) under ``workdir`` and returns a
``Compiled``: a callable taking the model's torch inputs and returning a float32 CPU tensor, so
the shared latency and quality code times and scores every runtime the same way. Optional
packages are imported inside each backend's own file, never at ``import slimkit``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn

from slimkit.core.outputs import primary_output, returns_tensor
from slimkit.core.errors import BackendUnavailableError, ConfigError
from slimkit.core.hardware import cpu_has_native_bf16
from slimkit.encoding.export import exporting_for
from slimkit.encoding.model import densified, is_encoded

PRECISIONS = ("fp32", "bf16", "fp16")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclass
class Compiled:
    """A model ready to run on one backend: ``compiled(*torch_inputs) -> float32 CPU tensor``."""

    run: Callable[..., torch.Tensor]
    backend: str
    precision: str
    artifact: list[Path]  # the files that ship (their bytes are the size figure)
    compile_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.run(*inputs)

    @property
    def artifact_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.artifact)


@dataclass
class Built:
    """What a backend's ``build`` returns: the runnable, the files that ship, notes for the table."""

    run: Callable[..., torch.Tensor]
    artifact: list[Path]
    info: dict[str, Any] = field(default_factory=dict)


class Backend:
    """Base of every backend: availability, precisions, and ``compile`` around ``build``."""

    name: str = ""
    spin_waits: bool = False  # worker threads spin-wait after a call (see ``compile(spin_wait=...)``)
    # runs a pruned model's bitmask + values layers as they are, rebuilding the dense weight once
    # (eager caches it; ONNX Runtime constant-folds it at load). Other runtimes get a densified
    # copy: OpenVINO kept the decoding in its runtime graph (a cumulative sum per call) and its
    # converter wrote an IR larger than the dense one; inductor and TVM would run it per call
    reads_sparse_encoding: bool = False
    # runs a graph with data-dependent branches (ONNX ``If``): a model with input-dependent control
    # flow (early exits: ``export_graph()``) then runs batch 1 as one graph, without a call and a
    # Python decision per stage; larger batches still run stage by stage, rows leaving as they exit
    control_flow: bool = False
    # runs only slimkit's static int8 models (generated integer code): never an ``auto`` candidate
    int8_only: bool = False

    @classmethod
    def available(cls) -> Availability:
        return Availability(True)

    @classmethod
    def precisions(cls, device: str = "cpu") -> tuple[str, ...]:
        return ("fp32",)

    @classmethod
    def device_for(cls, requested: str) -> str:
        """The device this backend runs on when the run measures on ``requested`` ("cpu" or
        "cuda"): the same, unless the runtime only has one."""
        return requested

    @classmethod
    def compile(cls, model: nn.Module, example_inputs: Sequence[torch.Tensor], *, precision: str = "fp32",
                threads: int | None = None, workdir: Path, device: str = "cpu", spin_wait: bool = True) -> Compiled:
        """Check the backend can run ``precision`` on ``device`` here, then build (timed).

        ``spin_wait=False`` asks runtimes whose worker threads spin-wait for work after a call
        (``spin_waits``: ONNX Runtime) to park them instead: two such models timed interleaved in
        one process would otherwise tax each other (an A/A test of two identical ONNX Runtime
        sessions gave ratios from 0.96 to 1.43 at batch 64 with spinning, 0.96-1.01 without).
        """
        require(cls)
        check_precision(cls, precision, device)
        if not cls.reads_sparse_encoding and is_encoded(model, "sparse"):
            model = densified(model, "sparse")
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        with timed() as t:
            if callable(getattr(model, "run_stages", None)):
                built = cls._build_stages(model.eval(), tuple(example_inputs), precision=precision, threads=threads,
                                          workdir=workdir, device=device, spin_wait=spin_wait)
            else:
                built = cls.build(model.eval(), tuple(example_inputs), precision=precision, threads=threads,
                                  workdir=workdir, device=device, spin_wait=spin_wait)
        return Compiled(built.run, cls.name, precision, built.artifact, compile_seconds=t[0], info=built.info)

    @classmethod
    def _build_stages(cls, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], **options: Any) -> Built:
        """A model with input-dependent control flow between graphs (early exits: ``stages()`` and
        ``run_stages``): each stage built as a graph of its own on this backend, the model's own
        decisions taken between them in Python."""
        bodies, heads = model.stages()
        workdir = options.pop("workdir")
        one_graph = None
        if cls.control_flow and callable(getattr(model, "export_graph", None)):
            (workdir / "graph").mkdir(parents=True, exist_ok=True)
            one_graph = cls.build(model.export_graph().eval(), tuple(t[:1] for t in example_inputs),
                                  workdir=workdir / "graph", **options)
        built_bodies, built_heads, artifact = [], [], []
        h: tuple[torch.Tensor, ...] = example_inputs
        with torch.no_grad():
            for k, body in enumerate(bodies):
                for name in (f"stage{k}", f"exit{k}"):
                    (workdir / name).mkdir(parents=True, exist_ok=True)
                b = cls.build(body.eval(), h, workdir=workdir / f"stage{k}", **options)
                built_bodies.append(b.run)
                artifact += b.artifact
                h = (body(*h),)
                if k < len(heads):
                    e = cls.build(heads[k].eval(), h, workdir=workdir / f"exit{k}", **options)
                    built_heads.append(e.run)
                    artifact += e.artifact

        def run(*inputs: torch.Tensor) -> torch.Tensor:
            if one_graph is not None and inputs[0].shape[0] == 1:
                return one_graph.run(*inputs)
            return model.run_stages(built_bodies, built_heads, inputs)

        info: dict[str, Any] = {"stages": len(bodies) + len(heads)}
        if one_graph is not None:
            artifact += one_graph.artifact
            info["batch1"] = "one graph with If nodes"
        return Built(run, artifact, info)

    @classmethod
    def build(cls, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], *, precision: str,
              threads: int | None, workdir: Path, device: str, spin_wait: bool = True) -> Built:
        raise NotImplementedError


def packages_available(*modules: str, extra: str) -> Availability:
    """Truthy when every module imports; else the first failure and the install hint."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - native-library errors count as "not importable" too
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            return Availability(False, f"python package {module!r} is not importable ({first}); "
                                       f"pip install 'slimkit[{extra}]'")
    return Availability(True)


def check_precision(backend: Any, precision: str, device: str = "cpu") -> None:
    supported = backend.precisions(device)
    if precision not in supported:
        why = " (this CPU has no native bf16)" if precision == "bf16" and device == "cpu" \
            and not cpu_has_native_bf16() else ""
        raise BackendUnavailableError(f"backend {backend.name!r} cannot run precision {precision!r} on {device}"
                                      f"{why} (it can: {', '.join(supported) or 'none'})")


def require(backend: Any) -> None:
    """Raise ``BackendUnavailableError`` with the backend's reason when it cannot run here."""
    avail = backend.available()
    if not avail:
        raise BackendUnavailableError(f"backend {backend.name!r} is not available: {avail.reason}")


def is_token_input(t: torch.Tensor) -> bool:
    return not t.is_floating_point() and t.dim() == 2


def dynamic_shapes(inputs: Sequence[torch.Tensor]) -> tuple[dict[int, Any], ...]:
    """Batch dimension dynamic for every input; the sequence dimension too for token inputs.

    ``Dim.DYNAMIC`` lets export infer each range (a model with 64 positions allows sequences up
    to 64) and fails, rather than silently specialising, where a dimension cannot vary.
    """
    dyn = torch.export.Dim.DYNAMIC
    return tuple({0: dyn, 1: dyn} if is_token_input(t) else {0: dyn} for t in inputs)


def export_program(model: nn.Module, example_inputs: Sequence[torch.Tensor], *,
                   dynamic: bool = True, target: str | None = None) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` in eval mode, with dynamic batch/sequence sizes when ``dynamic``.

    With dynamic shapes, example inputs of batch size 1 would specialise the batch dimension, so
    they are repeated to batch 2 for the trace (likewise a sequence of length 1). ``target``:
    the runtime the program is for, if it is for one only (see ``slimkit.encoding.export_target``).
    """
    inputs = tuple(example_inputs)
    model = traceable(model)
    if dynamic:
        inputs = tuple(t.repeat(2, *([1] * (t.dim() - 1))) if t.shape[0] == 1 else t for t in inputs)
    model = global_pools_made_explicit(model.eval(), inputs)
    model = returns_tensor(model, inputs)
    shapes = dynamic_shapes(inputs) if dynamic else None
    if shapes is not None and _varargs_only(model):
        shapes = (shapes,)  # ``forward(self, *inputs)``: export sees one argument, the tuple
    with exporting_for(target), torch.no_grad():
        return torch.export.export(model, inputs, dynamic_shapes=shapes)


def _varargs_only(model: nn.Module) -> bool:
    import inspect

    params = list(inspect.signature(model.forward).parameters.values())
    return len(params) == 1 and params[0].kind is inspect.Parameter.VAR_POSITIONAL


def traceable(model: nn.Module) -> nn.Module:
    """What an exporter should trace for ``model``: its ``export_graph()`` where it defines one (a
    model whose forward takes data-dependent decisions in Python, such as early exits, gives a
    graph with the decisions as ``torch.cond``; a trace of its forward would bake in one path),
    else the model itself."""
    graph = getattr(model, "export_graph", None)
    return graph() if callable(graph) else model


class _GlobalMean(nn.Module):
    """``AvgPool2d`` whose one window covers its whole input: the spatial mean (exactly what
    PyTorch computes there: with ``ceil_mode`` and no padding the divisor is the input's size)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((-2, -1), keepdim=True)


def global_pools_made_explicit(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> nn.Module:
    """``model``, or a copy whose ``AvgPool2d`` layers with a kernel larger than their input (on
    the example inputs) compute the spatial mean instead: transformers' EfficientNet pools a 1x1
    map with a 320-wide kernel and ``ceil_mode``, which PyTorch allows, OpenVINO refuses
    ("kernel larger than the data shape") and ONNX Runtime's int8 kernel computes wrongly (0.53
    from eager; 2e-7 as a mean)."""
    pools = {name: m for name, m in model.named_modules() if type(m) is nn.AvgPool2d}
    if not pools:
        return model
    seen: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            seen.setdefault(name, tuple(args[0].shape))
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in pools.items()]
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in hooks:
            h.remove()

    def covers(m: nn.AvgPool2d, shape: tuple[int, ...]) -> bool:
        k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
        p = m.padding if isinstance(m.padding, tuple) else (m.padding,) * 2
        return p == (0, 0) and m.divisor_override is None and k[0] >= shape[-2] and k[1] >= shape[-1] \
            and (m.ceil_mode or (k[0] == shape[-2] and k[1] == shape[-1]))

    names = [n for n, m in pools.items() if n in seen and covers(m, seen[n]) and m.kernel_size != 1]
    if not names:
        return model
    import copy

    model = copy.deepcopy(model)
    for name in names:
        model.set_submodule(name, _GlobalMean())
    return model


def cast_floats(inputs: Sequence[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Floating-point inputs cast to ``dtype``; integer inputs (token ids, masks) untouched."""
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in inputs)


def first_output(out: Any) -> torch.Tensor:
    """The model's output tensor, as float32 on the CPU (tuples/lists: the first element)."""
    if isinstance(out, (tuple, list, Mapping)) or isinstance(out, torch.Tensor):
        out = primary_output(out)
    else:  # a runtime's array
        out = torch.as_tensor(out.numpy() if hasattr(out, "numpy") else out)
    return out.detach().float().cpu()


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as t: ...`` then ``t[0]`` holds the seconds taken."""
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)


def parse_precision(value: str, where: str) -> str:
    if value not in PRECISIONS:
        raise ConfigError(f"{where}: unknown precision {value!r} (known: {', '.join(PRECISIONS)})")
    return value
