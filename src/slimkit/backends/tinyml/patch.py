"""Patch-based execution of the first layers (MCUNetV2, Lin et al. 2021).

The first layers of a CNN hold the largest activations. Run them tile by tile instead: the
output map of the stage is cut into a grid of windows, and for each window every layer of the
stage computes only the window its consumers need (the receptive field grows backwards through
the stage: kernel, stride, padding, dilation), in small scratch buffers; the stage's output map
is filled window by window, and the rest of the network runs on whole maps. Peak SRAM falls from
the stage's largest maps to its per-tile windows, paid for with recomputed overlaps (the halos),
reported as the executed MACs.

A stage is a prefix of the graph's ops fed by the model's input only, whose ops are convolutions
(not the int32 output), pools over windows and element-wise ops (add, ReLU, requantize), and
whose tensors other than its output are read only inside it. Each element of the output is the
same integer function of the same input values whether computed whole or by window, so a patched
graph's outputs equal the unpatched reference's bit for bit (the tests check exactly that).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slimkit.backends.tinyml.graph import IntGraph, Op
from slimkit.core.errors import UnsupportedModelError

_SPATIAL = {"conv", "maxpool", "avgpool"}
_ELEMENTWISE = {"add", "relu", "requantize"}


def stage_error(graph: IntGraph, ops: int) -> str:
    """Why the first ``ops`` ops cannot run patch by patch ("" when they can)."""
    if not 1 <= ops < len(graph.ops):
        return f"a stage is 1 to {len(graph.ops) - 1} ops (the graph has {len(graph.ops)})"
    stage = graph.ops[:ops]
    produced = {op.output for op in stage}
    later = {name for op in graph.ops[ops:] for name in op.inputs} | {graph.output}
    for k, op in enumerate(stage):
        if op.kind not in _SPATIAL | _ELEMENTWISE or graph.tensors[op.output].dtype != "int8":
            return f"op {k} ({op.kind}, {op.source}) has no windowed kernel"
        if len(graph.tensors[op.output].shape) != 3:
            return f"op {k} ({op.source}) does not produce a CHW map"
        for name in op.inputs:
            if name not in produced and name != graph.input:
                return f"op {k} reads a tensor from outside the stage"
        if op.output != stage[-1].output and op.output in later:
            return f"op {k}'s output ({op.source}) is also read after the stage"
    return ""


def _union(a: tuple[int, int, int, int] | None, b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    if a is None:
        return b
    y0, x0 = min(a[0], b[0]), min(a[1], b[1])
    y1, x1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
    return (y0, x0, y1 - y0, x1 - x0)


def _input_window(op: Op, win: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The window of ``op``'s input that its output window ``win`` reads."""
    if op.kind in _ELEMENTWISE:
        return win
    a = op.attrs
    _, h_in, w_in = a["in_shape"]
    if op.kind == "conv":
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = a["weight"].shape[2:], a["stride"], a["padding"], a["dilation"]
    else:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = a["kernel"], a["stride"], a.get("padding", (0, 0)), (1, 1)
    y0, x0, h, w = win
    lo_y, hi_y = max(0, y0 * sh - ph), min(h_in - 1, (y0 + h - 1) * sh - ph + (kh - 1) * dh)
    lo_x, hi_x = max(0, x0 * sw - pw), min(w_in - 1, (x0 + w - 1) * sw - pw + (kw - 1) * dw)
    return (lo_y, lo_x, hi_y - lo_y + 1, hi_x - lo_x + 1)


