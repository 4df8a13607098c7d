"""Search strategies as Optuna samplers: aging evolution, REINFORCE, and the one search loop."""

from __future__ import annotations

import statistics

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from slimkit.core.errors import ConfigError, UnknownNameError
from slimkit.nas.search import finished, search
from slimkit.nas.strategies import ReinforceSampler, RegularizedEvolutionSampler, best_so_far, make_sampler

SPACE = {f"d{i}": ["a", "b", "c", "d"] for i in range(8)}
DISTS = {k: CategoricalDistribution(v) for k, v in SPACE.items()}


def _study(trials: list[tuple[dict[str, str], float]], direction: str = "maximize") -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction)
    for params, value in trials:
        study.add_trial(create_trial(params=params, distributions=DISTS, value=value))
    return study


def _cell(*letters: str) -> dict[str, str]:
    return dict(zip(SPACE, letters))


def test_evolution_mutates_one_choice_of_the_best_of_the_newest_trials():
    old_best = (_cell(*"dddddddd"), 100.0)  # the best trial of all, but older than the population
    newer = [(_cell(*("abcd"[(i + j) % 4] for j in range(8))), float(i)) for i in range(6)]
    study = _study([old_best] + newer)
    sampler = RegularizedEvolutionSampler(population=6, sample=6, seed=0)
    for _ in range(20):
        child = sampler.sample_relative(study, None, DISTS)
        parent = newer[-1][0]  # the best of the six newest: the aged-out best is never a parent
        assert sum(child[k] != parent[k] for k in SPACE) == 1
    minimising = _study(newer, "minimize")
    child = RegularizedEvolutionSampler(population=6, sample=6, seed=0).sample_relative(minimising, None, DISTS)
    assert sum(child[k] != newer[0][0][k] for k in SPACE) == 1


def test_evolution_draws_at_random_until_the_population_is_full():
    study = _study([(_cell(*"aaaaaaaa"), 1.0)] * 3)
    assert RegularizedEvolutionSampler(population=4, sample=2).sample_relative(study, None, DISTS) == {}
    with pytest.raises(ConfigError, match="population"):
        RegularizedEvolutionSampler(population=3, sample=5)
    two = optuna.create_study(directions=["maximize", "minimize"])
    two.add_trial(create_trial(params=_cell(*"aaaaaaaa"), distributions=DISTS, values=[1.0, 2.0]))
    with pytest.raises(ConfigError, match="nsga2"):
        RegularizedEvolutionSampler(population=2, sample=1).sample_relative(two, None, DISTS)


def test_reinforce_moves_probability_toward_rewarded_choices():
    sampler = ReinforceSampler(lr=0.5, seed=0)
    assert all(p.tolist() == pytest.approx([0.25] * 4) for p in sampler.policy(_study([]), DISTS).values())
    history = [(_cell(*(c * 8)), r) for _ in range(10) for c, r in (("a", 1.0), ("b", 0.0))]
    p = sampler.policy(_study(history), DISTS)["d0"]
    assert p[0] > 0.4 and p[0] > p[1] and p[1] < 0.25  # 'a' rewarded, 'b' punished
    p_min = sampler.policy(_study(history, "minimize"), DISTS)["d0"]
    assert p_min[1] > p_min[0]  # minimising: the lower value is the reward


def _onemax(target: str):
    return lambda p: float(sum(p[k] == t for k, t in zip(SPACE, target)))


def test_evolution_and_tpe_beat_random_search_at_equal_budget():
    """On a separable toy (choices matching a hidden target, 4^8 cells), over 5 seeds."""
    f = _onemax("dcbadcba")

    def best(strategy: str) -> float:
        return statistics.mean(max(t.value for t in finished(search(f, SPACE, strategy, 80, seed=s)))
                               for s in range(5))

    rnd = best("random")
    assert best("evolution") >= rnd + 1
    assert best("tpe") >= rnd + 1


