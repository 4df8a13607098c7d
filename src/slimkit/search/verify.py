"""Verify-and-tighten: an allocation from solo drops is checked on the whole model, and tightened
(one more promotion, half the budget) until the check passes."""

from __future__ import annotations

from typing import Callable, Iterable, TypeVar

from slimkit.core.errors import SlimkitError

C = TypeVar("C")
V = TypeVar("V")


def tighten(candidates: Iterable[C], verify: Callable[[C], V], fits: Callable[[V], bool]) -> tuple[C, V]:
    """(candidate, verdict) for the first candidate, in order from loosest to tightest, whose
    ``verify(candidate)`` verdict ``fits``; the last candidate is taken whatever its verdict (it
    is the tightest there is: every unit promoted, nothing allocated). The next candidate is drawn
    only after the current one failed."""
    items = iter(candidates)
    candidate = next(items, _END)
    if candidate is _END:
        raise SlimkitError("tighten: no candidate to verify")
    while True:
        verdict = verify(candidate)
        following = _END if fits(verdict) else next(items, _END)
        if following is _END:
            return candidate, verdict
        candidate = following


_END = object()
