"""Wall-clock latency: warm up, fix the thread count, take the median of repeats, report spread."""

from __future__ import annotations

import contextlib
import itertools
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

import torch

from slimkit.measure.contention import (ContentionReadings, CpuConditions, available_cpus, cpu_conditions,
                                       timing_warning, worst)


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    repeats: int
    batch_size: int
    threads: int
    timing_warning: str | None = None  # why the figure may be wrong (a busy CPU), or None

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with a fixed intra-op thread count, restoring the previous one afterwards."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_latency(fn: Callable[..., object], inputs: Sequence[torch.Tensor], *, warmup: int = 5,
                    repeats: int = 30, threads: int | None = None, sync: Callable[[], None] | None = None,
                    max_seconds: float | None = None, min_warmup_seconds: float = 0.2) -> LatencyStats:
    """Time ``fn(*inputs)``; ``sync`` (e.g. ``torch.cuda.synchronize``) is called after each run.

    Warm-up runs at least ``warmup`` times and at least ``min_warmup_seconds`` (caches, allocator
    and CPU clocks settle; a first-measured model must not look slower for being first).
    ``max_seconds`` caps the warm-up (after its first run) and the timed loop (after 3 repeats)
    each, so a model that takes seconds per call is measured in bounded time.
    """
    sync = sync or (lambda: None)
    times: list[float] = []
    with torch_threads(threads), torch.inference_mode():
        before = cpu_conditions()
        _warm_up(fn, inputs, sync, warmup, min_warmup_seconds, max_seconds)
        budget_end = None if max_seconds is None else time.perf_counter() + max_seconds
        for i in range(repeats):
            times.append(_time_once(fn, inputs, sync))
            if budget_end is not None and i >= 2 and time.perf_counter() > budget_end:
                break
        return _stats(times, inputs, threads, before)


def measure_latency_over_rows(fn: Callable[..., object], rows: Sequence[Sequence[torch.Tensor]], *, warmup: int = 5,
                              repeats: int = 30, threads: int | None = None, sync: Callable[[], None] | None = None,
                              max_seconds: float | None = None, min_warmup_seconds: float = 0.2) -> LatencyStats:
    """Time ``fn`` on each of ``rows`` (batches of one), for a model whose cost depends on its input.

    Warm-up cycles through the rows (``warmup`` calls per row, at least ``min_warmup_seconds``);
    then each of ``repeats`` rounds times every row once (``max_seconds`` caps the rounds after
    the third). The figures pool all rows' times: the median is over rows and repeats, and the
    quartiles show how much the cost varies with the input.
    """
    sync = sync or (lambda: None)
    cycle = itertools.cycle(rows)
    times: list[float] = []
    with torch_threads(threads), torch.inference_mode():
        before = cpu_conditions()
        _warm_up(lambda: fn(*next(cycle)), (), sync, warmup * len(rows), min_warmup_seconds, max_seconds)
        budget_end = None if max_seconds is None else time.perf_counter() + max_seconds
        for r in range(repeats):
            times += [_time_once(fn, row, sync) for row in rows]
            if budget_end is not None and r >= 2 and time.perf_counter() > budget_end:
                break
        return _stats(times, rows[0], threads, before)


def measure_paired_latency(fns: dict[str, Callable[..., object]], inputs: Sequence[torch.Tensor], *,
                           warmup: int = 5, repeats: int = 30, rounds: int = 10, threads: int | None = None,
                           sync: Callable[[], None] | None = None, max_seconds: float | None = None,
                           min_warmup_seconds: float = 0.2, settle: int = 2) -> dict[str, LatencyStats]:
    """Time several callables on the same inputs, interleaved, for a fair ratio on a noisy machine.

    The repeats are split into ``rounds``; each round times every callable in turn (the order
    reversed every other round, ABBA), so a slow spell of the machine falls on all of them
    alike instead of on whichever was timed during it. Each turn starts with ``settle`` untimed
    calls: runtimes whose worker threads spin-wait after a call (ONNX Runtime, OpenVINO) would
    otherwise tax the first calls of the next callable. ``max_seconds`` caps each callable's
    warm-up and its share of the timed loop.
    """
    sync = sync or (lambda: None)
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    per_round = max(1, -(-repeats // rounds))
    with torch_threads(threads), torch.inference_mode():
        before = cpu_conditions()
        for name in names:
            _warm_up(fns[name], inputs, sync, warmup, min_warmup_seconds, max_seconds)
        budget_end = None if max_seconds is None else time.perf_counter() + max_seconds * len(names)
        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                for _ in range(settle):
                    fns[name](*inputs)
                    sync()
                times[name] += [_time_once(fns[name], inputs, sync) for _ in range(per_round)]
            if budget_end is not None and r >= 1 and time.perf_counter() > budget_end:
                break
        after = cpu_conditions()
        return {name: _stats(times[name], inputs, threads, before, after) for name in names}


def _warm_up(fn: Callable[..., object], inputs: Sequence[torch.Tensor], sync: Callable[[], None], warmup: int,
             min_seconds: float, max_seconds: float | None) -> None:
    start = time.perf_counter()
    warm_end = start + min_seconds
    warm_cap = None if max_seconds is None else start + max_seconds
    done = 0
    while done < warmup or time.perf_counter() < warm_end:
        fn(*inputs)
        sync()
        done += 1
        if warm_cap is not None and time.perf_counter() > warm_cap:
            break


def _time_once(fn: Callable[..., object], inputs: Sequence[torch.Tensor], sync: Callable[[], None]) -> float:
    start = time.perf_counter_ns()
    fn(*inputs)
    sync()
    return (time.perf_counter_ns() - start) / 1e6


def _stats(times: list[float], inputs: Sequence[torch.Tensor], threads: int | None, before: CpuConditions,
           after: CpuConditions | None = None) -> LatencyStats:
    """Summarise ``times``; called inside the timing's thread setting, after the timed loop."""
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    used = torch.get_num_threads() if threads is None else threads
    after = after or cpu_conditions()
    readings = ContentionReadings(threads=used, cpus=available_cpus(), system_cpus=os.cpu_count() or 1,
                                  load=max(before.load, after.load),
                                  probe_ratio=worst(before.probe_ratio, after.probe_ratio),
                                  p25_ms=q[0], p75_ms=q[2])
    return LatencyStats(median_ms=statistics.median(times), p25_ms=q[0], p75_ms=q[2], min_ms=min(times),
                        repeats=len(times), batch_size=len(inputs[0]) if inputs else 0, threads=used,
                        timing_warning=timing_warning(readings))
