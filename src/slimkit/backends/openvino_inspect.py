"""Why an int8 model is (not) faster on OpenVINO: what its CPU plugin really runs, op by op.

OpenVINO's low-precision transformations decide, at compile time, which operations run on
integers: a FakeQuantize (or an ONNX QuantizeLinear/DequantizeLinear pair) only pays where the
plugin can move it onto an integer kernel's input. The compiled model's runtime graph
(``compiled_model.get_runtime_model()``) names, for every node the plugin executes, its layer
type, its runtime precision (``u8``/``i8`` for integer kernels), its kernel (``primitiveType``,
e.g. ``brgemm_avx512_amx_I8``) and the original IR operations it absorbed; with ``PERF_COUNT``
on, the time each node took. ``inspect_ir`` reads all of it for one model, and
``coverage_tables`` puts two models (slimkit's int8 and NNCF's, say) side by side:

- per layer type: how many nodes run in which precision, and their time;
- the compute nodes (matmuls, fully connected, convolutions) paired in execution order, with the
  MACs each does and its precision in both models; the share of MACs run on integers;
- the layout and precision conversions the plugin inserted (``Reorder``, ``Convert``);
- the IR before compilation: where the FakeQuantize nodes sit (which op consumes them; weights
  or activations).

Execution precisions do not need int8 dot products (VNNI/AMX): a CPU without them runs the same
u8/i8 kernels, only slower, so the coverage half of the report holds on any x86 CPU. Timings
are the plugin's own per-node counters, as noisy as the machine is.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

COMPUTE = ("FullyConnected", "MatMul", "Convolution", "GroupConvolution", "Deconvolution")
CONVERSIONS = ("Reorder", "Convert")
INTEGER = ("u8", "i8")
_SKIP = ("Const", "Input", "Output", "Parameter", "Result")


@dataclass
class RuntimeOp:
    """One node the CPU plugin executes."""

    name: str
    layer_type: str
    precision: str  # runtimePrecision: u8/i8 on integer kernels, f32, bf16, ...
    kernel: str  # primitiveType, e.g. brgemm_avx512_I8
    order: int
    input_shapes: list[tuple[int, ...]]
    output_shape: tuple[int, ...]
    original: list[str]
    ms: float | None = None  # mean time per inference (PERF_COUNT), when profiled

    @property
    def integer(self) -> bool:
        return self.precision.lower() in INTEGER or self.kernel.lower().endswith(("_i8", "_u8"))

    @property
    def macs(self) -> int:
        return op_macs(self.layer_type, self.input_shapes, self.output_shape)


@dataclass
class Inspection:
    """One model's runtime graph, FakeQuantize placement and (optionally) per-node timing."""

    label: str
    ops: list[RuntimeOp]
    fake_quantize: Counter = field(default_factory=Counter)  # (consumer type, "weight"/"activation") -> count
    smoothing_multiplies: int = 0  # Multiply nodes by a per-channel constant right before a FakeQuantize
    total_ms: float | None = None  # mean wall time of one inference when profiled
    device_capability: str = ""

    @property
    def compute(self) -> list[RuntimeOp]:
        return [op for op in self.ops if op.layer_type in COMPUTE]

    def integer_mac_share(self) -> float:
        total = sum(op.macs for op in self.compute)
        return sum(op.macs for op in self.compute if op.integer) / total if total else float("nan")


def op_macs(layer_type: str, inputs: Sequence[tuple[int, ...]], out: tuple[int, ...]) -> int:
    """Multiply-accumulates of a compute node from its static shapes (0 when unknown)."""
    if not inputs or not out or any(d < 0 for s in inputs for d in s) or any(d < 0 for d in out):
        return 0
    n_out = math.prod(out)
    if layer_type == "FullyConnected":  # weight [out, in] (or [in, out] transposed: take the input's last dim)
        return n_out * inputs[0][-1]
    if layer_type == "MatMul" and len(inputs) > 1 and len(inputs[0]) >= 2:
        a0, a1 = inputs[0][-2], inputs[0][-1]
        return n_out * (a1 if a0 == out[-2] else a0)
    if layer_type in ("Convolution", "Deconvolution") and len(inputs) > 1:
        return n_out * math.prod(inputs[1][1:])
    if layer_type == "GroupConvolution" and len(inputs) > 1:
        return n_out * math.prod(inputs[1][2:])
    return 0


