"""A rich progress bar for a sensitivity scan (on a terminal only: the runner's ``ctx.progress``)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from slimkit.search.scan import Progress


@contextmanager
def scan_progress(enabled: bool, description: str) -> Iterator[Progress | None]:
    """A ``progress`` callback for ``sensitivity`` drawing a transient bar, or None when disabled."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

    with Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
             TextColumn("{task.fields[unit]}"), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(description, total=None, unit="")

        def advance(done: int, total: int, unit: str) -> None:
            bar.update(task, completed=done, total=total, unit=unit)

        yield advance