def _splits(n: int, parts: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, parts + 1).round().astype(int)
    return [(int(a), int(b - a)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


@dataclass
class StageWindows:
    columns: dict[str, int]  # tensor -> column of ``windows``
    windows: np.ndarray  # (tiles, columns, 4): y0, x0, h, w of every stage tensor per tile
    executed_macs: int  # MACs the stage runs over all tiles (halos recomputed)


def stage_windows(graph: IntGraph, ops: int, grid: int) -> StageWindows:
    stage = graph.ops[:ops]
    out = graph.tensors[stage[-1].output]
    names = [graph.input] + [op.output for op in stage]
    columns = {name: i for i, name in enumerate(dict.fromkeys(names))}
    tiles, macs = [], 0
    for y0, h in _splits(out.shape[1], grid):
        for x0, w in _splits(out.shape[2], grid):
            need: dict[str, tuple[int, int, int, int]] = {stage[-1].output: (y0, x0, h, w)}
            for op in reversed(stage):
                win = need[op.output]
                if op.kind == "conv":
                    wt = op.attrs["weight"]
                    macs += wt.shape[0] * win[2] * win[3] * int(np.prod(wt.shape[1:]))
                for name in op.inputs:
                    need[name] = _union(need.get(name), _input_window(op, win))
            tiles.append([need.get(name, (0, 0, 0, 0)) for name in columns])
    return StageWindows(columns, np.array(tiles, dtype=np.int16), macs)


def _scratch_plan(graph: IntGraph, stage: list[Op], windows: np.ndarray, columns: dict[str, int]
                  ) -> tuple[dict[str, int], int]:
    """Offsets of the stage's intermediate tensors in its scratch (each sized for its largest
    window), placed by the same greedy rule as the arena; the scratch's bytes."""
    from slimkit.backends.tinyml.planner import Buffer, place

    last_use: dict[str, int] = {}
    for j, op in enumerate(stage):
        for name in op.inputs:
            last_use[name] = j
    buffers = []
    for j, op in enumerate(stage[:-1]):
        col = columns[op.output]
        size = graph.tensors[op.output].shape[0] * int((windows[:, col, 2].astype(int) * windows[:, col, 3]).max())
        buffers.append(Buffer(op.output, size, j, last_use.get(op.output, j), [op.output]))
    peak = place(buffers)
    return {b.name: b.offset for b in buffers}, peak


def patch_graph(graph: IntGraph, ops: int, grid: int) -> IntGraph:
    """``graph`` with its first ``ops`` ops run patch by patch on a ``grid`` x ``grid`` tiling of
    the stage's output map (one ``patch_stage`` op in their place)."""
    why = stage_error(graph, ops)
    if why:
        raise UnsupportedModelError(f"tinyml: cannot run the first {ops} ops patch by patch: {why}")
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    stage = graph.ops[:ops]
    sw = stage_windows(graph, ops, grid)
    offsets, scratch = _scratch_plan(graph, stage, sw.windows, sw.columns)
    op = Op("patch_stage", [graph.input], stage[-1].output,
            {"ops": list(stage), "grid": grid, "windows": sw.windows, "columns": sw.columns,
             "scratch_offsets": offsets, "scratch_bytes": scratch, "executed_macs": sw.executed_macs},
            source=f"ops 0-{ops - 1}")
    return IntGraph(graph.tensors, [op, *graph.ops[ops:]], graph.input, graph.output)


@dataclass
class PatchChoice:
    graph: IntGraph
    ops: int
    grid: int
    peak: int  # arena bytes with the stage patched
    executed_macs: int
    tried: list[dict]  # every (ops, grid) evaluated: its arena bytes and MACs


def choose_patching(graph: IntGraph, grids: tuple[int, ...] = (2, 3, 4, 6, 8), in_place: bool = True) -> PatchChoice | None:
    """The stage length and grid with the smallest arena (fewer executed MACs on a tie), among
    every valid stage and ``grids``; None when no prefix of the graph can run by patches or none
    beats the whole-map plan."""
    from slimkit.backends.tinyml.planner import plan_memory

    base = plan_memory(graph, in_place=in_place).peak
    tried, best = [], None
    for ops in range(1, len(graph.ops)):
        if stage_error(graph, ops):
            continue
        for grid in grids:
            patched = patch_graph(graph, ops, grid)
            peak = plan_memory(patched, in_place=in_place).peak
            macs = patched.ops[0].attrs["executed_macs"] + sum(o.macs(graph.tensors) for o in graph.ops[ops:])
            tried.append({"ops": ops, "grid": grid, "arena_bytes": peak, "executed_macs": macs})
            if peak < base and (best is None or (peak, macs) < (best.peak, best.executed_macs)):
                best = PatchChoice(patched, ops, grid, peak, macs, tried)
    if best is not None:
        best.tried = tried
    return best
