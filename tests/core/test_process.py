"""Child processes die with their parent, write nothing once it is gone, and see its imports."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slimkit.core.process import PARENT_ENV, import_path, parent_alive

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_child_dies_with_its_parent(tmp_path):
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r} + '.tmp', 'w').write(str(os.getpid())); " \
            f"os.replace({str(pid_file)!r} + '.tmp', {str(pid_file)!r}); time.sleep(120)"
    parent = f"import os, sys; from slimkit.core.process import run_child; " \
             f"run_child([sys.executable, '-c', {child!r}], env=os.environ, timeout=300)"
    proc = subprocess.Popen([sys.executable, "-c", parent], env={**os.environ, "PYTHONPATH": SRC})
    try:
        deadline = time.time() + 60
        while not pid_file.exists():
            assert time.time() < deadline and proc.poll() is None, "the child never started"
            time.sleep(0.05)
        pid = int(pid_file.read_text())
        assert _alive(pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 5
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.05)
        gone = not _alive(pid)
        if not gone:
            os.kill(pid, signal.SIGKILL)
        assert gone, "the child outlived its killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_worker_writes_nothing_once_its_parent_is_gone(tmp_path, monkeypatch):
    from slimkit.backends.measure import worker_main

    job = tmp_path / "job.json"
    job.write_text(json.dumps({"workdir": str(tmp_path), "spec": {"task": {"name": "no-such-task"}, "weights": "w"}}))
    monkeypatch.setenv(PARENT_ENV, str(os.getpid()))  # not our parent: as if the run had died
    assert not parent_alive()
    assert worker_main(str(job)) == 1 and not (tmp_path / "result.json").exists()
    monkeypatch.setenv(PARENT_ENV, str(os.getppid()))
    assert parent_alive()
    assert worker_main(str(job)) == 1 and "error" in json.loads((tmp_path / "result.json").read_text())


def test_import_path_carries_this_process_s_own_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path)])
    entries = import_path(["/first"]).split(os.pathsep)
    assert entries[0] == os.path.abspath("/first") and str(tmp_path) in entries
    assert not any(e.startswith(os.path.abspath(sys.base_prefix) + os.sep) for e in entries)
