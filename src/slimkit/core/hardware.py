"""What this machine's CPU can do, read once per call from the OS (no optional packages)."""

from __future__ import annotations


def cpu_flags() -> set[str] | None:
    """This CPU's feature flags (``/proc/cpuinfo``: x86 ``flags``, ARM ``Features``), or None
    where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return set()
