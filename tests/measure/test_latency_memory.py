import time

import pytest
import torch
import torch.nn as nn

from slimkit.measure.latency import measure_latency, measure_paired_latency
from slimkit.measure.memory import peak_activation_bytes, peak_inference_bytes


def test_latency_of_a_known_sleep():
    stats = measure_latency(lambda x: time.sleep(0.002), (torch.zeros(1),), warmup=1, repeats=7)
    assert 2.0 <= stats.median_ms < 10.0
    assert stats.p25_ms <= stats.median_ms <= stats.p75_ms
    assert stats.repeats == 7 and stats.batch_size == 1


def test_paired_latency_interleaves_abba_and_times_each_callable():
    calls = []

    def sleeper(name, seconds):
        def fn(x):
            calls.append(name)
            time.sleep(seconds)
        return fn

    stats = measure_paired_latency({"fast": sleeper("fast", 0.001), "slow": sleeper("slow", 0.004)}, [torch.zeros(2)],
                                   warmup=1, repeats=8, rounds=4, min_warmup_seconds=0, settle=1)
    timed = calls[2:]  # one warm-up call each, then rounds of (1 settling + 2 timed): fast | slow, slow | fast, ...
    assert timed == ["fast"] * 3 + ["slow"] * 6 + ["fast"] * 6 + ["slow"] * 6 + ["fast"] * 3
    assert stats["fast"].repeats == stats["slow"].repeats == 8 and stats["fast"].batch_size == 2
    assert 1.0 <= stats["fast"].median_ms < 3.0 and 4.0 <= stats["slow"].median_ms < 8.0


def test_latency_budget_caps_repeats():
    stats = measure_latency(lambda x: time.sleep(0.01), (torch.zeros(1),), warmup=0, repeats=1000, max_seconds=0.05)
    assert 3 <= stats.repeats < 20


def test_latency_budget_caps_the_warm_up_of_a_slow_model():
    calls = []
    stats = measure_latency(lambda x: (calls.append(1), time.sleep(0.06)), (torch.zeros(1),), warmup=5, repeats=30,
                            max_seconds=0.05)
    assert stats.repeats == 3 and len(calls) == 4  # one warm-up run and the 3 timed repeats always taken


def test_latency_restores_thread_count():
    before = torch.get_num_threads()
    measure_latency(lambda x: x, (torch.zeros(1),), repeats=3, threads=before + 1)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("inplace, expected", [
    (False, 64 * 2000 * 4 * 2),            # linear output and ReLU output alive together
    (True, 64 * 2000 * 4 + 64 * 500 * 4),   # in-place ReLU: linear output, then the last output
])
def test_peak_activations_of_known_mlp(inplace, expected):
    model = nn.Sequential(nn.Linear(1000, 2000), nn.ReLU(inplace=inplace), nn.Linear(2000, 500)).eval()
    assert peak_activation_bytes(model, (torch.randn(64, 1000),)) == expected


def test_peak_memory_includes_weights_and_views_are_free():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 16 * 16, 10)).eval()
    x = torch.randn(2, 3, 16, 16)
    activations = 2 * 8 * 16 * 16 * 4 + 2 * 10 * 4  # conv output (flatten is a view) + logits
    weights = 4 * (8 * 3 * 9 + 8 + 10 * 2048 + 10)
    assert peak_inference_bytes(model, (x,)) == weights + activations


def test_warmup_is_time_based_as_well_as_counted():
    calls = []
    stats = measure_latency(lambda x: calls.append(1), (torch.zeros(1),), warmup=2, repeats=3, min_warmup_seconds=0.05)
    assert len(calls) > 100 + stats.repeats  # a fast function warms up for the whole 50 ms, not just twice
