"""Is the CPU busy? A figure timed while other processes hold the cores can be wrong by orders
of magnitude (a thread pool waiting on a descheduled worker), with a tight spread that hides it;
``timing_warning`` names the signs, and every latency figure carries its verdict."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import torch

PROBE_SLOWDOWN = 2.0   # the N-thread probe this much slower than 1 thread: the cores are busy
SPREAD = 3.0           # p75 over p25 beyond this: repeats disagree too much to trust the median
LOAD_MARGIN = 0.5      # 1-minute load average above the CPU count by this much: oversubscribed


@dataclass(frozen=True)
class CpuConditions:
    """What the CPU looked like at one moment: load average and the thread probe's slowdown."""
    load: float
    probe_ratio: float | None


@dataclass(frozen=True)
class ContentionReadings:
    """Everything ``timing_warning`` judges; injected by tests, gathered by ``_stats``."""
    threads: int              # intra-op threads the figure was timed with
    cpus: int                 # CPUs this process may run on (affinity)
    system_cpus: int          # CPUs the load average is spread over
    load: float               # highest 1-minute load average before / after timing
    probe_ratio: float | None  # N-thread probe time / 1-thread probe time (None for 1 thread)
    p25_ms: float
    p75_ms: float


def timing_warning(r: ContentionReadings) -> str | None:
    """A short reason the figure may be contaminated by other work on the CPU, or None."""
    reasons = []
    if r.threads > r.cpus:
        reasons.append(f"{r.threads} threads on {r.cpus} available CPU{'s' * (r.cpus != 1)}")
    if r.probe_ratio is not None and r.probe_ratio > PROBE_SLOWDOWN:
        reasons.append(f"a {r.threads}-thread matmul ran {r.probe_ratio:.1f}× slower than 1 thread")
    if r.load > r.system_cpus + LOAD_MARGIN:
        reasons.append(f"load average {r.load:.1f} on {r.system_cpus} CPUs")
    if r.p25_ms > 0 and r.p75_ms / r.p25_ms > SPREAD:
        reasons.append(f"p75 {r.p75_ms / r.p25_ms:.1f}× p25")
    return "CPU busy: " + "; ".join(reasons) if reasons else None


def cpu_conditions() -> CpuConditions:
    """Load average and the probe's slowdown at the current torch thread count."""
    return CpuConditions(load=_load_average(), probe_ratio=thread_probe_ratio(torch.get_num_threads()))


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def thread_probe_ratio(threads: int, size: int = 256, repeats: int = 9) -> float | None:
    """Median time of a fixed matmul with ``threads`` threads over its median with 1 thread.

    On idle cores more threads are never much slower; on busy ones a pool waiting for a
    descheduled worker is, by orders of magnitude. The two are timed interleaved.
    """
    if threads <= 1:
        return None
    from slimkit.measure.latency import torch_threads

    a, b = torch.randn(size, size), torch.randn(size, size)
    one, many = [], []
    with torch.inference_mode():
        for count in (1, threads):  # untimed: the thread pool starts
            with torch_threads(count):
                torch.mm(a, b)
        for _ in range(repeats):
            for count, into in ((1, one), (threads, many)):
                with torch_threads(count):
                    start = time.perf_counter_ns()
                    torch.mm(a, b)
                    into.append(time.perf_counter_ns() - start)
    return statistics.median(many) / max(statistics.median(one), 1)


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def worst(*ratios: float | None) -> float | None:
    known = [r for r in ratios if r is not None]
    return max(known) if known else None


def latency_warning(*stats: dict | None) -> str | None:
    """One step's warning from its latency dicts (results.json ``latency_b1`` / ``latency_bN``)."""
    notes = [f"batch {s['batch_size']}: {s['timing_warning']}" for s in stats if s and s.get("timing_warning")]
    return "; ".join(notes) or None
