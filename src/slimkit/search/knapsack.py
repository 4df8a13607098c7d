"""Multiple-choice knapsack: one option per unit, by dynamic programming over the discretised
objective. Under a cost budget it minimises the summed drop; under a drop budget, the summed cost."""

from __future__ import annotations

import math
from typing import Any

import torch

from slimkit.core.errors import ConfigError
from slimkit.search.table import Budget, Table


def knapsack(table: Table, budget: Budget, resolution: int = 10_000) -> dict[str, Any] | None:
    """{unit: choice} minimising the summed drop with summed cost within ``budget.limit`` (a cost
    budget), or the summed cost with summed drop within it (a drop budget); among equal
    objectives the smaller budgeted total wins. None when no choice of options fits.

    The budget is checked exactly; the objective is counted in ``resolution`` steps over its
    range, so the answer is optimal to within half a step per unit, and exactly optimal when
    the objective's values are multiples of the step (integers spanning at most ``resolution``
    are counted one by one)."""
    if resolution < 1:
        raise ConfigError(f"knapsack resolution must be >= 1, got {resolution}")
    spend = "cost" if budget.on == "cost" else "drop"
    minimise = "drop" if budget.on == "cost" else "cost"
    values = [[getattr(o, minimise) for o in opts] for opts in table.values()]
    spends = [[getattr(o, spend) for o in opts] for opts in table.values()]
    if any(not opts for opts in values):
        raise ConfigError(f"knapsack: units without options: {[u for u, o in table.items() if not o]}")
    picks = _solve(_discretised(values, resolution), spends, budget.limit)
    return None if picks is None else {unit: table[unit][i].choice for unit, i in zip(table, picks)}


def _discretised(values: list[list[float]], resolution: int) -> list[list[int]]:
    """Each unit's values, less the unit's least, in steps: integers when they span little."""
    shifted = [[v - min(vs) for v in vs] for vs in values]
    span = sum(max(vs) for vs in shifted)
    integral = all(float(v).is_integer() for vs in shifted for v in vs)
    step = 1.0 if span == 0 or (integral and span <= resolution) else span / resolution
    return [[int(round(v / step)) for v in vs] for vs in shifted]


def _solve(steps: list[list[int]], spends: list[list[float]], limit: float) -> list[int] | None:
    """Indices, one per unit, with the least summed steps whose summed spend is within ``limit``."""
    size = sum(max(s) for s in steps) + 1
    least = torch.full((size,), math.inf, dtype=torch.float64)  # least[k]: least spend at exactly k steps
    least[0] = 0.0
    picks = []
    for unit_steps, unit_spends in zip(steps, spends):
        new = torch.full_like(least, math.inf)
        pick = torch.full((size,), -1, dtype=torch.long)
        for i, (k, s) in enumerate(zip(unit_steps, unit_spends)):
            candidate = torch.full_like(least, math.inf)
            candidate[k:] = least[:size - k] + s
            better = candidate < new
            new = torch.where(better, candidate, new)
            pick[better] = i
        least = new
        picks.append(pick)
    fits = (least <= limit + 1e-9 * max(1.0, abs(limit))).nonzero()
    if len(fits) == 0:
        return None
    k, chosen = int(fits[0]), []
    for unit_steps, pick in zip(reversed(steps), reversed(picks)):
        chosen.append(int(pick[k]))
        k -= unit_steps[chosen[-1]]
    return chosen[::-1]
