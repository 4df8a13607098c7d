"""Child processes that never outlive the run that started them, and see its imports.

A backend worker killed along with nothing else would keep compiling and writing into the run
folder after its parent died (Ctrl-C of a shell pipeline, SIGKILL, an out-of-memory kill). On
Linux the child asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``); on
every system the child can check ``parent_alive()`` before it writes anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

PARENT_ENV = "SLIMKIT_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def run_child(cmd: Sequence[str], *, env: Mapping[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(cmd)`` capturing text output, with a child that dies with this process
    and knows this process's id (``SLIMKIT_PARENT_PID``)."""
    env = {**env, PARENT_ENV: str(os.getpid())}
    return subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_die_with_parent_fn())


def parent_alive() -> bool:
    """False in a child started by ``run_child`` whose parent has died; True otherwise."""
    parent = os.environ.get(PARENT_ENV)
    return parent is None or not parent.isdigit() or os.getppid() == int(parent)


def import_path(first: Sequence[str] = ()) -> str:
    """A PYTHONPATH under which a child imports what this process imports: ``first``, then this
    process's ``sys.path`` entries that a fresh interpreter would not have on its own (the
    recipe's folder for a custom task, the working folder, PYTHONPATH), in order."""
    entries = [os.path.abspath(entry) for entry in first]
    for entry in sys.path:
        path = os.path.abspath(entry or os.getcwd())
        if path not in entries and not _interpreter_own(path):
            entries.append(path)
    return os.pathsep.join(entries)


def _interpreter_own(path: str) -> bool:
    """The interpreter's standard library and site-packages: every child has them already, in
    their own order (putting them on PYTHONPATH would move site-packages before the stdlib)."""
    prefixes = {os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    return not Path(path).is_dir() or any(path == p or path.startswith(p + os.sep) for p in prefixes)


def _die_with_parent_fn() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when this process dies (Linux), or None
    where the system has no such request."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not in the child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request was made
            os._exit(1)

    return die_with_parent
