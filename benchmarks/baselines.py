"""Baseline figures of every built-in task, each measured in its own process.

    .venv/bin/python benchmarks/baselines.py [--tasks digits-cnn mnist-lenet5 ...] [--out benchmarks/results]

Runs `slimkit measure --task T --json` per task (a fresh process each, so runtimes never share
threads or caches), then prints a table and writes it to OUT/baselines.md and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_TASKS = ["digits-mlp", "digits-cnn", "mnist-mlp", "mnist-lenet5", "shapes-cnn", "minilm"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    rows = {}
    with Progress() as progress:
        job = progress.add_task("tasks", total=len(args.tasks))
        for task in args.tasks:
            progress.update(job, description=f"measuring {task}")
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "slimkit", "measure", "--task", task, "--json",
                                   "--repeats", str(args.repeats), "--threads", str(args.threads)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{task}: {proc.stderr.strip()}")
            rows[task] = {**json.loads(proc.stdout), "wall_seconds": round(time.perf_counter() - started, 1)}
            progress.advance(job)

    table = Table(title=f"slimkit baselines ({args.threads} threads, torch eager, CPU)")
    for col in ("task", "quality", "params", "size KiB", "MACs", "b1 ms (p25–p75)", "bN ms", "peak mem MiB", "wall s"):
        table.add_column(col, justify="left" if col == "task" else "right")
    lines = ["| task | quality | params | size KiB | MACs | b1 ms (p25–p75) | bN ms | peak mem MiB | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task, m in rows.items():
        b1, bn = m["latency_b1"], m["latency_bN"]
        cells = [task, f"{m['quality']:.4f}", f"{m['params']:,}", f"{m['size_bytes'] / 1024:.1f}", f"{m['macs']:,}",
                 f"{b1['median_ms']:.3f} ({b1['p25_ms']:.3f}–{b1['p75_ms']:.3f})",
                 f"{bn['median_ms']:.3f} (b{bn['batch_size']})", f"{m['peak_memory_bytes'] / 2**20:.2f}",
                 f"{m['wall_seconds']}"]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    Console().print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    header = (f"Command: `python benchmarks/baselines.py --repeats {args.repeats} --threads {args.threads}`; "
              f"{platform.processor() or platform.machine()}, python {platform.python_version()}, "
              f"{time.strftime('%Y-%m-%d')}.\n\n")
    (args.out / "baselines.md").write_text(header + "\n".join(lines) + "\n")
    (args.out / "baselines.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
