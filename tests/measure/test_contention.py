"""A latency timed on a busy CPU is marked (timing_warning), never reported as a plain figure."""

import multiprocessing
import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from slimkit.data.base import DataSplits, Split
from slimkit.measure import latency
from slimkit.measure.config import MeasureConfig
from slimkit.measure.contention import (ContentionReadings, available_cpus, latency_warning, thread_probe_ratio,
                                       timing_warning)
from slimkit.measure.latency import measure_latency
from slimkit.measure.model import measure_model

QUIET = ContentionReadings(threads=2, cpus=2, system_cpus=2, load=1.9, probe_ratio=0.7, p25_ms=0.09, p75_ms=0.11)


def test_quiet_readings_give_no_warning():
    assert timing_warning(QUIET) is None
    assert timing_warning(ContentionReadings(**{**QUIET.__dict__, "threads": 1, "probe_ratio": None})) is None


@pytest.mark.parametrize("change, says", [
    ({"threads": 4}, "4 threads on 2 available CPUs"),
    ({"probe_ratio": 250.0}, "2-thread matmul ran 250.0× slower than 1 thread"),
    ({"load": 4.2}, "load average 4.2 on 2 CPUs"),
    ({"p25_ms": 0.1, "p75_ms": 12.0}, "p75 120.0× p25"),
])
def test_each_sign_of_contention_is_named(change, says):
    warning = timing_warning(ContentionReadings(**{**QUIET.__dict__, **change}))
    assert warning is not None and warning.startswith("CPU busy: ") and says in warning


def test_the_reported_case_a_tight_spread_at_112_ms_is_still_caught_by_the_probe():
    readings = ContentionReadings(**{**QUIET.__dict__, "probe_ratio": 80.0, "p25_ms": 111.0, "p75_ms": 113.0})
    assert "slower than 1 thread" in timing_warning(readings)


def test_a_warning_lands_in_the_stats_and_in_each_step_of_results(monkeypatch):
    monkeypatch.setattr(latency, "timing_warning", lambda readings: f"CPU busy: test ({readings.threads} threads)")
    stats = measure_latency(lambda x: x, (torch.zeros(1),), warmup=0, repeats=3, threads=1, min_warmup_seconds=0)
    assert stats.timing_warning == "CPU busy: test (1 threads)" and stats.to_dict()["timing_warning"] == stats.timing_warning
    split = Split((torch.randn(8, 4),), torch.zeros(8, dtype=torch.long))
    task = SimpleNamespace(data=DataSplits(split, split, split), evaluate=lambda out, targets: {"quality": 0.0})
    cfg = MeasureConfig(batch_n=4, repeats=3, warmup=0, threads=1, memory=False)
    metrics = measure_model(nn.Linear(4, 3), task, cfg)
    assert metrics["timing_warning"] == "batch 1: CPU busy: test (1 threads); batch 4: CPU busy: test (1 threads)"


def test_no_warning_means_none_in_results(monkeypatch):
    monkeypatch.setattr(latency, "timing_warning", lambda readings: None)
    stats = measure_latency(lambda x: x, (torch.zeros(1),), warmup=0, repeats=3, threads=1, min_warmup_seconds=0)
    assert stats.timing_warning is None and latency_warning(stats.to_dict(), None) is None


def test_a_deploy_candidate_row_carries_the_warning_of_any_of_its_timings():
    from slimkit.backends.measure import BackendRun, write_table

    clean, busy = {"median_ms": 1.0, "batch_size": 1}, {"median_ms": 9.0, "batch_size": 8, "timing_warning": "CPU busy: x"}
    runs = [BackendRun("eager", "fp32", True, latency_b1=clean, latency_bN=clean),
            BackendRun("onnxruntime", "fp32", True, latency_b1=clean, latency_bN=busy),
            BackendRun("openvino", "fp32", True, latency_b1=clean, latency_bN=clean, versus_latency_b1=clean,
                       versus_latency_bN=clean, paired_latency_b1=busy, paired_latency_bN=clean)]
    assert [row["timing_warning"] for row in write_table(runs)] == [None, "batch 8: CPU busy: x", "batch 8: CPU busy: x"]


def test_the_probe_is_skipped_for_one_thread_and_measures_a_ratio_otherwise():
    assert thread_probe_ratio(1) is None
    assert thread_probe_ratio(2, size=64, repeats=3) > 0


def _busy_loop() -> None:
    while True:
        pass


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 8 * 8, 10)).eval()


def test_two_threads_on_busy_cores_is_either_sane_or_marked():
    """Busy loops on every core, then digits-cnn-sized conv net timed with 2 threads: the figure is
    within 5× of the same model timed just before on quiet cores, or it carries a warning."""
    model, x = _model(), (torch.randn(1, 1, 8, 8),)
    timing = dict(warmup=5, repeats=30, threads=2, max_seconds=2.0, min_warmup_seconds=0.1)
    quiet = measure_latency(model, x, **timing)
    hogs = [multiprocessing.get_context("fork").Process(target=_busy_loop, daemon=True)
            for _ in range(available_cpus())]
    try:
        for hog in hogs:
            hog.start()
        time.sleep(0.3)
        busy = measure_latency(model, x, **timing)
    finally:
        for hog in hogs:
            hog.kill()
            hog.join(timeout=5)
    assert busy.timing_warning is not None or busy.median_ms <= 5 * quiet.median_ms, (quiet, busy)
