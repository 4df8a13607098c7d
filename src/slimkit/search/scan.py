"""Sensitivity analysis: every option of every unit probed alone, into a table the allocators read."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Sequence

from slimkit.core.errors import SlimkitError
from slimkit.search.table import Option, Table

Progress = Callable[[int, int, str], None]  # (probes done, probes in all, the unit just probed)


def sensitivity(units: Sequence[str], options: Sequence[Any] | Callable[[str], Sequence[Option]],
                probe: Callable[[str, Any], float], *, progress: Progress | None = None,
                time_budget: float | None = None, what: str = "sensitivity scan") -> Table:
    """{unit: its options with ``drop`` measured}: ``probe(unit, choice)`` applies one option to
    one unit, everything else unchanged, and returns the drop. Units are probed in order, each
    unit's options in order.

    ``options`` is one list of choices shared by every unit, or a function giving a unit's
    options (their costs set, drops to be measured). ``progress`` is told after every probe.
    With ``time_budget`` (seconds), a scan still running past it stops with a SlimkitError
    saying how far it got, so a scan of a huge graph never runs on silently."""
    listed = {unit: _options_of(unit, options) for unit in units}
    total = sum(len(opts) for opts in listed.values())
    start, done = time.monotonic(), 0
    table: Table = {}
    for unit, opts in listed.items():
        table[unit] = []
        for option in opts:
            table[unit].append(replace(option, drop=float(probe(unit, option.choice))))
            done += 1
            if progress is not None:
                progress(done, total, unit)
            if time_budget is not None and done < total and time.monotonic() - start > time_budget:
                raise SlimkitError(_out_of_time(what, table, listed, done, total, time_budget))
    return table


def _options_of(unit: str, options: Sequence[Any] | Callable[[str], Sequence[Option]]) -> list[Option]:
    if callable(options):
        return list(options(unit))
    return [Option(choice) for choice in options]


def _out_of_time(what: str, table: Table, listed: dict[str, list[Option]], done: int, total: int,
                 budget: float) -> str:
    finished = [u for u, opts in table.items() if len(opts) == len(listed[u])]
    shown = ", ".join(finished[:5]) + (f" and {len(finished) - 5} more" if len(finished) > 5 else "")
    last = next(reversed(table))
    partial = "" if last in finished else f"; {last} at {len(table[last])} of {len(listed[last])} options"
    return (f"{what}: the time budget of {budget:g} s ran out after {done} of {total} probes: "
            f"{len(finished)} of {len(listed)} units probed fully ({shown or 'none'}){partial}. "
            "Probe fewer units or options, or allow more time")
