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


def _pick_static_blocks(order: list[str], block_macs: dict[str, int], backbone: int, target: float) -> int:
    """k such that removing the first k blocks of ``order`` leaves MACs closest to ``target``."""
    costs = [backbone - sum(block_macs[n] for n in order[:k]) for k in range(len(order) + 1)]
    return min(range(len(costs)), key=lambda k: abs(costs[k] - target))


def skip_section(args, folder: Path, progress) -> dict[str, Any]:
    """Layer skipping against the baseline, the baseline tuned for the same extra epochs, and static
    removal of the same number of blocks (by validation loss, and the least-used ones) fine-tuned alike."""
    from slimkit.core.step import rebuild_model
    from slimkit.measure.macs import count_macs
    from slimkit.measure.quality import predict
    from slimkit.tasks.base import build_task
    from slimkit.tasks.context import Context
    from slimkit.techniques.dynamic.skipping import remove_least_used_
    from slimkit.train.config import TrainConfig

    task_cfg = {"name": args.task, "model": "cnn_shapes_dws",
                "model_args": {"width": args.skip_width, "residual": True, "depths": list(args.skip_depths)}}
    task = build_task(task_cfg)
    measure = {"batch_n": 64, "repeats": 3, "warmup": 0, "max_seconds": 0.5, "threads": args.threads,
               "memory": False, "per_row": args.rows}
    tune = {"epochs": args.skip_epochs, "lr": 1e-3, "batch_size": 64, "keep_best": False}
    baseline = {"train": {"epochs": args.baseline_epochs}} if args.baseline_epochs else {}
    out = []
    for seed in args.seeds:
        recipe = {"version": 1, "task": task_cfg, "seed": seed, "measure": measure, "baseline": baseline,
                  "steps": [{"layer_skip": {"target_macs": args.skip_target, "penalty": args.skip_penalty,
                                            "finetune": tune}}]}
        res = _run(recipe, folder / f"{seed}-skip")
        base, skip = res["steps"][0], res["steps"][1]
        info = skip["info"]
        weights = str(folder / f"{seed}-skip" / base["artifact"])
        skip_macs = info["test"]["macs_share"] * info["backbone_macs"]
        order = info["least_used"]
        k = _pick_static_blocks(order, info["block_macs"], info["backbone_macs"], skip_macs)
        progress(f"seed {seed}: layer skip {skip['metrics']['quality']:.4f} at {info['test']['macs_share']:.3f} of "
                 f"the MACs, {info['test']['blocks_executed_per_row']:.2f} of {len(order)} blocks per row; "
                 f"static controls remove {k}")
        from_base = {"version": 1, "task": task_cfg, "seed": seed, "measure": measure, "baseline": {"weights": weights}}
        tuned = _run({**from_base, "steps": [{"train": tune}]}, folder / f"{seed}-tuned")["steps"][1]
        static = _run({**from_base, "steps": [{"prune_structured": {"blocks": k, "finetune": tune}}]},
                      folder / f"{seed}-static")["steps"][1] if k else None
        # least-used blocks removed (the gates' own verdict on validation rows), fine-tuned alike
        model = rebuild_model(task.build_model, [], weights)
        removed = remove_least_used_(model, info["val"]["execution_rates"], k)
        Context(task=task, seed=seed).train(model, TrainConfig(**tune),
                                            description="static: least used removed")
        model.eval()
        x = task.data.test.inputs[0]
        least_used = {"quality": task.evaluate(predict(model, task.data.test, 256), task.data.test.targets)["quality"],
                      "macs": count_macs(model, (x[:1],)), "removed": removed}
        n = len(order)
        row = {"seed": seed, "k": k, "blocks": n,
               "accuracy": {"baseline": base["metrics"]["quality"], "tuned": tuned["metrics"]["quality"],
                            "skip": skip["metrics"]["quality"],
                            "static": static["metrics"]["quality"] if static else None,
                            "least_used": least_used["quality"]},
               "macs": {"baseline": base["metrics"]["macs"], "tuned": tuned["metrics"]["macs"],
                        "skip": round(skip_macs), "skip_runner": skip["metrics"]["macs"],
                        "static": static["metrics"]["macs"] if static else base["metrics"]["macs"],
                        "least_used": least_used["macs"]},
               "blocks_executed": {"baseline": n, "tuned": n, "skip": info["test"]["blocks_executed_per_row"],
                                   "static": n - k, "least_used": n - k},
               "skip_histogram": info["test"]["skip_histogram"], "execution_rates": info["test"]["execution_rates"],
               "static_removed": static["info"]["blocks"]["removed"] if static else [],
               "least_used_removed": removed, "macs_per_row_runner": skip["metrics"].get("macs_per_row"),
               "latency_ms": {}}
        if not args.no_timing:
            for name, run_dir, step in (("tuned", folder / f"{seed}-tuned", 1), ("skip", folder / f"{seed}-skip", 1),
                                        ("static", folder / f"{seed}-static", 1)):
                if name == "static" and not static:
                    continue
                for backend in ("eager", "onnxruntime"):
                    row["latency_ms"][f"{name}@{backend}"] = _time_rows(run_dir, step, backend, args.rows,
                                                                        args.repeats, args.threads)["mean_ms"]
        out.append(row)
        a = row["accuracy"]
        progress(f"seed {seed}: skip {a['skip']:.4f}, tuned {a['tuned']:.4f}, static {a['static']}, "
                 f"least-used {a['least_used']:.4f}")
    return {"task": task_cfg, "target": args.skip_target, "penalty": args.skip_penalty, "epochs": args.skip_epochs,
            "baseline_epochs": args.baseline_epochs or task.baseline_train.epochs, "timing": not args.no_timing,
            "rows": out}


