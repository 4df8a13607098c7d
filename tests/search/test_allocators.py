"""The budgeted search: each allocator on hand-made tables with known answers, the knapsack against
brute force, the sensitivity scan's order, progress and time budget, and verify-and-tighten."""

import itertools
import random

import pytest

from slimkit.core.errors import ConfigError, SlimkitError
from slimkit.search import (Budget, Option, fewest_promotions, greedy, knapsack, most_sensitive_first, sensitivity,
                            solo_drops, threshold, tighten, under_threshold)


# ------------------------------------------------------------------------------ fewest promotions
def test_fewest_promotions_bisects_to_the_first_count_that_fits_and_never_evaluates_all():
    drops = [9.0, 7.0, 4.0, 2.5, 1.0, 0.5, 0.0]
    asked = []

    def drop_at(k):
        asked.append(k)
        return drops[k]

    assert fewest_promotions(6, drop_at, 2.5) == 3
    assert 6 not in asked and len(asked) <= 3
    asked.clear()
    assert fewest_promotions(6, drop_at, -1.0) == 6  # nothing fits: every unit promoted
    assert fewest_promotions(0, drop_at, 0.0) == 0


def test_promotions_follow_the_solo_drops_largest_first_ties_in_order():
    table = {"a": [Option(4, drop=1.0)], "b": [Option(4, drop=3.0)], "c": [Option(4, drop=1.0)]}
    assert solo_drops(table) == {"a": 1.0, "b": 3.0, "c": 1.0}
    assert most_sensitive_first(solo_drops(table)) == ["b", "a", "c"]


# ----------------------------------------------------------------------------------------- greedy
LAYERS = {  # (choice, weights, solo drop): the dense option first
    "fc1": [Option(None, 1000, 0.0), Option(64, 500, 0.2), Option(16, 200, 1.5)],
    "fc2": [Option(None, 400, 0.0), Option(32, 100, 0.6)],
    "fc3": [Option(None, 100, 0.0), Option(8, 90, 0.0)],
}


def test_greedy_takes_the_most_weights_saved_per_point_within_the_summed_drop():
    # free fc3 first (10 saved / 1e-6), then fc1 -> 64 (2500 per point), fc2 (500), fc1 -> 16 (~231)
    assert greedy(LAYERS, 0.0) == {"fc1": None, "fc2": None, "fc3": 8}
    assert greedy(LAYERS, 0.5) == {"fc1": 64, "fc2": None, "fc3": 8}
    assert greedy(LAYERS, 0.8) == {"fc1": 64, "fc2": 32, "fc3": 8}
    assert greedy(LAYERS, 2.1) == {"fc1": 16, "fc2": 32, "fc3": 8}
    assert greedy(LAYERS, 1.5) == {"fc1": 64, "fc2": 32, "fc3": 8}  # 1.5 + 0.6 would not fit


# -------------------------------------------------------------------------------------- threshold
CURVES = {  # ratio -> loss increase, weakest first
    "conv1": [Option(0.25, drop=0.01), Option(0.5, drop=0.05), Option(0.75, drop=0.40)],
    "conv2": [Option(0.25, drop=0.02), Option(0.5, drop=0.30), Option(0.75, drop=0.35)],
    "conv3": [Option(0.25, drop=0.50), Option(0.5, drop=0.20), Option(0.75, drop=0.90)],
}


def test_under_threshold_keeps_each_unit_below_it_up_to_its_first_excess():
    assert under_threshold(CURVES, 0.05, none=0.0) == {"conv1": 0.5, "conv2": 0.25, "conv3": 0.0}
    assert under_threshold(CURVES, 0.35, none=0.0) == {"conv1": 0.5, "conv2": 0.75, "conv3": 0.0}


def test_threshold_finds_the_smallest_threshold_that_meets_the_cost():
    asked = []

    def kept(ratios):  # share of channels kept, summed over the layers
        asked.append(dict(ratios))
        return sum(1 - r for r in ratios.values())

    ratios, level = threshold(CURVES, kept, 1.5, none=0.0)
    assert (ratios, level) == ({"conv1": 0.75, "conv2": 0.75, "conv3": 0.0}, 0.40)
    assert asked[0] == under_threshold(CURVES, 0.90, none=0.0)  # the loosest first, then bisection
    assert len(asked) <= 1 + 4
    assert threshold(CURVES, kept, 0.1, none=0.0) is None  # out of reach even at the loosest
    assert threshold({}, kept, 1.0) is None


# --------------------------------------------------------------------------------------- knapsack
def _brute_force(table, budget):
    """(least objective, least budgeted total among those) over every choice of options."""
    spend, keep = ("cost", "drop") if budget.on == "cost" else ("drop", "cost")
    best = None
    for combo in itertools.product(*table.values()):
        used, value = sum(getattr(o, spend) for o in combo), sum(getattr(o, keep) for o in combo)
        if used <= budget.limit + 1e-9 and (best is None or (value, used) < best):
            best = (value, used)
    return best


def _totals(table, picks, budget):
    spend, keep = ("cost", "drop") if budget.on == "cost" else ("drop", "cost")
    chosen = [next(o for o in table[u] if o.choice == c) for u, c in picks.items()]
    return sum(getattr(o, keep) for o in chosen), sum(getattr(o, spend) for o in chosen)


def _random_table(rng, units, grid):
    return {f"u{u}": [Option(i, cost=rng.randint(0, 20), drop=rng.choice(grid)) for i in range(rng.randint(1, 4))]
            for u in range(units)}


