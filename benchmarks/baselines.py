"""Baseline figures of every built-in task, each measured in its own process.

    .venv/bin/python benchmarks/baselines.py [--tasks digits-cnn mnist-lenet5 ...] [--out benchmarks/results]

Runs `slimkit measure --task T --json` per task (fresh process each), prints a table and writes
OUT/baselines.md and OUT/baselines.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import measure_in_subprocess, report  # noqa: E402

DEFAULT_TASKS = ["digits-mlp", "digits-cnn", "mnist-mlp", "mnist-lenet5", "shapes-cnn", "minilm"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from rich.progress import track

    rows = {}
    for task in track(args.tasks, description="measuring baselines"):
        rows[task] = measure_in_subprocess(["--task", task, "--repeats", str(args.repeats), "--threads", str(args.threads)])
    report(f"slimkit baselines ({args.threads} threads)", rows, args.out, "baselines",
           f"python benchmarks/baselines.py --repeats {args.repeats} --threads {args.threads}")


if __name__ == "__main__":
    main()