def _shape(partial) -> tuple[int, ...]:
    return tuple(d.get_length() if d.is_static else -1 for d in partial)


def _rt(op, key: str) -> str:
    info = op.get_rt_info()
    return info[key].astype(str) if key in info else ""


def example_inputs(model, shape: Sequence[int] | None = None) -> list[np.ndarray]:
    """Inputs for a model's parameters: ``shape`` for every dynamic one (static shapes kept);
    integers are ones (valid token ids and a full attention mask), floats standard normal."""
    rng = np.random.default_rng(0)
    out = []
    for port in model.inputs:
        partial = port.get_partial_shape()
        dims = _shape(partial) if partial.is_static else tuple(shape or ())
        if not dims or any(d < 0 for d in dims):
            raise ValueError(f"input {port.get_any_name()!r} has the dynamic shape {partial}: give its shape")
        dtype = port.get_element_type().to_dtype()
        out.append(np.ones(dims, dtype) if np.issubdtype(dtype, np.integer)
                   else rng.standard_normal(dims).astype(dtype))
    return out


def inspect_ir(path: str | Path, label: str | None = None, *, inputs: Sequence[np.ndarray] | None = None,
               shape: Sequence[int] | None = None, precision: str = "f32", threads: int | None = None,
               profile: int = 0) -> Inspection:
    """Compile ``path`` (IR ``.xml`` or ``.onnx``) for the CPU plugin, reshaped to the inputs'
    shapes (static shapes make every node's MACs known), and read its runtime graph. ``profile``
    > 0 runs that many inferences with ``PERF_COUNT`` and records each node's mean time."""
    import time

    import openvino as ov

    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except Exception as err:  # noqa: BLE001 - a corrupt or foreign file: one line naming it
        raise ValueError(f"OpenVINO cannot read {path}: {_first_line(err)}") from None
    fq, smoothing = fake_quantize_placement(model)
    if inputs is None:
        inputs = example_inputs(model, shape)
    try:
        model.reshape({port.get_any_name(): list(x.shape) for port, x in zip(model.inputs, inputs)})
    except Exception as err:  # noqa: BLE001 - a shape of the wrong rank for this model
        raise ValueError(f"{path}: inputs of shapes {[list(x.shape) for x in inputs]} do not fit the model "
                         f"({_first_line(err)})") from None
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                              "PERF_COUNT": bool(profile)}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(model, "CPU", config)
    times: dict[str, list[float]] = defaultdict(list)
    walls: list[float] = []
    if profile:
        request = compiled.create_infer_request()
        for _ in range(3):
            request.infer(list(inputs))
        for _ in range(profile):
            started = time.perf_counter()
            request.infer(list(inputs))
            walls.append(1e3 * (time.perf_counter() - started))
            for info in request.get_profiling_info():
                times[info.node_name].append(info.real_time.total_seconds() * 1e3)
    ops = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        kind = _rt(op, "layerType")
        if kind in _SKIP:
            continue
        name = op.get_friendly_name()
        ops.append(RuntimeOp(
            name=name, layer_type=kind, precision=_rt(op, "runtimePrecision"), kernel=_rt(op, "primitiveType"),
            order=int(_rt(op, "execOrder") or -1),
            input_shapes=[_shape(op.input(i).get_partial_shape()) for i in range(op.get_input_size())],
            output_shape=_shape(op.output(0).get_partial_shape()) if op.get_output_size() else (),
            original=[n for n in _rt(op, "originalLayersNames").split(",") if n],
            ms=statistics.fmean(times[name]) if times.get(name) else None))
    ops.sort(key=lambda o: o.order)
    caps = " ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return Inspection(label or Path(path).stem, ops, fq, smoothing,
                      statistics.median(walls) if walls else None, caps)


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(err).__name__


