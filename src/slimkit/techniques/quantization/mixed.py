"""Mixed precision under a quality budget: the search both quantizers share.

Layers are ranked by sensitivity (the quality lost when only that layer is quantized) and
promoted to higher precision most sensitive first; the fewest promotions that keep the quality
drop within the budget are found by bisection. Quality is assumed to rise with promotions (the
callers check the final model and promote further if it does not fit).
"""

from __future__ import annotations

from typing import Callable


def fewest_promotions(total: int, drop_at: Callable[[int], float], max_drop: float) -> int:
    """The smallest ``k`` in ``[0, total]`` with ``drop_at(k) <= max_drop``; ``k = total`` (every
    layer promoted to the reference precision) is taken to fit without being evaluated."""
    lo, hi = 0, total
    while lo < hi:
        mid = (lo + hi) // 2
        if drop_at(mid) <= max_drop:
            hi = mid
        else:
            lo = mid + 1
    return hi
