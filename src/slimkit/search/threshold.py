"""Threshold allocation (Distiller's sensitivity pruning): the strongest option per unit whose drop
stays under one threshold, the threshold bisected so a cost function meets a budget."""

from __future__ import annotations

from typing import Any, Callable

from slimkit.search.promotions import fewest_promotions
from slimkit.search.table import Table


def under_threshold(table: Table, threshold: float, none: Any = None) -> dict[str, Any]:
    """{unit: the last option, in table order (weakest to strongest), up to which every option's
    drop stays within ``threshold``; ``none`` if even its first exceeds it}."""
    out = {}
    for unit, options in table.items():
        best = none
        for option in options:
            if option.drop > threshold:
                break
            best = option.choice
        out[unit] = best
    return out


def threshold(table: Table, cost: Callable[[dict[str, Any]], float], limit: float, none: Any = None
              ) -> tuple[dict[str, Any], float] | None:
    """(allocation, threshold) for the smallest threshold, among the table's drops, whose
    allocation ``under_threshold`` costs at most ``limit`` (``cost`` measures an allocation, e.g.
    the MACs of the model pruned that way); None when even the largest threshold costs more.

    Bisection: cost is assumed to fall as the threshold rises. The largest threshold is evaluated
    first, then about log2(levels) more."""
    levels = sorted({option.drop for options in table.values() for option in options})
    if not levels or cost(under_threshold(table, levels[-1], none)) > limit:
        return None
    i = fewest_promotions(len(levels) - 1, lambda k: cost(under_threshold(table, levels[k], none)), limit)
    return under_threshold(table, levels[i], none), levels[i]
