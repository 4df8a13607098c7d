"""The per-block latency table: coverage of a space, prediction, budget, files."""

from __future__ import annotations

import itertools

import pytest

from slimkit.core.errors import SlimkitError
from slimkit.nas import latency
from slimkit.nas.latency import LatencyTable, build_table, pieces
from slimkit.nas.space import SearchSpace
from slimkit.zoo.arch import build_arch

SPACE = SearchSpace(base=["ir_r1_k3_s1_e1_c16", "ir_r2_k3_s2_e6_c24", "ir_r2_k3_s2_e6_c32"],
                    stages=[{}, {"depth": [1, 2], "kernel": [3, 5], "width": [0.5, 1.0]},
                            {"block": ["ir", "ds"], "width": [0.5, 1.0]}])


class _Fake:
    """A stand-in for a compiled piece: its 'milliseconds' are its parameter count / 1000, plus
    0.5 for the call (deterministic)."""

    def __init__(self, module, *args):
        self.ms = 0.5 + sum(p.numel() for p in module.parameters()) / 1000


def _fake_timing(monkeypatch):
    monkeypatch.setattr(latency, "compile_module", _Fake)
    monkeypatch.setattr(latency, "time_rounds", lambda runs, *a, **k: [r.ms for r in runs])


def test_the_table_covers_every_candidate_and_predicts_the_sum_of_its_pieces(monkeypatch):
    _fake_timing(monkeypatch)
    table = build_table(SPACE, (3, 32, 32), 10, progress=False)
    dims = SPACE.dimensions()
    for values in itertools.product(*dims.values()):  # every candidate of the space, 32 of them
        spec = SPACE.spec(dict(zip(dims, values)))
        net = build_arch(spec, num_classes=10)
        # the call's cost once (the null pieces'), not once per piece
        assert table.predict(spec) == pytest.approx(0.5 + sum(p.numel() for p in net.parameters()) / 1000)
    keys = [k for k, _, _ in pieces(SPACE.spec({}), (3, 32, 32), 10)]
    assert keys[0].startswith("stem(") and keys[-1].startswith("classifier(") and len(keys) == 1 + 1 + 1 + 2 + 1
    other = SearchSpace(base=["ir_r1_k3_s1_e1_c16", "ir_r1_k7_s2_e6_c24"])
    with pytest.raises(SlimkitError, match=r"no entry for 2 piece\(s\).*kernel=7"):
        table.predict(other.spec({}))


def test_a_build_past_its_budget_stops_and_says_how_far_it_got(monkeypatch):
    _fake_timing(monkeypatch)
    with pytest.raises(SlimkitError, match=r"time budget of 0 s spent after 0 of \d+ pieces"):
        build_table(SPACE, (3, 32, 32), 10, max_seconds=0, progress=False)


def test_tables_save_and_load_and_refuse_a_corrupt_file(tmp_path):
    table = LatencyTable("eager", 1, (3, 32, 32), 10, "cpu", {"stem(x)": 0.5})
    table.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json") == table
    (tmp_path / "bad.json").write_text('{"backend": "eager"}')
    with pytest.raises(SlimkitError, match="not a latency table"):
        LatencyTable.load(tmp_path / "bad.json")


def test_measured_tables_rank_networks_on_eager():
    """Real timing (eager, 1 thread) of a small space: the sum of block times ranks two networks
    far apart in cost the way their whole-network times do."""
    space = SearchSpace(base=["ir_r1_k3_s1_e1_c16", "ir_r2_k3_s2_e6_c24"], stages=[{}, {"depth": [1, 4]}])
    table = build_table(space, (3, 32, 32), 10, repeats=10, rounds=1, progress=False)
    small, big = space.spec({"s1.depth": 1}), space.spec({"s1.depth": 4})
    assert table.predict(big) > table.predict(small)
    report = latency.validate(table, [small, big], repeats=10, rounds=1)
    assert report["measured_ms"][1] > report["measured_ms"][0]
    assert latency.spearman([1, 2, 3], [10, 30, 20]) == pytest.approx(0.5)