def test_search_resumes_from_its_storage_and_checks_what_it_is_given(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    f = _onemax("aaaaaaaa")
    first = search(f, SPACE, "evolution", 12, seed=0, storage=url, study_name="s")
    kept = [(t.number, t.params, t.value) for t in finished(first)]
    again = search(f, SPACE, "evolution", 20, seed=1, storage=url, study_name="s")
    trials = finished(again)
    assert len(trials) == 20 and [(t.number, t.params, t.value) for t in trials[:12]] == kept
    assert len(finished(search(f, SPACE, "evolution", 20, storage=url, study_name="s"))) == 20  # nothing left
    with pytest.raises(ConfigError, match="optimises"):
        search(f, SPACE, "random", 21, storage=url, study_name="s", directions=["minimize"])
    with pytest.raises(ConfigError, match="study_name"):
        search(f, SPACE, "random", 5, storage=url)
    with pytest.raises(ConfigError, match="storage 'foo://x'"):  # a bad URL: named at once, not retried
        search(f, SPACE, "random", 5, storage="foo://x", study_name="s")
    with pytest.raises(ConfigError, match="unable to open database file"):
        search(f, SPACE, "random", 5, storage=f"sqlite:///{tmp_path}/no/such/dir/x.db", study_name="s")
    with pytest.raises(ConfigError, match="distinct"):
        search(f, {"x": [1, 1]}, "random", 5)
    with pytest.raises(UnknownNameError, match="evolution"):
        make_sampler("evolutoin")
    with pytest.raises(ConfigError, match="reinforce"):
        make_sampler("reinforce", lr=-1)


def test_a_worker_that_loses_the_race_to_create_the_storage_loads_it(tmp_path, monkeypatch):
    import sqlalchemy.exc

    real, calls = optuna.create_study, []

    def racing(**kwargs):  # the first call meets the tables another worker is creating
        calls.append(1)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("CREATE TABLE alembic_version", {}, Exception("already exists"))
        return real(**kwargs)

    monkeypatch.setattr(optuna, "create_study", racing)
    study = search(_onemax("aaaaaaaa"), SPACE, "random", 3, storage=f"sqlite:///{tmp_path / 'r.db'}", study_name="r")
    assert len(calls) == 2 and len(finished(study)) == 3
    monkeypatch.setattr(optuna, "create_study", lambda **kw: (_ for _ in ()).throw(ValueError("not a race")))
    with pytest.raises(ValueError, match="not a race"):  # anything else is not retried
        search(_onemax("aaaaaaaa"), SPACE, "random", 3, storage=f"sqlite:///{tmp_path / 'r.db'}", study_name="r")


def test_best_so_far():
    assert best_so_far([1, 3, 2, 5]) == [1, 3, 3, 5]
    assert best_so_far([4, 5, 1], maximize=False) == [4, 4, 1]


WORKER = """
import sys, time
from slimkit.nas.search import search
space = {f"d{i}": ["a", "b", "c", "d"] for i in range(8)}
def f(p):
    time.sleep(float(sys.argv[3]))
    return float(sum(v == "a" for v in p.values()))
search(f, space, "evolution", int(sys.argv[2]), seed=int(sys.argv[4]), storage=sys.argv[1], study_name="w")
"""


def test_workers_share_one_study_and_a_killed_worker_loses_no_finished_trial(tmp_path):
    import subprocess
    import sys
    import time

    url = f"sqlite:///{tmp_path / 'w.db'}"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)

    def start(trials: int, pause: float, seed: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), url, str(trials), str(pause), str(seed)])

    def done() -> list:
        try:
            return finished(optuna.load_study(study_name="w", storage=url))
        except KeyError:  # the study is not created yet
            return []

    victim = start(1000, 0.2, 0)
    deadline = time.time() + 120
    while len(done()) < 5 and time.time() < deadline:
        time.sleep(0.2)
    victim.kill()
    victim.wait()
    before = {t.number: (t.params, t.value) for t in done()}
    assert len(before) >= 5
    workers = [start(len(before) + 16, 0.02, s) for s in (1, 2)]  # two workers finish the study together
    assert all(w.wait(timeout=300) == 0 for w in workers)
    after = done()
    assert len(before) + 16 <= len(after) <= len(before) + 17  # the stop is checked after each trial: one may race
    assert {t.number: (t.params, t.value) for t in after if t.number in before} == before
