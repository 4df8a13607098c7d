"""The ``slimkit`` command line: run, demo, validate, ls, measure, backends, int8-coverage."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console

from slimkit.core.errors import SlimkitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make neural networks smaller, faster and cheaper; measure what each step buys.")


class _PipeConsole(Console):
    """A console that ends the command quietly, exit 0, when its reader closes the pipe
    (``slimkit ls | head``); rich's default exits 1."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _silence_stdout()
        raise typer.Exit(0)


console = _PipeConsole()
err_console = Console(stderr=True)
DEMO_RECIPE = Path(__file__).parent / "recipes" / "builtin" / "demo.yaml"

# Options shared by the commands that build a task's baseline (measure, backends).
TaskOpt = Annotated[str, typer.Option("--task", "-t", help="task name")]
ModelOpt = Annotated[Optional[str], typer.Option(help="a zoo model instead of the task's default")]
ModelArgOpt = Annotated[list[str], typer.Option("--model-arg", help="KEY=VALUE for the model (YAML value); repeatable")]
EpochsOpt = Annotated[Optional[int], typer.Option(help="override the baseline's training epochs")]
SeedOpt = Annotated[int, typer.Option(help="seed of the baseline's initialisation and training")]
WeightsOpt = Annotated[Optional[Path], typer.Option(help="safetensors weights instead of training the baseline")]
BatchNOpt = Annotated[int, typer.Option(help="the larger batch size")]
RepeatsOpt = Annotated[int, typer.Option(help="timed repeats per latency figure")]
ThreadsOpt = Annotated[int, typer.Option(help="intra-op threads")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or auto")]


def _clean_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print a slimkit error as one line and exit 2, instead of a traceback; a closed stdout
    (``slimkit ls | head``) ends the command quietly."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SlimkitError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: rerun the same command to resume from the last finished step")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            _silence_stdout()
            raise typer.Exit(0) from None
        except OSError as err:  # a full disk, a read-only file system, a folder that cannot be made
            err_console.print(f"[bold red]error:[/] {os_error_line(err)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def os_error_line(err: OSError) -> str:
    """'cannot write PATH: No space left on device (ENOSPC)': the path and the cause, in one line."""
    where = f" {err.filename}" if err.filename is not None else ""
    return f"cannot write{where}: {os_cause(err)}"


def os_cause(err: OSError) -> str:
    """'No space left on device (ENOSPC)'."""
    import errno
    import os

    code = errno.errorcode.get(err.errno, "") if err.errno is not None else ""
    cause = err.strerror or (os.strerror(err.errno) if err.errno is not None else str(err))
    return cause + (f" ({code})" if code else "")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush does not fail on a closed pipe."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is not a real file (a test runner's capture): nothing to flush to a pipe


def _run(recipe: Path, out: Path, overwrite: bool, quiet: bool) -> None:
    from slimkit.recipes.report import rich_table
    from slimkit.recipes.runner import run_recipe
    from slimkit.recipes.schema import load_recipe

    say = (lambda text: None) if quiet else (lambda text: console.print(f"[dim]•[/] {text}", highlight=False))
    checked = load_recipe(recipe)  # a bad recipe leaves no folder behind
    _make_out_dir(out)
    from slimkit.core.distributed import is_main

    if not is_main():  # a torchrun rank other than 0 trains alongside rank 0, silently
        say = lambda text: None  # noqa: E731
    result = run_recipe(checked, out, overwrite=overwrite, progress=is_main() and not quiet and sys.stderr.isatty(),
                        report=say)
    if not is_main():
        return
    console.print(rich_table(result.results))
    console.print(f"results: {out / 'results.json'}   report: {out / 'report.html'} (and report.md, pareto.png)")


def _make_out_dir(out: Path) -> None:
    """Create ``--out`` (and its parents) now, so that a folder that cannot exist fails in one line."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SlimkitError(f"--out {out}: cannot create the folder: {os_cause(err)}") from None


@app.command()
@_clean_errors
def run(recipe: Path = typer.Argument(..., help="recipe YAML file"),
        out: Path = typer.Option(..., "--out", "-o", help="output folder (rerun to resume)"),
        overwrite: bool = typer.Option(False, help="replace an earlier run of another recipe in --out"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output")) -> None:
    """Run a recipe: baseline, each step, measured the same way; writes results and a report."""
    _run(recipe, out, overwrite, quiet)


@app.command()
@_clean_errors
def demo(out: Path = typer.Option(Path("slimkit-demo"), "--out", "-o", help="output folder"),
         overwrite: bool = typer.Option(False, help="replace an earlier demo run in --out"),
         quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Run the built-in demo recipe on digits-cnn (a few minutes on 2 cores)."""
    console.print(f"demo recipe: {DEMO_RECIPE}")
    _run(DEMO_RECIPE, out, overwrite, quiet)


@app.command()
@_clean_errors
def validate(recipe: Path = typer.Argument(..., help="recipe YAML file")) -> None:
    """Check a recipe completely (names, fields, types, files) without running it."""
    from slimkit.recipes.schema import load_recipe

    r = load_recipe(recipe)
    console.print(f"[green]ok[/]: {recipe}: task {r.task.to_json_dict()['name']!r}, {_count(len(r.steps), 'step')}: "
                  + ", ".join(s.name for s in r.steps), highlight=False)


@app.command("ls")
@_clean_errors
def ls(as_json: bool = typer.Option(False, "--json", help="machine-readable, with parameters")) -> None:
    """List tasks, steps (techniques), models and backends."""
    from slimkit.core.registry import BACKENDS, MODELS, STEPS, TASKS

    catalog = registry_catalog()
    if as_json:
        sys.stdout.write(json.dumps(catalog, indent=2) + "\n")
        return
    from rich.table import Table

    for title, reg in (("tasks", TASKS), ("steps", STEPS), ("models", MODELS), ("backends", BACKENDS)):
        table = Table(title=title, title_justify="left")
        table.add_column("name")
        table.add_column("summary")
        if title == "steps":
            table.add_column("parameters")
        if title == "backends":
            table.add_column("available here")
        for e in reg:
            row = [e.name, e.summary]
            if title == "steps":
                from slimkit.core.config import brief_default

                row.append(", ".join(f"{n}={brief_default(e.config, n)}" for n in (e.config.model_fields if e.config else ())))
            if title == "backends":
                avail = e.obj.available()
                row.append("[green]yes[/]" if avail else f"[red]no[/]: {avail.reason}")
            table.add_row(*row)
        console.print(table)


def registry_catalog() -> dict[str, Any]:
    """Every task, step, model and backend with its parameters, types and defaults."""
    from slimkit.core.config import parameter_table
    from slimkit.core.registry import BACKENDS, MODELS, STEPS, TASKS

    def backend_row(e):
        avail = e.obj.available()
        return {"name": e.name, "summary": e.summary, "available": bool(avail), "reason": avail.reason or None,
                "precisions": list(e.obj.precisions("cpu")) if avail else []}

    return {
        "tasks": [{"name": e.name, "summary": e.summary, "parameters": parameter_table(e.config)} for e in TASKS],
        "steps": [{"name": e.name, "summary": e.summary, "parameters": parameter_table(e.config)} for e in STEPS],
        "models": [{"name": e.name, "summary": e.summary} for e in MODELS],
        "backends": [backend_row(e) for e in BACKENDS],
    }


@app.command()
@_clean_errors
def measure(task: TaskOpt, model: ModelOpt = None, model_arg: ModelArgOpt = [], epochs: EpochsOpt = None,
            seed: SeedOpt = 0, weights: WeightsOpt = None, batch_n: BatchNOpt = 64, repeats: RepeatsOpt = 30,
            threads: ThreadsOpt = 2, device: DeviceOpt = "cpu",
            as_json: bool = typer.Option(False, "--json", help="print the metrics as JSON")) -> None:
    """Train (or load) a task's baseline and print every metric."""
    from slimkit.core.config import parse_config
    from slimkit.measure.config import MeasureConfig
    from slimkit.recipes.measure_task import measure_task

    cfg = parse_config(MeasureConfig, {"batch_n": batch_n, "repeats": repeats, "threads": threads, "device": device},
                       "measure options")
    say = (lambda text: None) if as_json else (lambda text: console.print(f"[dim]•[/] {text}", highlight=False))
    metrics = measure_task(_task_spec(task, model, model_arg), cfg, weights=weights,
                           train={"epochs": epochs} if epochs is not None else None, seed=seed,
                           progress=not as_json and sys.stderr.isatty(), report=say)
    if as_json:
        sys.stdout.write(json.dumps(metrics, indent=2) + "\n")
        return
    from rich.table import Table

    table = Table(title=f"{task} baseline", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b:.4g}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items())
        elif isinstance(v, float):
            v = f"{v:.4f}"
        elif isinstance(v, int):
            v = f"{v:,}"
        table.add_row(k, str(v))
    console.print(table)


