"""The Python integer reference of an ``IntGraph``: what the generated C must reproduce bit for bit.

Integer arithmetic throughout: convolutions and matrix products of int8 values are computed in
float64, which is exact here (every product and partial sum is an integer far below 2^53), then
the accumulators go through the same fixed-point requantization as the C (``fixedpoint``).
Batches run at once; each row is independent, as in the C, which runs one row per call.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from slimkit.backends.tinyml.fixedpoint import multiply_by_quantized_multiplier as mbqm
from slimkit.backends.tinyml.graph import IntGraph, Op


def quantize_input(graph: IntGraph, x: torch.Tensor) -> np.ndarray:
    """Float inputs as the graph's int8 input codes (the model's first quantizer's arithmetic:
    ``round(x / scale) + zero_point``, half to even, in float32). Runs on the host, before the C."""
    t = graph.input_tensor
    q = torch.round(x.float() * (1.0 / torch.tensor(t.scale, dtype=torch.float32))) + t.zero_point
    return q.clamp(-128, 127).to(torch.int8).numpy().reshape(x.shape[0], *t.shape)


def dequantize_output(graph: IntGraph, q: np.ndarray) -> torch.Tensor:
    t = graph.output_tensor
    return torch.from_numpy((q.astype(np.float64) - t.zero_point) * t.scale).float()


def _per_channel(values: np.ndarray, ndim: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape((1, -1) + (1,) * (ndim - 2))


def _requantize(acc: np.ndarray, op: Op, zero_point: int) -> np.ndarray:
    m0, shift = _per_channel(op.attrs["multiplier"], acc.ndim), _per_channel(op.attrs["shift"], acc.ndim)
    out = mbqm(acc, m0, shift) + zero_point
    return np.clip(out, op.attrs["act_min"], op.attrs["act_max"])


def _run_op(graph: IntGraph, op: Op, values: dict[str, np.ndarray]) -> np.ndarray:
    ts = graph.tensors
    x = values[op.inputs[0]]
    t_in, t_out = ts[op.inputs[0]], ts[op.output]
    n = x.shape[0]
    if op.kind in ("conv", "linear"):
        centred = torch.from_numpy(x.astype(np.float64) - t_in.zero_point)
        w = torch.from_numpy(op.attrs["weight"].astype(np.float64))
        if op.kind == "conv":
            a = op.attrs
            (top, left), (bottom, right) = a["padding"], a.get("padding_end", a["padding"])
            padded = F.pad(centred.reshape(n, *a["in_shape"]), (left, right, top, bottom))  # zero point: real 0
            acc = F.conv2d(padded, w, None, a["stride"], 0, a["dilation"], a["groups"])
        else:
            acc = centred.reshape(n, -1) @ w.T
        acc = acc.numpy().round().astype(np.int64) + _per_channel(op.attrs["bias"], acc.dim())
        return _requantize(acc, op, t_out.zero_point).reshape(n, *t_out.shape)
    if op.kind == "maxpool":
        a = op.attrs
        y = F.max_pool2d(torch.from_numpy(x.astype(np.float64)).reshape(n, *a["in_shape"]), a["kernel"], a["stride"],
                         a["padding"])
        return y.numpy().astype(np.int64).reshape(n, *t_out.shape)
    if op.kind == "avgpool":
        a = op.attrs
        centred = torch.from_numpy(x.astype(np.float64) - t_in.zero_point).reshape(n, *a["in_shape"])
        sums = F.avg_pool2d(centred, a["kernel"], a["stride"], divisor_override=1).numpy().round().astype(np.int64)
        out = mbqm(sums, a["multiplier"], a["shift"]) + t_out.zero_point
        return np.clip(out, -128, 127).reshape(n, *t_out.shape)
    if op.kind == "add":
        a = op.attrs
        y = values[op.inputs[1]]
        sa = mbqm((x.astype(np.int64) - t_in.zero_point) << 20, a["multiplier_a"], a["shift_a"])
        sb = mbqm((y.astype(np.int64) - ts[op.inputs[1]].zero_point) << 20, a["multiplier_b"], a["shift_b"])
        out = mbqm(sa + sb, a["multiplier"], a["shift"]) + t_out.zero_point
        return np.clip(out, a["act_min"], a["act_max"])
    if op.kind in ("relu", "requantize"):  # C's sk_map: requantize when there is a multiplier, then clamp
        a = op.attrs
        out = x.astype(np.int64)
        if a.get("multiplier", 0):
            out = mbqm(out - t_in.zero_point, a["multiplier"], a["shift"]) + t_out.zero_point
        return np.clip(out, a["act_min"], a["act_max"])
    if op.kind == "patch_stage":  # the same ops on whole maps: patching changes the order, not the values
        inner = {op.inputs[0]: x}
        for sub in op.attrs["ops"]:
            inner[sub.output] = _run_op(graph, sub, inner)
        return inner[op.output]
    raise ValueError(f"unknown op kind {op.kind!r}")


def run_reference(graph: IntGraph, codes: np.ndarray) -> np.ndarray:
    """The graph's output codes (int8 or int32 per the output tensor) for input codes ``codes``
    (a batch of int8 rows shaped like the input tensor)."""
    values = {graph.input: np.asarray(codes).astype(np.int64).reshape(len(codes), *graph.input_tensor.shape)}
    for op in graph.ops:
        values[op.output] = _run_op(graph, op, values)
    out = values[graph.output]
    return out.astype(np.int32 if graph.output_tensor.dtype == "int32" else np.int8)
