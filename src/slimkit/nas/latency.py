"""A per-block latency lookup table, built by measurement on a named backend, so that a search
can rank thousands of candidates by latency without compiling each (ProxylessNAS, FBNet).

``build_table(space, input_shape, backend)`` compiles every distinct piece any candidate of the
space can contain (the stem, each block at its input shape, the head and classifier) alone on
the backend and times it at batch 1; ``predict(spec)`` sums the pieces of a spec. The table
records the backend, threads and CPU it was measured on. ``validate`` times whole candidates on
the same backend and reports the rank correlation (Spearman) of predicted and measured latency:
the sum misses what crosses block boundaries (a runtime's fusions across blocks, per-call
overhead, caches), which is why a table is checked before it is trusted.

Time is bounded: ``max_seconds`` stops the build with the pieces measured so far named, and a
rich progress bar shows the count.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn

from slimkit.core.errors import SlimkitError
from slimkit.nas.space import SearchSpace
from slimkit.zoo.arch import ACTS, ArchSpec, StageSpec, build_block
from slimkit.zoo.blocks import conv_bn_act


def _piece_key(kind: str, **fields: Any) -> str:
    return kind + "(" + ",".join(f"{k}={fields[k]}" for k in sorted(fields)) + ")"


def _block_key(s: StageSpec, in_ch: int, stride: int, hw: tuple[int, int]) -> str:
    return _piece_key("block", block=s.block, cin=in_ch, out=s.out, stride=stride, kernel=s.kernel, expand=s.expand,
                      se=s.se, act=s.act, hw=f"{hw[0]}x{hw[1]}")


def _after(hw: tuple[int, int], stride: int) -> tuple[int, int]:
    return (hw[0] + stride - 1) // stride, (hw[1] + stride - 1) // stride


def pieces(spec: ArchSpec, input_shape: Sequence[int], num_classes: int) -> Iterator[tuple[str, Callable[[], nn.Module],
                                                                                          tuple[int, ...]]]:
    """(key, module factory, input shape without batch) of every piece of ``spec`` in order."""
    c, h, w = input_shape
    yield (_piece_key("stem", cin=c, out=spec.stem, k=spec.stem_kernel, s=spec.stem_stride, act=spec.act, hw=f"{h}x{w}"),
           lambda: conv_bn_act(c, spec.stem, spec.stem_kernel, stride=spec.stem_stride, act=ACTS[spec.act]), (c, h, w))
    hw, ch = _after((h, w), spec.stem_stride), spec.stem
    for s in spec.stages:
        for i in range(s.depth):
            stride = s.stride if i == 0 else 1
            yield (_block_key(s, ch, stride, hw), lambda s=s, ch=ch, stride=stride: build_block(s, ch, stride),
                   (ch, *hw))
            hw, ch = _after(hw, stride), s.out
    if spec.head:
        yield (_piece_key("head", cin=ch, out=spec.head, act=spec.act, hw=f"{hw[0]}x{hw[1]}"),
               lambda ch=ch: conv_bn_act(ch, spec.head, 1, act=ACTS[spec.act]), (ch, *hw))
        ch = spec.head
    yield (_piece_key("classifier", cin=ch, classes=num_classes, hw=f"{hw[0]}x{hw[1]}"),
           lambda ch=ch: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, num_classes)), (ch, *hw))


def candidate_specs(space: SearchSpace) -> Iterator[ArchSpec]:
    """Specs that together contain every piece a candidate of ``space`` can contain: per stage,
    each of its choice combinations after each width the stage before can end with (one network
    per combination; the other stages at their first choice)."""
    import itertools

    dims = space.dimensions()
    stages = sorted({int(k.split(".")[0][1:]) for k in dims})
    widths = {i: dims.get(f"s{i}.width", [None]) for i in range(len(space.base))}
    for i in stages:
        own = {k: v for k, v in dims.items() if k.startswith(f"s{i}.")}
        before = {f"s{i - 1}.width": widths[i - 1]} if i > 0 and widths[i - 1] != [None] else {}
        names = list(own) + list(before)
        for values in itertools.product(*(own | before).values()):
            try:
                yield space.spec(dict(zip(names, values)))
            except Exception:  # an impossible combination: no candidate contains its pieces
                continue
    if not stages:
        yield space.spec({})


@dataclass
class LatencyTable:
    """Milliseconds per piece at batch 1 on ``backend``; see the module docstring."""

    backend: str
    threads: int
    input_shape: tuple[int, ...]
    num_classes: int
    cpu: str
    entries: dict[str, float] = field(default_factory=dict)

    def predict(self, spec: ArchSpec) -> float:
        missing = [k for k, _, _ in pieces(spec, self.input_shape, self.num_classes) if k not in self.entries]
        if missing:
            raise SlimkitError(f"the latency table has no entry for {len(missing)} piece(s) of this network, e.g. "
                               f"{missing[0]} (build the table over the space the network comes from)")
        call = self.entries.get(_null_key(self.input_shape), 0.0)  # one call's fixed cost (see build_table)
        return call + sum(self.entries[k] for k, _, _ in pieces(spec, self.input_shape, self.num_classes))

    def save(self, path: str | os.PathLike[str]) -> None:
        """JSON, written through a temporary file (never half-written)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"backend": self.backend, "threads": self.threads,
                                   "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                                   "cpu": self.cpu, "entries": self.entries}, indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "LatencyTable":
        try:
            d = json.loads(Path(path).read_text())
            return cls(d["backend"], int(d["threads"]), tuple(d["input_shape"]), int(d["num_classes"]), d["cpu"],
                       {str(k): float(v) for k, v in d["entries"].items()})
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SlimkitError(f"{path}: not a latency table ({err})") from None


