"""Dynamic computation measured against static models of the same mean cost.

    .venv/bin/python benchmarks/dynamic.py [--sections exits] [--seeds 0 1 2] [--threads 1]

- exits: `shapes-cnn`. The trained baseline, the `early_exit` step on it (heads where the MACs pass
  1/3 and 2/3, trained jointly, one confidence threshold calibrated on the validation rows within
  `--budget`), and the static control: the same network narrowed (`width`) to the early-exit
  model's mean MACs per test row, trained from scratch with the baseline's settings. Accuracy on
  the test rows, the exit histogram, mean MACs per row (the runner's per-row measurement), and
  batch-1 latency averaged over `--rows` test rows spread over the split, each model on eager
  PyTorch and on ONNX Runtime (the early-exit model as stage graphs with the exit decisions
  between them), each (model, runtime) timed in a process of its own.

Writes OUT/dynamic_SECTION.md and .json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import run_section_loop  # noqa: E402


def _run(recipe: dict[str, Any], folder: Path) -> dict[str, Any]:
    from slimkit.recipes.runner import run_recipe

    run_recipe(recipe, folder)
    return json.loads((folder / "results.json").read_text())


def _time_rows(run_dir: Path, step: int, backend: str, rows: int, repeats: int, threads: int) -> dict[str, Any]:
    """Mean batch-1 latency over test rows of one step's model on one runtime, in a fresh process."""
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(
        {"run_dir": str(run_dir), "step": step, "backend": backend, "rows": rows, "repeats": repeats,
         "threads": threads})], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"timing worker failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _worker(spec: dict[str, Any]) -> None:
    import time

    import torch

    import slimkit.backends  # noqa: F401  (registers the runtimes)
    from slimkit.core.io import read_json
    from slimkit.core.registry import BACKENDS
    from slimkit.core.step import rebuild_model
    from slimkit.measure.latency import torch_threads
    from slimkit.measure.per_row import spread_rows
    from slimkit.tasks.base import build_task

    run_dir = Path(spec["run_dir"])
    state = read_json(run_dir / "run-state.json")
    records = state["steps"][:spec["step"] + 1]
    task = build_task(json.loads((run_dir / "results.json").read_text())["recipe"]["task"])
    structures = [(r["technique"], r.get("structure")) for r in records]
    model = rebuild_model(task.build_model, structures, str(run_dir / records[-1]["artifact"])).eval()
    rows = spread_rows(task.data.test, spec["rows"], "cpu")
    torch.set_num_threads(spec["threads"])
    with tempfile.TemporaryDirectory() as tmp:
        run = model if spec["backend"] == "eager" else BACKENDS.get(spec["backend"]).compile(
            model, rows[0], threads=spec["threads"], workdir=Path(tmp))
        per_row = []
        with torch_threads(spec["threads"]), torch.inference_mode():
            for _ in range(3):  # warm-up over every row
                for r in rows:
                    run(*r)
            for r in rows:
                times = []
                for _ in range(spec["repeats"]):
                    t = time.perf_counter()
                    run(*r)
                    times.append(time.perf_counter() - t)
                per_row.append(statistics.median(times) * 1e3)
    print(json.dumps({"mean_ms": statistics.mean(per_row), "median_ms": statistics.median(per_row),
                      "rows": len(per_row)}))


def exits_section(args, folder: Path, progress) -> dict[str, Any]:
    from slimkit.tasks.base import build_task

    base_train = build_task(args.task).baseline_train
    measure = {"batch_n": 64, "repeats": 5, "threads": args.threads, "memory": False, "per_row": args.rows}
    out = []
    for seed in args.seeds:
        recipe = {"version": 1, "task": args.task, "seed": seed, "measure": measure,
                  "steps": [{"early_exit": {"budget": args.budget, "criterion": args.criterion,
                                            "conv_heads": not args.linear_heads,
                                            "finetune": {"epochs": args.epochs}}}]}
        res = _run(recipe, folder / f"{seed}-exits")
        base, exits = res["steps"][0], res["steps"][1]
        ratio = exits["metrics"]["macs"] / base["metrics"]["macs"]
        width = max(4, round(32 * math.sqrt(ratio)))  # MACs grow with the width squared
        static = _run({"version": 1, "task": {"name": args.task, "model_args": {"width": width}}, "seed": seed,
                       "measure": measure, "steps": []}, folder / f"{seed}-static")["steps"][0]
        # the fair control: the backbone trained for the same extra epochs, without exits
        tuned = _run({**recipe, "steps": [{"train": {"epochs": args.epochs, "lr": 1e-3}}]},
                     folder / f"{seed}-tuned")["steps"][1]
        row = {"seed": seed, "static_width": width,
               "accuracy": {"baseline": base["metrics"]["quality"], "tuned": tuned["metrics"]["quality"],
                            "exits": exits["metrics"]["quality"], "static": static["metrics"]["quality"]},
               "macs": {"baseline": base["metrics"]["macs"], "exits": exits["metrics"]["macs"],
                        "static": static["metrics"]["macs"]},
               "val_exit_shares": exits["info"]["val_exit_shares"], "threshold": exits["info"]["threshold"],
               "test_accuracy_per_exit": exits["info"]["test_accuracy_per_exit"],
               "exits_after": exits["info"]["exits_after"], "latency_ms": {}}
        for name, run_dir, step in (("baseline", folder / f"{seed}-exits", 0), ("exits", folder / f"{seed}-exits", 1),
                                    ("static", folder / f"{seed}-static", 0), ("tuned", folder / f"{seed}-tuned", 1)):
            for backend in ("eager", "onnxruntime"):
                row["latency_ms"][f"{name}@{backend}"] = _time_rows(run_dir, step, backend, args.rows, args.repeats,
                                                                    args.threads)["mean_ms"]
        out.append(row)
        progress(f"seed {seed}: exits {row['accuracy']['exits']:.4f} (tuned backbone {row['accuracy']['tuned']:.4f}, "
                 f"static {row['accuracy']['static']:.4f}), MACs {1 / ratio:.2f}x fewer")
    return {"task": args.task, "budget": args.budget, "criterion": args.criterion, "epochs": args.epochs,
            "rows": out, "baseline_train": base_train.model_dump()}


