"""The vocabulary of a budgeted search: units to decide, their options, and a budget.

A unit is a named thing to decide (a layer, a block), named by its module path. Each unit has
options (keep it, quantize it to 4 bits, factorize it at rank 8, prune 30% of it), each with a
cost in the budget's unit and the quality drop measured with only that option applied. A table
maps every unit to its options; the allocators choose one option per unit from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from slimkit.core.errors import ConfigError


@dataclass(frozen=True)
class Option:
    """One way to decide a unit: ``choice`` is what the technique applies (bits, rank, ratio),
    ``cost`` what it spends (bytes, MACs, weights; 0 where no allocator reads it), ``drop`` the
    quality lost (points, or loss increase) with only this option applied."""

    choice: Any
    cost: float = 0.0
    drop: float = 0.0


Table = dict[str, list[Option]]  # unit -> its options, in the order the technique lists them


@dataclass(frozen=True)
class Budget:
    """A limit on an allocation's summed cost (``unit`` names what the cost counts: bytes, MACs,
    latency, weights) or on its summed quality drop."""

    limit: float
    on: Literal["cost", "drop"] = "cost"
    unit: str = ""

    def __post_init__(self) -> None:
        if self.on not in ("cost", "drop"):
            raise ConfigError(f"a budget limits the cost or the drop, not {self.on!r}")
        if not math.isfinite(self.limit) or self.limit < 0:
            raise ConfigError(f"a budget's limit must be a finite number >= 0, got {self.limit}")

    @classmethod
    def of_cost(cls, limit: float, unit: str = "") -> "Budget":
        return cls(limit, "cost", unit)

    @classmethod
    def of_drop(cls, limit: float) -> "Budget":
        return cls(limit, "drop", "points")


def solo_drops(table: Table) -> dict[str, float]:
    """{unit: drop of its first option}: the sensitivity of units that were probed at one option."""
    return {unit: options[0].drop for unit, options in table.items()}


def most_sensitive_first(drops: dict[str, float]) -> list[str]:
    """Units by drop, largest first (ties keep their order): the order promotions follow."""
    return sorted(drops, key=lambda unit: -drops[unit])
