"""The nas recipe step: constraints before training, the best feasible candidate chosen and
rebuilt from its spec, latency budgets through the table, resumption from a storage."""

from __future__ import annotations

import pytest
import torch

from slimkit.core.config import parse_config
from slimkit.core.errors import ConfigError
from slimkit.core.registry import STEPS
from slimkit.nas import latency
from slimkit.measure.pareto import pareto_front
from slimkit.nas.step import restore_nas
from slimkit.tasks import build_task
from slimkit.tasks.context import Context
from slimkit.train.loop import fit

SPACE = {"base": ["conv_r1_k3_s1_c8", "ir_r1_k3_s2_e2_c16"], "stem": 8,
         "stages": [{}, {"depth": [1, 2, 3], "width": [0.5, 1.0]}]}


def _run(options: dict, task_name: str = "digits-cnn"):
    task = build_task(task_name)
    calls = []

    def counting_fit(model, data, cfg, **kwargs):
        calls.append(sum(p.numel() for p in model.parameters()))
        return fit(model, data, cfg, **kwargs)

    cfg = parse_config(STEPS.entry("nas").config, options, "nas")
    result = STEPS.get("nas").fn(task.build_model(), cfg, Context(task=task, train_fn=counting_fit))
    return task, result, calls


def test_candidates_over_budget_are_not_trained_and_the_best_feasible_one_is_chosen():
    task, result, calls = _run({"space": SPACE, "trials": 6, "strategy": "random", "max_macs": 65_000,
                                "finetune": {"epochs": 2}})
    info = result.info
    trials = info["trials"]
    feasible = [t for t in trials if t["feasible"]]
    assert 0 < len(feasible) < len(trials)  # the budget cut some candidates
    assert all(t["macs"] <= 65_000 for t in feasible) and all(t["macs"] > 65_000 for t in trials if not t["feasible"])
    assert len(calls) == len(feasible)  # only feasible candidates trained
    assert info["chosen"]["validation_quality"] == max(t["quality"] for t in feasible)
    assert info["chosen"]["spec"] == next(t["spec"] for t in trials if t["number"] == info["chosen"]["trial"])
    assert not info["retrained"]  # the candidate's own training is kept
    # the structure rebuilds the chosen network: same tensors load, same outputs
    rebuilt = restore_nas(task.build_model(), result.structure)
    rebuilt.load_state_dict(result.model.state_dict())
    x = task.data.test.inputs[0][:8]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), result.model.eval()(x), rtol=0, atol=0)
    assert result.structure.spec.strings() == info["chosen"]["spec"]
    assert set(info["pareto"]["trials"]) <= {t["number"] for t in feasible}


def test_a_latency_budget_uses_the_measured_table(monkeypatch):
    class Fake:  # 'milliseconds' = parameters / 1000 + 0.1 per call: deterministic, no timing
        def __init__(self, module, *args):
            self.ms = 0.1 + sum(p.numel() for p in module.parameters()) / 1000

    monkeypatch.setattr(latency, "compile_module", Fake)
    monkeypatch.setattr(latency, "time_rounds", lambda runs, *a, **k: [r.ms for r in runs])
    _, result, _ = _run({"space": SPACE, "trials": 6, "strategy": "tpe", "max_latency_ms": 2.5,
                         "finetune": {"epochs": 1}})
    trials = result.info["trials"]
    assert all(t["latency_ms"] is not None for t in trials)
    assert all((t["latency_ms"] <= 2.5) == t["feasible"] for t in trials)
    assert result.info["pareto"]["cost"] == "latency_ms" and result.info["latency_table"]["backend"] == "eager"


def test_no_feasible_candidate_and_vector_inputs_are_errors():
    with pytest.raises(ConfigError, match=r"none of the 3 candidates met the budget \(params <= 10\)"):
        _run({"space": SPACE, "trials": 3, "max_params": 10})
    with pytest.raises(ConfigError, match="images"):
        _run({"space": SPACE, "trials": 1}, "digits-mlp")
    with pytest.raises(ConfigError, match="study_name"):
        parse_config(STEPS.entry("nas").config, {"storage": "sqlite:///x.db"}, "nas")
    with pytest.raises(ConfigError, match="unknown search space 'mobile-33'"):
        _run({"space": "mobile-33"})


def test_a_rerun_on_the_same_storage_resumes_and_retrains_the_chosen_network(tmp_path):
    options = {"space": SPACE, "trials": 3, "strategy": "evolution", "strategy_options": {"population": 2, "sample": 1},
               "storage": f"sqlite:///{tmp_path / 'nas.db'}", "study_name": "digits", "finetune": {"epochs": 1}}
    _, first, calls = _run(options)
    assert len(calls) == len([t for t in first.info["trials"] if t["feasible"]]) == 3
    _, second, calls = _run({**options, "trials": 5})
    assert len(second.info["trials"]) == 5 and second.info["trials"][:3] == first.info["trials"]
    assert len(calls) == 2 + (1 if second.info["retrained"] else 0)  # only the missing trials train
    if second.info["chosen"]["trial"] < 3:  # chosen from the first run: its weights are rebuilt by training
        assert second.info["retrained"]


def test_the_time_budget_ends_the_search_with_the_best_so_far():
    _, result, calls = _run({"space": SPACE, "trials": 6, "max_seconds": 0.01, "finetune": {"epochs": 1}})
    assert len(result.info["trials"]) == 1 and len(calls) == 1  # the trial running at the deadline finishes
    assert result.info["chosen"]["trial"] == 0


def test_pareto_front():
    assert pareto_front([(1, 0.5), (2, 0.4), (3, 0.9), (0.5, 0.1), (3, 0.8)]) == [3, 0, 2]


def test_nsga2_searches_quality_and_cost_with_the_budget_as_its_constraint():
    task, result, calls = _run({"space": SPACE, "trials": 8, "strategy": "nsga2", "max_macs": 65_000,
                                "strategy_options": {"population_size": 4}, "finetune": {"epochs": 1}})
    info = result.info
    feasible = [t for t in info["trials"] if t["feasible"]]
    assert 0 < len(feasible) < len(info["trials"]) and len(calls) == len(feasible)
    assert info["chosen"]["validation_quality"] == max(t["quality"] for t in feasible)
    front = info["pareto"]["trials"]
    points = {t["number"]: (t["macs"], t["quality"]) for t in feasible}
    assert front and all(not (points[o][0] <= points[f][0] and points[o][1] > points[f][1])
                         for f in front for o in points)  # nothing beats a front point on both