@pytest.mark.parametrize("seed", range(40))
def test_knapsack_matches_brute_force_under_a_cost_budget(seed):
    rng = random.Random(seed)
    table = _random_table(rng, rng.randint(1, 5), [x / 4 for x in range(-2, 13)])
    budget = Budget.of_cost(rng.randint(0, 60), "bytes")
    best, picks = _brute_force(table, budget), knapsack(table, budget, resolution=64)
    if best is None:
        assert picks is None
    else:
        assert _totals(table, picks, budget) == pytest.approx(best)


@pytest.mark.parametrize("seed", range(40))
def test_knapsack_matches_brute_force_under_a_drop_budget(seed):
    rng = random.Random(seed)
    table = _random_table(rng, rng.randint(1, 5), [x / 4 for x in range(0, 13)])
    budget = Budget.of_drop(rng.randint(0, 24) / 4)
    best, picks = _brute_force(table, budget), knapsack(table, budget)  # integer costs: counted exactly
    if best is None:
        assert picks is None
    else:
        assert _totals(table, picks, budget) == pytest.approx(best)


@pytest.mark.parametrize("seed", range(20))
def test_knapsack_off_the_grid_always_fits_and_is_near_optimal(seed):
    rng = random.Random(seed)
    table = {f"u{u}": [Option(i, cost=rng.uniform(0, 1e6), drop=rng.uniform(-0.5, 5)) for i in range(4)]
             for u in range(6)}
    least = sum(min(o.cost for o in opts) for opts in table.values())
    budget = Budget.of_cost(least + rng.uniform(0, 2e6), "bytes")
    best, picks = _brute_force(table, budget), knapsack(table, budget, resolution=1000)
    value, used = _totals(table, picks, budget)
    assert used <= budget.limit
    span = sum(max(o.drop for o in opts) - min(o.drop for o in opts) for opts in table.values())
    assert value <= best[0] + len(table) * span / 1000  # half a step per unit, twice over


def test_knapsack_refusals_and_edges():
    table = {"a": [Option("x", cost=5, drop=0.0)], "b": [Option("y", cost=3, drop=1.0), Option("z", cost=1, drop=2.0)]}
    assert knapsack(table, Budget.of_cost(5)) is None  # the cheapest choice costs 6
    assert knapsack(table, Budget.of_cost(6)) == {"a": "x", "b": "z"}
    assert knapsack(table, Budget.of_drop(1.0)) == {"a": "x", "b": "y"}
    assert knapsack({}, Budget.of_cost(0)) == {}
    tie = {"a": [Option("dear", cost=9, drop=1.0), Option("cheap", cost=2, drop=1.0)]}
    assert knapsack(tie, Budget.of_cost(10)) == {"a": "cheap"}  # equal drops: the smaller cost
    with pytest.raises(ConfigError, match="limit"):
        Budget.of_cost(-1)
    with pytest.raises(ConfigError, match="without options"):
        knapsack({"a": []}, Budget.of_cost(1))


# ------------------------------------------------------------------------------------ sensitivity
def test_sensitivity_probes_each_option_of_each_unit_alone_in_order_and_reports_progress():
    probed, told = [], []

    def probe(unit, choice):
        probed.append((unit, choice))
        return {"a": 1.0, "b": 2.0}[unit] * choice

    table = sensitivity(["a", "b"], [1, 3], probe, progress=lambda done, total, unit: told.append((done, total, unit)))
    assert probed == [("a", 1), ("a", 3), ("b", 1), ("b", 3)]
    assert table == {"a": [Option(1, drop=1.0), Option(3, drop=3.0)], "b": [Option(1, drop=2.0), Option(3, drop=6.0)]}
    assert told == [(1, 4, "a"), (2, 4, "a"), (3, 4, "b"), (4, 4, "b")]
    costed = sensitivity(["a"], lambda unit: [Option(8, cost=100)], probe)
    assert costed == {"a": [Option(8, cost=100, drop=8.0)]}


def test_a_scan_past_its_time_budget_stops_saying_what_it_probed(monkeypatch):
    from slimkit.search import scan as module

    clock = [0.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: clock[0])

    def probe(unit, choice):
        clock[0] += 10.0
        return 0.0

    with pytest.raises(SlimkitError) as err:
        sensitivity(["layer1", "layer2", "layer3"], [0.25, 0.5], probe, time_budget=25, what="factorize search")
    message = str(err.value)
    assert "factorize search" in message and "25 s" in message and "after 3 of 6 probes" in message
    assert "1 of 3 units probed fully (layer1)" in message and "layer2 at 1 of 2 options" in message
    clock[0] = 0.0
    assert len(sensitivity(["layer1"], [0.25, 0.5], probe, time_budget=15)["layer1"]) == 2  # the last may end late


# --------------------------------------------------------------------------------------- tighten
def test_tighten_returns_the_first_candidate_that_fits_drawing_each_only_when_needed():
    drawn, verified = [], []

    def candidates():
        for k in range(5):
            drawn.append(k)
            yield k

    def verify(k):
        verified.append(k)
        return 10 - 3 * k

    assert tighten(candidates(), verify, lambda d: d <= 4) == (2, 4)
    assert drawn == verified == [0, 1, 2]
    assert tighten(range(3), verify, lambda d: d < -100) == (2, 4)  # the tightest, whatever its verdict
    with pytest.raises(SlimkitError, match="no candidate"):
        tighten([], verify, lambda d: True)
