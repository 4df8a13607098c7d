"""Shared by the benchmark scripts: measure one configuration per process, print and save tables."""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

COLUMNS = ("config", "quality", "params", "size KiB", "MACs", "b1 ms (p25–p75)", "bN ms", "peak mem MiB", "wall s")


def split_variant(text: str) -> tuple[str, list[str]]:
    """``model:key=value,...`` -> (model, ["key=value", ...]); commas inside ``[...]`` stay in their value."""
    name, _, args = text.partition(":")
    return name, [item for item in re.split(r",(?=\w+=)", args) if item]


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``model:key=value,...`` (values in JSON) -> (model, kwargs for the zoo factory)."""
    name, items = split_variant(text)
    kwargs = {}
    for item in items:
        key, _, value = item.partition("=")
        kwargs[key] = json.loads(value)
    return name, kwargs


def run_sections(tasks: Sequence[str], measure, stamp: dict[str, Any], json_path: Path, prefix: str) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]]]:
    """Measure each task (``measure(name, folder)``, in a temporary folder) and merge the results
    with the other tasks' sections already in ``json_path``: (all sections in order, the new ones).
    Each section carries ``stamp`` (its command, machine, date), so a partial rerun stays honest."""
    import tempfile

    kept = json.loads(json_path.read_text())["results"] if json_path.exists() else []
    new = {}
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        for name in tasks:
            folder = Path(tmp) / name
            folder.mkdir()
            new[name] = {**measure(name, folder), **stamp}
    order = [r["task"] for r in kept] + [t for t in tasks if t not in {r["task"] for r in kept}]
    return [new.get(t) or next(r for r in kept if r["task"] == t) for t in order], list(new.values())


def write_atomic(out: Path, files: dict[str, str]) -> None:
    """Each ``{name: text}`` written to OUT/name through a temporary name (never half-written)."""
    import os

    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def measure_in_subprocess(args: Sequence[str]) -> dict[str, Any]:
    """`slimkit measure ARGS --json` in a fresh process (runtimes never share threads or caches)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "slimkit", "measure", *args, "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"slimkit measure {' '.join(args)}: {proc.stderr.strip()}")
    return {**json.loads(proc.stdout), "wall_seconds": round(time.perf_counter() - started, 1)}


def row(name: str, m: dict[str, Any]) -> list[str]:
    b1, bn = m["latency_b1"], m["latency_bN"]
    return [name, f"{m['quality']:.4f}", f"{m['params']:,}", f"{m['size_bytes'] / 1024:.1f}", f"{m['macs']:,}",
            f"{b1['median_ms']:.3f} ({b1['p25_ms']:.3f}–{b1['p75_ms']:.3f})", f"{bn['median_ms']:.3f} (b{bn['batch_size']})",
            f"{m['peak_memory_bytes'] / 2**20:.2f}", f"{m['wall_seconds']}"]


def report(title: str, rows: dict[str, dict[str, Any]], out: Path, stem: str, command: str,
           extra_columns: dict[str, list[str]] | None = None) -> None:
    """Print a rich table and write OUT/STEM.md (with the command) and OUT/STEM.json."""
    from rich.console import Console
    from rich.table import Table

    extra_columns = extra_columns or {}
    columns = [*COLUMNS, *extra_columns]
    cells = [row(name, m) + [extra_columns[c][i] for c in extra_columns] for i, (name, m) in enumerate(rows.items())]
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="left" if c == "config" else "right")
    for r in cells:
        table.add_row(*r)
    Console().print(table)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", f"Command: `{command}`; {platform.machine()}, python {platform.python_version()}, "
             f"{time.strftime('%Y-%m-%d')}. Latency: eager PyTorch on CPU, median (p25–p75).", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stem}.json").write_text(json.dumps(rows, indent=2) + "\n")


def run_and_write(stem: str, command: str, args: Any, measure, render) -> None:
    """Measure ``args.tasks`` (``measure(name, folder)``), merge them with the other sections of
    OUT/STEM.json, print the new sections and write OUT/STEM.md and .json (``render(results)``)."""
    from rich.console import Console

    from slimkit.core.hardware import cpu_capability, cpu_model

    stamp = {"command": command, "machine": f"{cpu_model()} ({cpu_capability()}), {platform.machine()}, "
                                            f"python {platform.python_version()}",
             "date": time.strftime("%Y-%m-%d"), "threads": args.threads, "rounds": getattr(args, "rounds", 1),
             "tokens": getattr(args, "tokens", None)}
    results, new = run_sections(args.tasks, measure, stamp, args.out / f"{stem}.json", f"slimkit-bench-{stem}-")
    Console().print(render(new), markup=False, highlight=False)
    write_atomic(args.out, {f"{stem}.md": render(results), f"{stem}.json": json.dumps({"results": results}, indent=2) + "\n"})


def section_stamp(threads: int) -> str:
    """Machine, versions, date and threads, for a section's heading."""
    import torch

    from slimkit.core.hardware import cpu_capability, cpu_model

    return f"{cpu_model()} ({cpu_capability()}), {platform.machine()}, python {platform.python_version()}, " \
           f"torch {torch.__version__}, " \
           f"{time.strftime('%Y-%m-%d')}, {threads} threads"


def publish_section(out: Path, stem: str, res: dict[str, Any], text: str, command: str, started: float) -> None:
    """Print a section's Markdown and write OUT/STEM.md and OUT/STEM.json (with its command and
    seconds since ``started``)."""
    from rich.console import Console

    res["seconds"] = time.perf_counter() - started
    Console().print(text, markup=False, highlight=False)
    write_atomic(out, {f"{stem}.md": text, f"{stem}.json": json.dumps({**res, "command": command}, indent=2) + "\n"})


def run_section_loop(script: str, stem: str, args: Any, sections: dict[str, Any], namespace: dict[str, Any]) -> None:
    """For each of ``args.sections``: run ``namespace[SECTION_section](args, tmp folder, progress)``
    in a temporary folder, render it with ``namespace[render_SECTION]`` and publish it as
    OUT/STEM_SECTION.md/.json with the command that reproduces it (``sections[SECTION](args)``
    gives that section's arguments). A section named with hyphens finds its functions under
    underscores (``text-exits``: ``text_exits_section``)."""
    import tempfile

    from rich.console import Console

    console = Console()
    stamp = section_stamp(args.threads)
    for section in args.sections:
        command = f"python benchmarks/{script} --sections {section} {sections[section](args)} --threads {args.threads}"
        started = time.perf_counter()
        name = section.replace("-", "_")
        with tempfile.TemporaryDirectory(prefix=f"slimkit-bench-{stem}-{section}-") as tmp:
            res = namespace[f"{name}_section"](args, Path(tmp), lambda msg: console.log(msg))
        try:
            text = namespace[f"render_{name}"](res, command, stamp)
        except Exception:  # the measurements outlive a rendering bug: write them, then fail
            write_atomic(args.out, {f"{stem}_{section}.json": json.dumps({**res, "command": command}, indent=2) + "\n"})
            raise
        publish_section(args.out, f"{stem}_{section}", res, text, command, started)


RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def shipped(name: str) -> dict[str, Any]:
    """A recipe shipped in recipes/, as a dict (benchmarks run the recipes users get)."""
    import yaml

    return yaml.safe_load((RECIPES / name).read_text())
