"""Where every tensor lives in the one activation arena (SRAM), chosen to minimise its peak.

Each tensor is live from the op that writes it to the last op that reads it (the input from the
start, the output to the end). Ops that may write over their input do so when that input dies
there: ReLU, requantize and add (element by element), and depthwise convolution, which TinyEngine
(Lin et al. 2020) runs in place channel by channel through a temporary of one output channel
(every output channel reads only its own input channel, and with CHW order channel ``c``'s
output lands on input bytes no later channel reads). Offsets are then chosen greedily, largest
tensor first, at the lowest address free during its lifetime (TFLite Micro's greedy planner).
The naive figure gives every tensor its own bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from slimkit.backends.tinyml.graph import IntGraph, Op

ALIGN = 4


@dataclass
class Buffer:
    """Bytes in the arena shared by one tensor or a chain of in-place tensors."""

    name: str
    size: int
    first: int  # index of the first op during which it is live (-1: before the first op)
    last: int  # index of the last op during which it is live
    tensors: list[str] = field(default_factory=list)
    offset: int = 0


@dataclass
class MemoryPlan:
    buffers: list[Buffer]
    offsets: dict[str, int]  # tensor (and temporary) name -> arena offset
    peak: int  # arena bytes
    naive: int  # bytes with one region per tensor, no reuse
    in_place: list[int]  # indices of ops that write over their input
    temporaries: dict[int, str]  # op index -> its temporary buffer's name

    def to_dict(self) -> dict:
        return {"arena_bytes": self.peak, "naive_bytes": self.naive, "in_place_ops": len(self.in_place)}


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def depthwise_in_place_ok(graph: IntGraph, op: Op) -> bool:
    """A depthwise conv (one output channel per input channel) whose output is no larger per
    channel than its input: it can run over its input with a one-channel temporary."""
    if op.kind != "conv":
        return False
    c, h, w = op.attrs["in_shape"]
    t_out = graph.tensors[op.output]
    return op.attrs["groups"] == c == t_out.shape[0] and t_out.dtype == "int8" and t_out.shape[1] * t_out.shape[2] <= h * w


def _last_uses(graph: IntGraph) -> dict[str, int]:
    last = {graph.output: len(graph.ops)}
    for i, op in enumerate(graph.ops):
        for name in op.inputs:
            last[name] = max(last.get(name, -1), i)
    return last


def plan_memory(graph: IntGraph, in_place: bool = True) -> MemoryPlan:
    """Arena offsets for every tensor of ``graph`` (``in_place=False``: no op writes over its input)."""
    last = _last_uses(graph)
    buffer_of: dict[str, Buffer] = {}
    buffers: list[Buffer] = []
    in_place_ops: list[int] = []
    temporaries: dict[int, str] = {}

    def new_buffer(name: str, size: int, first: int) -> Buffer:
        b = Buffer(name, _aligned(size), first, first, [name])
        buffers.append(b)
        buffer_of[name] = b
        return b

    new_buffer(graph.input, graph.input_tensor.nbytes, -1)
    for i, op in enumerate(graph.ops):
        out = graph.tensors[op.output]
        reuse = None
        if in_place:
            dies_here = [n for n in op.inputs if last.get(n) == i and n != graph.input
                         and graph.tensors[n].nbytes >= out.nbytes]
            if op.kind in ("relu", "requantize", "add") and dies_here:
                reuse = dies_here[0]
            elif depthwise_in_place_ok(graph, op) and dies_here:
                reuse = dies_here[0]
                temporaries[i] = new_buffer(f"tmp{i}", out.shape[1] * out.shape[2], i).name
        if op.kind == "patch_stage":  # the stage's per-tile intermediates
            temporaries[i] = new_buffer(f"tmp{i}", op.attrs["scratch_bytes"], i).name
        if reuse is not None:
            b = buffer_of[reuse]
            b.tensors.append(op.output)
            buffer_of[op.output] = b
            in_place_ops.append(i)
        else:
            new_buffer(op.output, out.nbytes, i)
        for name in op.inputs:
            buffer_of[name].last = max(buffer_of[name].last, i)
    buffer_of[graph.output].last = len(graph.ops)

    place(buffers)
    offsets = {t: b.offset for b in buffers for t in b.tensors}
    peak = max((b.offset + b.size for b in buffers), default=0)
    naive = sum(_aligned(t.nbytes) for t in graph.tensors.values() if t.name in offsets)
    return MemoryPlan(buffers, offsets, peak, naive, in_place_ops, temporaries)


def place(buffers: list[Buffer]) -> int:
    """Give each buffer an offset: largest first, at the lowest aligned address that no buffer
    live at the same time occupies (TFLite Micro's greedy planner); the bytes spanned."""
    placed: list[Buffer] = []
    for b in sorted(buffers, key=lambda b: (-b.size, b.first)):
        busy = sorted((p.offset, p.offset + p.size) for p in placed if p.first <= b.last and b.first <= p.last)
        offset = 0
        for lo, hi in busy:
            if offset + b.size <= lo:
                break
            offset = max(offset, _aligned(hi))
        b.offset = offset
        placed.append(b)
    return max((b.offset + b.size for b in buffers), default=0)

