"""The training progress bar (rich, transient), or nothing."""

from __future__ import annotations


class _NoProgress:
    def __enter__(self):
        return lambda text: None

    def __exit__(self, *exc):
        return False


class _RichProgress:
    def __init__(self, description: str, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeRemainingColumn(), transient=True)
        self.description, self.total = description, total

    def __enter__(self):
        self.progress.__enter__()
        task = self.progress.add_task(self.description, total=self.total, status="")

        def advance(text: str) -> None:
            self.progress.update(task, advance=1, status=text)

        return advance

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)


def progress_bar(enabled: bool, description: str, total: int):
    """A context giving ``advance(status_text)``, called once per batch."""
    return _RichProgress(description, total) if enabled and total > 0 else _NoProgress()