@app.command()
@_clean_errors
def backends(task: TaskOpt, model: ModelOpt = None, model_arg: ModelArgOpt = [], epochs: EpochsOpt = None,
             seed: SeedOpt = 0, weights: WeightsOpt = None,
             backend: list[str] = typer.Option([], "--backend", "-b", help="only these backends; repeatable"),
             precision: list[str] = typer.Option(["fp32"], "--precision", "-p", help="fp32, bf16, fp16; repeatable"),
             batch_n: BatchNOpt = 64, repeats: RepeatsOpt = 30, threads: ThreadsOpt = 2, device: DeviceOpt = "cpu",
             out: Optional[Path] = typer.Option(None, "--out", "-o", help="keep each backend's artifact here"),
             as_json: bool = typer.Option(False, "--json", help="print the rows as JSON")) -> None:
    """Measure a task's baseline on every available backend, each in its own process."""
    from slimkit.backends.base import parse_precision
    from slimkit.core.config import parse_config
    from slimkit.core.registry import BACKENDS
    from slimkit.measure.config import MeasureConfig
    from slimkit.recipes.measure_task import compare_backends

    cfg = parse_config(MeasureConfig, {"batch_n": batch_n, "repeats": repeats, "threads": threads, "device": device,
                                       "memory": False}, "backends options")
    precisions = [parse_precision(p, "--precision") for p in precision]
    for name in backend:
        BACKENDS.entry(name)  # an unknown name fails here, with suggestions
    say = (lambda text: None) if as_json else (lambda text: console.print(f"[dim]•[/] {text}", highlight=False))
    rows = compare_backends(_task_spec(task, model, model_arg), cfg, precisions=precisions, backends=backend or None,
                            out=out, weights=weights, train={"epochs": epochs} if epochs is not None else None,
                            seed=seed, progress=not as_json and sys.stderr.isatty(), report=say)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    console.print(backend_table(rows, f"{task}: backends ({_count(threads, 'thread')}; speed-up = eager fp32 / backend)"))