def render_exits(res: dict[str, Any], command: str, stamp: str) -> str:
    from slimkit.core.hardware import cpu_capability

    rows = res["rows"]
    lines = ["# Early exits against the baseline and a static model of the same mean MACs", "",
             f"`{command}`; {stamp}; {cpu_capability()}.", "",
             f"Task `{res['task']}`. The `early_exit` step on the trained baseline: heads after "
             f"{rows[0]['exits_after']}, {res['epochs']} epochs joint training, one {res['criterion']} threshold "
             f"calibrated on the validation rows within {res['budget']} of the full network's accuracy. Static: the "
             "same network narrowed to the exit model's mean MACs per row, trained from scratch like the baseline. "
             "Tuned: the baseline trained for the exit step's epochs more without exits, the fair control (the exit "
             "step's joint training trains the backbone too). "
             "MACs: mean per test row. Latency: batch 1, mean over test rows spread over the split (median of the "
             "repeats per row), each (model, runtime) in its own process; ONNX Runtime runs the exit model as stage "
             "graphs with the decisions between them.", "",
             "| seed | baseline acc. | tuned acc. | exits acc. | static acc. | baseline MACs | exits MACs | static MACs "
             "| rows leaving at each exit (val) | eager b1 ms (tuned / exits / static) "
             "| ORT b1 ms (tuned / exits / static) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, m, t = r["accuracy"], r["macs"], r["latency_ms"]
        lines.append(f"| {r['seed']} | {a['baseline']:.4f} | {a['tuned']:.4f} | {a['exits']:.4f} | {a['static']:.4f} | "
                     f"{m['baseline']:,} | {m['exits']:,} | {m['static']:,} | "
                     f"{', '.join(f'{s:.2f}' for s in r['val_exit_shares'])} | "
                     f"{t['tuned@eager']:.3f} / {t['exits@eager']:.3f} / {t['static@eager']:.3f} | "
                     f"{t['tuned@onnxruntime']:.3f} / {t['exits@onnxruntime']:.3f} / "
                     f"{t['static@onnxruntime']:.3f} |")

    def mean(f):
        return statistics.mean(f(r) for r in rows)

    early = mean(lambda r: 1 - r["val_exit_shares"][-1])
    lines += ["",
              f"- Rows leaving early (validation): {100 * early:.0f}% (bar: >= 40%).",
              f"- Mean MACs per row: {mean(lambda r: r['macs']['baseline'] / r['macs']['exits']):.2f}x fewer "
              "(bar: >= 1.5x).",
              f"- Batch-1 latency, mean over rows: eager "
              f"{mean(lambda r: r['latency_ms']['tuned@eager'] / r['latency_ms']['exits@eager']):.2f}x, ONNX Runtime "
              f"{mean(lambda r: r['latency_ms']['tuned@onnxruntime'] / r['latency_ms']['exits@onnxruntime']):.2f}x "
              "faster than the tuned backbone (the same network).",
              f"- Accuracy against the tuned backbone: exits "
              f"{100 * mean(lambda r: r['accuracy']['exits'] - r['accuracy']['tuned']):+.2f} pt (bar: >= -0.5), static "
              f"{100 * mean(lambda r: r['accuracy']['static'] - r['accuracy']['tuned']):+.2f} pt (must do worse than "
              "exits).", ""]
    return "\n".join(lines)


SECTIONS = {
    "exits": lambda a: f"--task {a.task} --seeds {' '.join(map(str, a.seeds))} --budget {a.budget} "
                       f"--criterion {a.criterion} --epochs {a.epochs} --rows {a.rows} --repeats {a.repeats}"
                       + (" --linear-heads" if a.linear_heads else ""),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--task", default="shapes-cnn")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=0.005)
    parser.add_argument("--criterion", choices=["confidence", "entropy"], default="confidence")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--linear-heads", action="store_true", help="heads of pooling and a Linear only "
                                                                    "(conv_heads: false)")
    parser.add_argument("--rows", type=int, default=64, help="test rows timed and counted one at a time")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per row")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(json.loads(args.worker))
        return
    import torch

    torch.set_num_threads(args.threads)
    run_section_loop("dynamic.py", "dynamic", args, SECTIONS, globals())


if __name__ == "__main__":
    main()
