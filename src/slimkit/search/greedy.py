"""Greedy allocation: the most cost saved per point of drop, while the summed drops fit."""

from __future__ import annotations

from typing import Any

from slimkit.search.table import Table


def greedy(table: Table, max_drop: float) -> dict[str, Any]:
    """{unit: choice}: every unit starts at its first option (the reference); then the one-unit
    move to a later option that saves the most cost per point of (solo) drop added is taken,
    repeatedly, while the summed drops stay within ``max_drop``. A move adding no drop counts as
    adding 1e-6 points, so free savings go first, largest first."""
    current = {unit: 0 for unit in table}
    spent = 0.0
    while True:
        move = _best_move(table, current, spent, max_drop)
        if move is None:
            return {unit: table[unit][i].choice for unit, i in current.items()}
        unit, j, added = move
        current[unit] = j
        spent += max(added, 0.0)


def _best_move(table: Table, current: dict[str, int], spent: float, max_drop: float
               ) -> tuple[str, int, float] | None:
    best, best_score = None, -1.0
    for unit, options in table.items():
        here = options[current[unit]]
        for j in range(current[unit] + 1, len(options)):
            added = options[j].drop - here.drop
            if spent + added > max_drop + 1e-12:
                continue
            score = (here.cost - options[j].cost) / max(added, 1e-6)
            if score > best_score:
                best, best_score = (unit, j, added), score
    return best