def compile_module(module: nn.Module, shape: Sequence[int], backend: str, threads: int, workdir: Path
                   ) -> Callable[[], Any]:
    """``module`` compiled on ``backend`` for one batch-1 input of ``shape``: a call runs it once."""
    from slimkit.core.registry import BACKENDS

    torch.manual_seed(0)
    x = torch.randn(1, *shape)
    compiled = BACKENDS.get(backend).compile(module.eval(), (x,), threads=threads, workdir=workdir)
    return lambda: compiled(x)


def time_rounds(runs: Sequence[Callable[[], Any]], threads: int, repeats: int = 20, rounds: int = 3,
                progress: Callable[[], None] | None = None) -> list[float]:
    """Batch-1 milliseconds of each of ``runs``: ``rounds`` passes over all of them in turn (so a
    slow spell of a shared CPU falls on every run alike, not on one), each the median of
    ``repeats`` calls; per run, the median over the passes."""
    from slimkit.measure.latency import measure_latency

    per_round: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for i, run in enumerate(runs):
            per_round[i].append(measure_latency(lambda _x: run(), (torch.zeros(1),), repeats=repeats, threads=threads,
                                                warmup=3, min_warmup_seconds=0.02, max_seconds=1.0).median_ms)
            if progress:
                progress()
    return [statistics.median(t) for t in per_round]


def _null_key(shape: Sequence[int]) -> str:
    return _piece_key("null", shape="x".join(map(str, shape)))


def build_table(space: SearchSpace, input_shape: Sequence[int], num_classes: int, backend: str = "eager",
                threads: int = 1, repeats: int = 20, rounds: int = 3, max_seconds: float | None = None,
                progress: bool = True) -> LatencyTable:
    """Time every piece of ``space``'s candidates alone on ``backend``; see the module docstring.

    A piece timed alone also pays a call's fixed cost (the runtime's dispatch, copying its input
    in and its output out), which inside a network it does not. So a null piece (a ReLU on the
    same input shape) is timed beside every piece and subtracted, and ``predict`` adds the null
    piece of the network's input once: without it, the sum charges one call cost per piece and
    ranks deep, cheap networks too slow (on ONNX Runtime it came to about twice the measured time)."""
    from rich.progress import Progress

    from slimkit.core.hardware import cpu_model

    todo: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {}
    for spec in candidate_specs(space):
        for key, make, shape in pieces(spec, input_shape, num_classes):
            todo.setdefault(key, (make, shape))
    for shape in {shape for _, shape in todo.values()} | {tuple(input_shape)}:
        todo[_null_key(shape)] = (nn.ReLU, shape)
    table = LatencyTable(backend, threads, tuple(input_shape), num_classes, cpu_model())
    started = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="slimkit-lut-") as tmp, \
            Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"compiling pieces for {backend}", total=len(todo))
        for n, (make, shape) in enumerate(todo.values()):
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                raise SlimkitError(f"latency table: time budget of {max_seconds:g} s spent after {n} of {len(todo)} "
                                   f"pieces (narrow the space or raise the budget)")
            runs.append(compile_module(make(), shape, backend, threads, Path(tmp) / str(n)))
            bar.advance(task)
        bar.reset(task, total=len(todo) * rounds, description=f"timing pieces on {backend}")
        times = dict(zip(todo, time_rounds(runs, threads, repeats, rounds, lambda: bar.advance(task))))
    for key, (_, shape) in todo.items():
        if not key.startswith("null("):
            table.entries[key] = max(times[key] - times[_null_key(shape)], 0.0)
    table.entries[_null_key(input_shape)] = times[_null_key(input_shape)]
    return table


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def validate(table: LatencyTable, specs: Sequence[ArchSpec], repeats: int = 20, rounds: int = 3) -> dict[str, Any]:
    """Predicted and measured batch-1 latency of whole networks on the table's backend (timed in
    interleaved rounds, as the pieces were); their Spearman correlation and the median ratio
    measured / predicted."""
    from slimkit.zoo.arch import build_arch

    predicted = [table.predict(spec) for spec in specs]
    with tempfile.TemporaryDirectory(prefix="slimkit-lut-check-") as tmp:
        runs = [compile_module(build_arch(spec, table.num_classes, table.input_shape[0]), table.input_shape,
                               table.backend, table.threads, Path(tmp) / str(n)) for n, spec in enumerate(specs)]
        measured = time_rounds(runs, table.threads, repeats, rounds)
    return {"spearman": spearman(predicted, measured), "predicted_ms": predicted, "measured_ms": measured,
            "median_ratio": statistics.median(m / p for m, p in zip(measured, predicted))}
