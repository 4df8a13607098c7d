"""Bisection over an ordered list of promotions: the fewest that bring a measure within a limit."""

from __future__ import annotations

from typing import Callable


def fewest_promotions(total: int, drop_at: Callable[[int], float], max_drop: float) -> int:
    """The smallest ``k`` in ``[0, total]`` with ``drop_at(k) <= max_drop``, by bisection.

    ``drop_at(k)`` is the measure (a quality drop, or a cost) after the first ``k`` promotions and
    is assumed to fall as ``k`` grows; ``k = total`` is taken to fit without being evaluated (every
    unit promoted is the reference, or the caller checked it)."""
    lo, hi = 0, total
    while lo < hi:
        mid = (lo + hi) // 2
        if drop_at(mid) <= max_drop:
            hi = mid
        else:
            lo = mid + 1
    return hi
