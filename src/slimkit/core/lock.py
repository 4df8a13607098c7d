"""An exclusive OS lock on a run folder, so two runs never write into the same ``--out``.

The lock is ``flock`` on ``FOLDER/.slimkit.lock``: the kernel releases it when the holder exits,
however it exits, so a lock left by a killed process never blocks the next run. Where ``fcntl``
does not exist (Windows) the lock is a no-op.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from slimkit.core.errors import CheckpointError

LOCK_FILE = ".slimkit.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


@contextmanager
def folder_lock(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the run-folder lock of ``folder`` (created if missing) for the ``with`` block; another
    holder, in this process or any other, is a CheckpointError naming the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CheckpointError(f"--out {folder}: another slimkit run is writing into this folder "
                                      f"(it holds {LOCK_FILE}); wait for it or choose another --out") from None
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock
