"""Every backend on each task, before and after operator fusion; every (backend, precision,
variant) timed in a process of its own, the whole sweep repeated ``--rounds`` times.

    .venv/bin/python benchmarks/backends.py [--tasks digits-cnn minilm shapes-resnet] [--precisions fp32 bf16]
                                           [--rounds 3] [--threads 2] [--repeats 30]

Per task: the baseline is trained with the task's budget (MiniLM is pretrained), fused with the
`fuse` step's algorithm, and both models go through `slimkit.backends.measure.measure_backends`
(the code behind `slimkit backends` and the `deploy` step). Latency figures are medians over
rounds of each process's median; "speed-up" is eager fp32 unfused / this; "fused ×" is unfused /
fused on the same backend and precision (>= 0.95 means fusion did not slow it down), measured in
one process per round that compiles both models and times them interleaved (ABBA rounds; ONNX
Runtime without spin-waiting threads there), the median of the rounds' ratios. Numerics:
max |out - eager fp32| / max |eager fp32| of the same model. Writes OUT/backends.md and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import run_sections, write_atomic  # noqa: E402

ONE_ROUND = {"tvm"}
CONFIGS: dict[str, dict[str, Any]] = {
    "digits-cnn": {"task": {"name": "digits-cnn"}, "train": None},
    "minilm": {"task": {"name": "minilm"}, "train": None},
    # a ResNet-18-style network (BasicBlocks, BN on both branches of every projection shortcut),
    # width 16 so that it trains in a minute on 2 cores
    "shapes-resnet": {"task": {"name": "shapes-cnn", "model": "resnet18", "model_args": {"width": 16}},
                      "train": {"epochs": 2}},
}


def measure_task(name: str, precisions: list[str], rounds: int, cfg, workdir: Path) -> dict[str, Any]:
    import torch

    from slimkit.backends.measure import ModelSpec, all_candidates, measure_backends
    from slimkit.core.io import save_state_dict
    from slimkit.measure.latency import torch_threads
    from slimkit.recipes.measure_task import baseline_for
    from slimkit.techniques.fusion.fuse import fuse_model

    conf = CONFIGS[name]
    task, recipe, model = baseline_for(conf["task"], cfg, train=conf["train"], progress=sys.stderr.isatty())
    fused, fusion = fuse_model(model)
    task_json = recipe.task.to_json_dict()
    specs = {
        "unfused": ModelSpec(task_json, str(save_state_dict(workdir / "unfused.safetensors", model.state_dict()))),
        "fused": ModelSpec(task_json, str(save_state_dict(workdir / "fused.safetensors", fused.state_dict())),
                           [("fuse", {"fold_bn": True, "fuse_activations": True, "merge_linear": True})]),
    }
    with torch_threads(cfg.threads), torch.no_grad():
        x = task.data.test.example_inputs(64)
        ref, out = model(*x), fused(*x)
    fusion_rel = float((out - ref).abs().max() / ref.abs().max())
    candidates = all_candidates(precisions)
    unfused_rounds: list[dict[tuple[str, str], Any]] = []  # per round: the unfused model alone
    rounds_of: list[dict[tuple[str, str], Any]] = []  # per round: the fused model, then both interleaved
    for r in range(rounds):
        # untuned TVM is 5-50x slower than every other runtime: one round places it well enough
        todo = [c for c in candidates if r == 0 or c[0] not in ONE_ROUND]
        unfused_rounds.append({(m.backend, m.precision): m for m in measure_backends(
            task, todo, cfg, workdir / f"unfused-{r}", spec=specs["unfused"], model=model,
            progress=sys.stderr.isatty())})
        measured = measure_backends(task, todo, cfg, workdir / f"fused-{r}", spec=specs["fused"], model=fused,
                                    versus_spec=specs["unfused"], versus_model=model, progress=sys.stderr.isatty())
        rounds_of.append({(m.backend, m.precision): m for m in measured if m.ok})
    rows = []

    def per_round(key: tuple[str, str], value, runs=rounds_of) -> float | None:
        return _median([value(rnd[key]) for rnd in runs if key in rnd and rnd[key].ok])

    b1, bN = (lambda m: m.b1_ms), (lambda m: m.bN_ms)
    eager = per_round(("eager", "fp32"), b1, unfused_rounds), per_round(("eager", "fp32"), bN, unfused_rounds)
    for key in candidates:
        first_u = unfused_rounds[0][key]
        first_f = rounds_of[0].get(key)
        row: dict[str, Any] = {"backend": key[0], "precision": key[1], "ok": first_u.ok and first_f is not None,
                               "error": first_u.error or (None if first_f is not None else "fused model failed")}
        if row["ok"]:
            row.update({
                "b1_ms_unfused": per_round(key, b1, unfused_rounds), "bN_ms_unfused": per_round(key, bN, unfused_rounds),
                "b1_ms_fused": per_round(key, b1), "bN_ms_fused": per_round(key, bN),
                "rounds": sum(key in rnd for rnd in rounds_of),
                # each round's ratio comes from one process that timed both models interleaved
                "fused_x_b1": per_round(key, lambda m: m.versus_latency_b1["median_ms"] / m.paired_latency_b1["median_ms"]),
                "fused_x_bN": per_round(key, lambda m: m.versus_latency_bN["median_ms"] / m.paired_latency_bN["median_ms"]),
                "max_rel_diff": first_u.max_rel_diff, "max_rel_diff_fused": first_f.max_rel_diff,
                "quality": first_u.quality, "quality_fused": first_f.quality,
                "artifact_bytes": first_u.artifact_bytes, "compile_seconds": first_u.compile_seconds,
                "info": first_u.info,
            })
            row["speedup_b1"], row["speedup_bN"] = eager[0] / row["b1_ms_unfused"], eager[1] / row["bN_ms_unfused"]
        rows.append(row)
    return {"task": name, "task_config": task_json, "fusion": fusion.to_dict(), "fusion_max_rel_diff": fusion_rel,
            "rows": rows, "batch_N": cfg.batch_n}


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


INTERLEAVED = ("per round, the unfused model alone, then one process that times the fused model alone and then "
               "both interleaved (ABBA; ONNX Runtime rebuilt without spin-waiting threads for that); `fused ×` is "
               "the median of the rounds' unfused/fused ratios")


def render(results: list[dict[str, Any]]) -> str:
    lines = ["# slimkit backends: every runtime, before and after fusion", "",
             "Each (backend, precision) in processes of its own; figures are medians over rounds of per-process "
             "medians. Numerics, quality and artifact: the unfused model, measured alone. Each section names the "
             "command that wrote it and how its fusion columns were timed (a run of some tasks replaces those "
             "sections and keeps the others).", ""]
    for res in results:
        f = res["fusion"]
        lines += [f"## {res['task']}", "",
                  f"Command: `{res['command']}`; {res['machine']}, {res['date']}, {res['threads']} threads. "
                  f"Fusion columns: {res['fusion_method']}.", "",
                  f"Fusion: {f['bn_folded']} BatchNorm folded, {f['activations_fused']} activations fused, "
                  f"{f['linear_merged']} linear merged, {f['bn_remaining']} BatchNorm left; fused vs unfused eager: "
                  f"max rel diff {res['fusion_max_rel_diff']:.2g}.", "",
                  f"| backend | precision | b1 ms | bN ms (b{res['batch_N']}) | speed-up b1 | speed-up bN | fused × b1 "
                  "| fused × bN | max rel diff | quality | artifact KiB | compile s | rounds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            if not r["ok"]:
                lines.append(f"| {r['backend']} | {r['precision']} | {r['error']} |" + " |" * 11)
                continue
            lines.append(
                f"| {r['backend']} | {r['precision']} | {r['b1_ms_unfused']:.3f} | {r['bN_ms_unfused']:.3f} | "
                f"{r['speedup_b1']:.2f}× | {r['speedup_bN']:.2f}× | {r['fused_x_b1']:.2f}× | {r['fused_x_bN']:.2f}× | "
                f"{r['max_rel_diff']:.2g} | {r['quality']:.4f} | {r['artifact_bytes'] / 1024:.1f} | "
                f"{r['compile_seconds']:.1f} | {r['rounds']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    from rich.console import Console

    from slimkit.measure.config import MeasureConfig

    cfg = MeasureConfig(threads=args.threads, repeats=args.repeats, memory=False)
    command = (f"python benchmarks/backends.py --tasks {' '.join(args.tasks)} --precisions {' '.join(args.precisions)} "
               f"--rounds {args.rounds} --threads {args.threads} --repeats {args.repeats}")
    stamp = {"command": command, "machine": f"{platform.machine()}, python {platform.python_version()}",
             "date": time.strftime("%Y-%m-%d"), "threads": args.threads, "fusion_method": INTERLEAVED}
    results, new = run_sections(args.tasks, lambda name, folder: measure_task(name, args.precisions, args.rounds,
                                                                              cfg, folder),
                                stamp, args.out / "backends.json", "slimkit-bench-backends-")
    Console().print(render(new), markup=False, highlight=False)
    write_atomic(args.out, {"backends.md": render(results),
                            "backends.json": json.dumps({"results": results}, indent=2) + "\n"})


if __name__ == "__main__":
    main()