def fake_quantize_placement(model) -> tuple[Counter, int]:
    """Where the IR's FakeQuantize nodes sit, before any compilation: (consumer type, quantizes a
    "weight" or an "activation") -> count; and how many per-channel Multiply-by-constant nodes
    feed a FakeQuantize (SmoothQuant's explicit rescale)."""
    placement: Counter = Counter()
    smoothing = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        source = op.input_value(0).get_node()
        while source.get_type_name() in ("Convert",):  # compressed constants are converted first
            source = source.input_value(0).get_node()
        what = "weight" if source.get_type_name() == "Constant" else "activation"
        if source.get_type_name() == "Multiply" and any(
                source.input_value(i).get_node().get_type_name() == "Constant" for i in range(2)):
            smoothing += 1
        consumers = {t.get_node().get_type_name() for t in op.output(0).get_target_inputs()}
        for consumer in sorted(consumers) or ["(output)"]:
            placement[(consumer, what)] += 1
    return placement, smoothing


# ---------------------------------------------------------------------------------------------
# side by side


def _by_type(ins: Inspection) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"precisions": Counter(), "ms": 0.0, "n": 0})
    for op in ins.ops:
        row = out[op.layer_type]
        row["precisions"][op.precision or "?"] += 1
        row["n"] += 1
        row["ms"] += op.ms or 0.0
    return out


def _fmt_precisions(counter: Counter) -> str:
    return ", ".join(f"{n} {p}" for p, n in counter.most_common())


def type_table(inspections: Sequence[Inspection]) -> tuple[list[str], list[list[str]]]:
    """Per layer type: the nodes in each precision and their time, one column pair per model;
    the slowest types first (by the first model's time, then count)."""
    tables = [_by_type(i) for i in inspections]
    types = sorted({t for table in tables for t in table},
                   key=lambda t: (-max(table[t]["ms"] if t in table else 0 for table in tables),
                                  -max(table[t]["n"] if t in table else 0 for table in tables)))
    profiled = any(i.total_ms is not None for i in inspections)
    header = ["layer type"] + [h for i in inspections for h in
                               ([f"{i.label}: nodes", f"{i.label}: ms"] if profiled else [f"{i.label}: nodes"])]
    rows = []
    for t in types:
        row = [t]
        for table in tables:
            cell = table.get(t)
            row.append(_fmt_precisions(cell["precisions"]) if cell else "—")
            if profiled:
                row.append(f"{cell['ms']:.3f}" if cell else "—")
        rows.append(row)
    if profiled:
        rows.append(["(sum of nodes / wall)"] + [v for table, i in zip(tables, inspections) for v in
                                                 ("", f"{sum(c['ms'] for c in table.values()):.3f} / "
                                                      f"{i.total_ms:.3f}" if i.total_ms else "—")])
    return header, rows


def compute_pairs(a: Inspection, b: Inspection) -> list[tuple[RuntimeOp | None, RuntimeOp | None]]:
    """The compute nodes of two models paired in execution order within each MAC count (the
    same layer of the same network does the same MACs, whatever the names): unmatched nodes are
    paired with None."""
    groups_a: dict[int, list[RuntimeOp]] = defaultdict(list)
    groups_b: dict[int, list[RuntimeOp]] = defaultdict(list)
    for op in a.compute:
        groups_a[op.macs].append(op)
    for op in b.compute:
        groups_b[op.macs].append(op)
    pairs: list[tuple[RuntimeOp | None, RuntimeOp | None]] = []
    for macs in set(groups_a) | set(groups_b):
        xs, ys = groups_a.get(macs, []), groups_b.get(macs, [])
        pairs += [(xs[i] if i < len(xs) else None, ys[i] if i < len(ys) else None) for i in range(max(len(xs), len(ys)))]
    return sorted(pairs, key=lambda p: (p[0] or p[1]).order if p[0] is None else p[0].order)