@app.command("int8-coverage")
@_clean_errors
def int8_coverage(models: list[Path] = typer.Argument(..., help="one or two OpenVINO IR (.xml) or ONNX files"),
                  shape: str = typer.Option("1,128", help="shape for the inputs' dynamic dimensions, e.g. 1,128 "
                                                          "(tokens) or 1,3,32,32"),
                  profile: int = typer.Option(50, help="inferences timed with PERF_COUNT (0: coverage only)"),
                  threads: ThreadsOpt = 2,
                  as_markdown: bool = typer.Option(False, "--markdown", help="print Markdown instead of tables")) -> None:
    """Why an int8 model is (not) faster on OpenVINO: which nodes its CPU plugin runs on integer
    kernels, the conversions it inserted, where the FakeQuantize nodes sit, time per layer type;
    two models side by side (e.g. slimkit's int8 and NNCF's)."""
    from slimkit.backends.openvino_inspect import (compute_table, coverage_markdown, inspect_ir, placement_table,
                                                   summary, type_table)

    if not 1 <= len(models) <= 2:
        raise SlimkitError(f"int8-coverage takes one or two model files, got {len(models)}")
    for m in models:
        if not m.is_file():
            raise SlimkitError(f"int8-coverage: no such file: {m}")
    try:
        dims = [int(d) for d in shape.replace("x", ",").split(",") if d.strip()]
    except ValueError:
        raise SlimkitError(f"--shape: expected integers separated by commas, got {shape!r}") from None
    labels = [m.stem for m in models]
    if len(set(labels)) < len(labels):
        labels = [str(m) for m in models]
    try:
        found = [inspect_ir(m, label, shape=dims, threads=threads, profile=profile) for m, label in zip(models, labels)]
    except ValueError as err:
        raise SlimkitError(f"int8-coverage: {err}") from None
    if as_markdown:
        sys.stdout.write(coverage_markdown(found) + "\n")
        return
    from rich import box
    from rich.table import Table

    console.print(f"[dim]CPU plugin capabilities: {found[0].device_capability}; {_count(threads, 'thread')}[/]",
                  highlight=False)
    parts = [("Summary", summary(found)), ("Nodes by layer type (runtime precision)", type_table(found)),
             ("FakeQuantize placement (IR before compilation)", placement_table(found))]
    if len(found) == 2:
        parts.append(("Compute nodes paired by order and MACs (integer use differs: first)", compute_table(*found)))
    for title, (header, rows) in parts:
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
        for i, col in enumerate(header):
            table.add_column(col, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def backend_table(rows: list[dict[str, Any]], title: str):
    """A rich table of ``compare_backends`` / deploy candidate rows, readable at 80 columns: a
    failed row points at a numbered note; ``--json`` has every field (max rel diff included)."""
    from rich import box
    from rich.table import Table

    batches = sorted({r["batch_N"] for r in rows if r["ok"]})
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0), pad_edge=False)
    for col in ("backend", "b1 ms", "bN ms", "x b1", "x bN", "diff", "quality", "KiB", "build s"):
        table.add_column(col, justify="left" if col == "backend" else "right", no_wrap=True)
    if batches:
        table.caption = (f"bN = batch {', '.join(map(str, batches))}; x = speed-up over eager fp32; "
                         "diff = max abs diff from eager fp32; build s = compile seconds")
    notes = []
    for r in rows:
        name = f"{r['backend']} {r['precision']}"
        if not r["ok"]:
            notes.append(f"{r['backend']}/{r['precision']}: {r['error']}")
            table.add_row(name, f"[dim]note {len(notes)}[/]", *[""] * 7)
            continue
        table.add_row(name, _num(r["b1_ms"], ".3f"), _num(r["bN_ms"], ".3f"),
                      _num(r["speedup_b1"], ".2f"), _num(r["speedup_bN"], ".2f"),
                      _num(r["max_abs_diff"], ".1g"), _num(r["quality"], ".4f"),
                      _num(r["artifact_bytes"] / 1024 if r["artifact_bytes"] is not None else None, ".1f"),
                      _num(r["compile_seconds"], ".1f"))
    lines = [table.caption] if table.caption else []
    lines += [f"{i}. {note}" for i, note in enumerate(notes, 1)]
    if lines:
        table.caption = "\n".join(lines)
        table.caption_justify = "left"
    return table


def _num(value: Any, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _count(n: int, noun: str) -> str:
    """'1 thread', '2 threads'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _task_spec(task: str, model: Optional[str], model_arg: list[str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": task}
    if model is not None:
        spec["model"] = model
    if model_arg:
        spec["model_args"] = _key_values(model_arg, "--model-arg")
    return spec


def _key_values(items: list[str], option: str) -> dict[str, Any]:
    import yaml

    from slimkit.core.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option}: expected KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def main() -> None:
    app()


if __name__ == "__main__":
    main()