def render_skip(res: dict[str, Any], command: str, stamp: str) -> str:
    from slimkit.core.hardware import cpu_capability

    rows = res["rows"]
    m = res["task"]["model_args"]
    lines = ["# Layer skipping against static removal of the same number of blocks", "",
             f"`{command}`; {stamp}; {cpu_capability()}.", "",
             f"Task `{res['task']['name']}` with `cnn_shapes_dws` (width {m['width']}, depths {m['depths']}, "
             f"MobileNetV2-style residual blocks), baseline trained {res['baseline_epochs']} epochs. "
             f"Layer skip: the `layer_skip` step on the baseline (a gate per residual block, target "
             f"{res['target']} of the MACs, penalty {res['penalty']}), {res['epochs']} epochs. Every control starts "
             f"from the same baseline weights and trains the same {res['epochs']} epochs (lr 1e-3, last epoch kept): "
             "tuned (nothing removed, the fair control for accuracy), static (the k blocks whose removal costs least "
             "validation loss removed: `prune_structured: {blocks: k}`), least used (the k blocks the gates ran "
             "least often on validation rows removed). k: the number of blocks whose removal comes closest to the "
             "layer-skip model's mean MACs. MACs: mean per test row over all test rows (layer skip: from each row's "
             "executed blocks, gates included; the runner's own per-row count over its rows agrees).", "",
             "| seed | k | acc. baseline | acc. tuned | acc. layer skip | acc. static | acc. least used "
             "| MACs tuned | MACs layer skip | MACs static | MACs least used | blocks run per row (skip / static) "
             "| rows skipping 0, 1, 2... blocks |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(v):
        return "—" if v is None else f"{v:.4f}"

    for r in rows:
        a, mc = r["accuracy"], r["macs"]
        lines.append(f"| {r['seed']} | {r['k']} | {f(a['baseline'])} | {f(a['tuned'])} | {f(a['skip'])} | "
                     f"{f(a['static'])} | {f(a['least_used'])} | {mc['tuned']:,} | {mc['skip']:,} | {mc['static']:,} | "
                     f"{mc['least_used']:,} | {r['blocks_executed']['skip']:.2f} / {r['blocks_executed']['static']} of "
                     f"{r['blocks']} | {', '.join(map(str, r['skip_histogram']))} |")

    def mean(g):
        vals = [g(r) for r in rows]
        vals = [v for v in vals if v is not None]
        return statistics.mean(vals) if vals else float("nan")

    lines += ["",
              f"- Mean MACs per row: layer skip {mean(lambda r: r['macs']['skip'] / r['macs']['tuned']):.3f} of the "
              f"backbone's, static {mean(lambda r: r['macs']['static'] / r['macs']['tuned']):.3f}.",
              f"- Accuracy against static removal at (about) equal MACs: layer skip "
              f"{100 * mean(lambda r: r['accuracy']['skip'] - (r['accuracy']['static'] or float('nan'))):+.2f} pt, "
              f"against least-used removal "
              f"{100 * mean(lambda r: r['accuracy']['skip'] - r['accuracy']['least_used']):+.2f} pt "
              "(bar: layer skipping beats static removal of the same number of blocks at equal mean MACs).",
              f"- Against the tuned backbone: layer skip "
              f"{100 * mean(lambda r: r['accuracy']['skip'] - r['accuracy']['tuned']):+.2f} pt.",
              f"- Per-block execution rates (test, seed {rows[0]['seed']}): "
              + ", ".join(f"{n}: {v:.2f}" for n, v in rows[0]["execution_rates"].items()) + "."]
    if res["timing"]:
        lines.append("- Batch-1 latency, mean over rows (eager / ONNX Runtime): " + "; ".join(
            f"seed {r['seed']}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in r["latency_ms"].items()) for r in rows))
    else:
        lines.append("- Latency: not timed in this run (`--no-timing`).")
    return "\n".join(lines + [""])


SECTIONS = {
    "exits": lambda a: f"--task {a.task} --seeds {' '.join(map(str, a.seeds))} --budget {a.budget} "
                       f"--criterion {a.criterion} --epochs {a.epochs} --rows {a.rows} --repeats {a.repeats}"
                       + (" --linear-heads" if a.linear_heads else ""),
    "skip": lambda a: f"--task {a.task} --seeds {' '.join(map(str, a.seeds))} --skip-width {a.skip_width} "
                      f"--skip-depths {' '.join(map(str, a.skip_depths))} --skip-target {a.skip_target} "
                      f"--skip-penalty {a.skip_penalty} --skip-epochs {a.skip_epochs} "
                      f"--baseline-epochs {a.baseline_epochs} --rows {a.rows} --repeats {a.repeats}"
                      + (" --no-timing" if a.no_timing else ""),
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
    parser.add_argument("--skip-width", type=int, default=16, help="skip: cnn_shapes_dws width")
    parser.add_argument("--skip-depths", type=int, nargs=3, default=[3, 3, 3], help="skip: blocks per stage")
    parser.add_argument("--skip-target", type=float, default=0.6, help="skip: target share of the MACs")
    parser.add_argument("--skip-penalty", type=float, default=10.0, help="skip: weight of the compute penalty")
    parser.add_argument("--skip-epochs", type=int, default=5, help="skip: epochs of every step after the baseline")
    parser.add_argument("--baseline-epochs", type=int, default=0, help="skip: baseline epochs (0: the task's)")
    parser.add_argument("--no-timing", action="store_true", help="skip: leave the latency phase out")
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