def compute_table(a: Inspection, b: Inspection) -> tuple[list[str], list[list[str]]]:
    """Compute nodes grouped by (shape of the work, precision in a, precision in b): count,
    MACs, kernels and time on each side. Rows where one model runs on integers and the other
    does not come first."""
    groups: dict[tuple, dict[str, Any]] = {}
    for x, y in compute_pairs(a, b):
        ref = x or y
        shape = "x".join(str(d) for d in ref.output_shape)
        key = (ref.layer_type, shape, ref.macs, x.precision if x else "—", y.precision if y else "—")
        g = groups.setdefault(key, {"n": 0, "ka": Counter(), "kb": Counter(), "ma": 0.0, "mb": 0.0})
        g["n"] += 1
        if x:
            g["ka"][x.kernel] += 1
            g["ma"] += x.ms or 0.0
        if y:
            g["kb"][y.kernel] += 1
            g["mb"] += y.ms or 0.0
    header = ["node", "output", "MACs each", "n", f"{a.label}: precision", f"{a.label}: kernel", f"{a.label}: ms",
              f"{b.label}: precision", f"{b.label}: kernel", f"{b.label}: ms"]

    def differs(key) -> bool:
        return (key[3].lower() in INTEGER) != (key[4].lower() in INTEGER)

    rows = []
    for key in sorted(groups, key=lambda k: (not differs(k), -k[2] * groups[k]["n"])):
        g = groups[key]
        rows.append([key[0], key[1], f"{key[2]:,}", str(g["n"]), key[3], ", ".join(g["ka"]) or "—", f"{g['ma']:.3f}",
                     key[4], ", ".join(g["kb"]) or "—", f"{g['mb']:.3f}"])
    return header, rows


def placement_table(inspections: Sequence[Inspection]) -> tuple[list[str], list[list[str]]]:
    keys = sorted({k for i in inspections for k in i.fake_quantize})
    header = ["FakeQuantize feeds", "quantizes"] + [i.label for i in inspections]
    rows = [[consumer, what] + [str(i.fake_quantize.get((consumer, what), 0)) for i in inspections]
            for consumer, what in keys]
    rows.append(["per-channel Multiply before it", "(SmoothQuant)"] + [str(i.smoothing_multiplies) for i in inspections])
    return header, rows


def summary(inspections: Sequence[Inspection]) -> tuple[list[str], list[list[str]]]:
    header = ["", *[i.label for i in inspections]]
    conv = [Counter(op.layer_type for op in i.ops if op.layer_type in CONVERSIONS) for i in inspections]
    rows = [
        ["share of compute MACs on integer kernels", *[f"{100 * i.integer_mac_share():.1f}%" for i in inspections]],
        ["compute nodes on integers / all", *[f"{sum(op.integer for op in i.compute)} / {len(i.compute)}"
                                              for i in inspections]],
        ["nodes executed", *[str(len(i.ops)) for i in inspections]],
        *[[f"{t} nodes (inserted conversions)", *[str(c.get(t, 0)) for c in conv]] for t in CONVERSIONS],
        ["Reorder + Convert ms", *[f"{sum(op.ms or 0 for op in i.ops if op.layer_type in CONVERSIONS):.3f}"
                                   if i.total_ms is not None else "—" for i in inspections]],
        ["inference ms (median, PERF_COUNT on)", *[f"{i.total_ms:.3f}" if i.total_ms is not None else "—"
                                                   for i in inspections]],
    ]
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def coverage_markdown(inspections: Sequence[Inspection]) -> str:
    """The whole comparison as Markdown sections (two models: with the paired compute table)."""
    parts = ["### Summary", "", markdown(*summary(inspections)), "",
             "### Nodes by layer type (runtime precision)", "", markdown(*type_table(inspections)), "",
             "### Where the FakeQuantize nodes sit (IR before compilation)", "",
             markdown(*placement_table(inspections)), ""]
    if len(inspections) == 2:
        parts += ["### Compute nodes paired by execution order and MACs (rows that differ in integer use first)",
                  "", markdown(*compute_table(*inspections)), ""]
    return "\n".join(parts)
