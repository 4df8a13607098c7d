"""Every step that runs a sensitivity scan honours a time budget from its config: a scan past it
stops with an error saying how far it got, instead of running on."""

import pytest

from slimkit.core.config import parse_config
from slimkit.core.errors import SlimkitError
from slimkit.core.registry import STEPS, load_builtins
from slimkit.tasks import build_task
from slimkit.tasks.context import Context

TINY = 1e-9  # seconds: over budget after the first probe
SEARCHING = {
    "quantize": {"max_quality_drop": 0.5, "search_seconds": TINY, "calibration_samples": 64},
    "quantize_weights": {"max_quality_drop": 0.5, "search_seconds": TINY, "algorithm": "rtn", "group_size": 32},
    "factorize": {"layers": ["linear", "conv"], "search": {"ratios": [0.3, 0.5], "seconds": TINY}},
    "prune_structured": {"target_macs": 0.6, "allocation": "sensitivity", "sensitivity_grid": [0.2, 0.4],
                         "search_seconds": TINY},
    "prune_structured#blocks": {"blocks": 1, "search_seconds": TINY},
}


@pytest.mark.parametrize("case", sorted(SEARCHING))
def test_a_scan_past_its_time_budget_stops_and_says_how_far_it_got(case):
    load_builtins()
    name = case.split("#")[0]
    task = build_task("digits-cnn")
    cfg = parse_config(STEPS.entry(name).config, SEARCHING[case], name)
    with pytest.raises(SlimkitError, match=r"time budget of 1e-09 s ran out after 1 of \d+ probes: .* units probed"):
        STEPS.get(name).fn(task.build_model(), cfg, Context(task=task))
