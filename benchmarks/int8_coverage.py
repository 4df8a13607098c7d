"""Int8 coverage on OpenVINO: slimkit's static int8 MiniLM beside NNCF's, op by op.

    .venv/bin/python benchmarks/int8_coverage.py [--task minilm] [--tokens 128] [--profile 100]
                                                 [--smoothquant 0.8] [--threads 2]

Builds the task's FP32 baseline, quantizes it with slimkit's `quantize` step algorithm (what
benchmarks/quantization.py times) and with NNCF (its transformer preset for token models), on
the same calibration examples, saves both as OpenVINO IR and compares what OpenVINO's CPU plugin
runs: nodes per layer type and runtime precision, the compute nodes paired by MACs, inserted
Reorder/Convert nodes, FakeQuantize placement in the IR, and the plugin's per-node time at
batch 1 (``--tokens`` tokens for token models). The same comparison for any two files:
``slimkit int8-coverage A.xml B.xml``. Writes OUT/int8_coverage.md and .json.

Per-node times are the plugin's counters with PERF_COUNT on, in one process: a diagnosis of where
time goes, not the headline speed figures (benchmarks/quantization.py times each artifact in a
process of its own).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import run_and_write  # noqa: E402
from quantization import (CALIBRATION_BATCH, CALIBRATION_SAMPLES, SEED, batch_one, fp32_artifacts,  # noqa: E402
                          input_names, is_text, nncf_quantize, slimkit_quantize)


def measure_task(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import torch

    from slimkit.backends.openvino import save_ir
    from slimkit.backends.openvino_inspect import coverage_markdown, inspect_ir
    from slimkit.data.batches import calibration_batches
    from slimkit.measure.config import MeasureConfig
    from slimkit.recipes.measure_task import baseline_for
    from slimkit.techniques.quantization.modules import default_weight_max

    task, _, model = baseline_for(name, MeasureConfig(threads=args.threads, memory=False), progress=sys.stderr.isatty())
    model.eval()
    batches = calibration_batches(task.data.train, CALIBRATION_SAMPLES, CALIBRATION_BATCH, SEED)
    text = is_text(task)
    smoothquant = args.smoothquant if text else None
    example = task.data.test.example_inputs(1)
    _, fp32_onnx = fp32_artifacts(task, model, folder)
    started = time.perf_counter()
    q = slimkit_quantize(model, batches, default_weight_max(), smoothquant=smoothquant,
                         mask_input=task.data.train.mask_input)
    slimkit_seconds = time.perf_counter() - started
    ours = save_ir(q, example, folder / "slimkit.xml")[0]
    nncf, nncf_seconds = nncf_quantize(fp32_onnx, input_names(fp32_onnx), batches, folder, text)
    inputs = [t.numpy() for t in batch_one(task.data.test, args.tokens)]
    with torch.no_grad():
        found = [inspect_ir(path, label, inputs=inputs, threads=args.threads, profile=args.profile)
                 for path, label in ((ours, "slimkit"), (nncf[0], "NNCF"))]
        paired = paired_latency(task, [ours, ours.with_suffix(".bin")], nncf, args)
    return {"task": name, "tokens": args.tokens if text else None, "smoothquant": smoothquant,
            "quantize_seconds": {"slimkit": slimkit_seconds, "nncf": nncf_seconds},
            "capability": found[0].device_capability,
            "integer_mac_share": {i.label: i.integer_mac_share() for i in found},
            "inference_ms": {i.label: i.total_ms for i in found}, "paired": paired,
            "markdown": coverage_markdown(found)}


def paired_latency(task: Any, ours: list[Path], nncf: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    """slimkit's and NNCF's IR compiled as deploy runs them (latency mode, ``--threads``), timed
    interleaved in this process, PERF_COUNT off, in ``--paired-rounds`` blocks of one ABBA pair
    each: a slow spell of a shared machine falls on both alike, and each block gives one ratio.

    The ratio is the median of the blocks' ratios, with a 95% bootstrap interval over blocks. A
    second compiled copy of slimkit's own IR is timed in the same blocks (an A/A control): its
    ratio to slimkit is what this measurement reads for two identical models, its resolution."""
    import random
    import statistics

    from slimkit.backends.openvino import load_ir
    from slimkit.measure.latency import measure_paired_latency, torch_threads

    runs = {"slimkit": load_ir(ours, threads=args.threads).run, "NNCF": load_ir(nncf, threads=args.threads).run,
            "slimkit copy": load_ir(ours, threads=args.threads).run}
    out = {}
    shapes = {f"b1x{args.tokens}": batch_one(task.data.test, args.tokens), "b8x64": task.data.test.example_inputs(8)}
    per_block = max(2, args.paired_repeats // args.paired_rounds)
    rng = random.Random(0)

    def interval(ratios: list[float]) -> list[float]:
        boots = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
        return [boots[49], boots[1949]]

    with torch_threads(args.threads):
        for shape, inputs in shapes.items():
            blocks = []
            for block in range(args.paired_rounds):
                order = dict(list(runs.items())[block % 3:] + list(runs.items())[:block % 3])  # rotate who goes first
                stats = measure_paired_latency(order, inputs, warmup=5 if block else 20, repeats=per_block, rounds=2,
                                               threads=args.threads, max_seconds=30, min_warmup_seconds=0.05)
                blocks.append({name: s.median_ms for name, s in stats.items()})
            ratio = [b["slimkit"] / b["NNCF"] for b in blocks]
            control = [b["slimkit copy"] / b["slimkit"] for b in blocks]
            out[shape] = {"median_ms": {name: statistics.median(b[name] for b in blocks) for name in runs},
                          "ratio": statistics.median(ratio), "ratio_ci95": interval(ratio),
                          "control": statistics.median(control), "control_ci95": interval(control),
                          "blocks": len(blocks), "calls_per_block": per_block}
    return out


def render(results: list[dict[str, Any]]) -> str:
    lines = ["# Int8 coverage on OpenVINO: slimkit vs NNCF, op by op", ""]
    for res in results:
        shape = f"b1×{res['tokens']} tokens" if res["tokens"] else "b1"
        lines += [f"## {res['task']} ({shape})", "",
                  f"Command: `{res['command']}`; {res['machine']}, {res['date']}, {res['threads']} threads. "
                  f"OpenVINO CPU capabilities: {res['capability']}.", "",
                  f"Quantization time (same process, same calibration examples): slimkit "
                  f"{res['quantize_seconds']['slimkit']:.1f} s"
                  + (f" (SmoothQuant {res['smoothquant']})" if res["smoothquant"] is not None else "")
                  + f", NNCF {res['quantize_seconds']['nncf']:.1f} s.", ""]
        if res.get("paired"):
            first = next(iter(res["paired"].values()))
            lines += [f"Paired latency, slimkit's int8 IR vs NNCF's on OpenVINO (latency mode, PERF_COUNT off, timed "
                      f"interleaved in one process: {first['blocks']} blocks of one ABBA pair, "
                      f"{first['calls_per_block']} calls per model per block). Ratio: the median of the blocks' "
                      "ratios, [95% bootstrap interval]. A/A control: a second compiled copy of slimkit's IR against "
                      "slimkit, timed in the same blocks: how far apart this measurement puts two identical models.",
                      "", "| input | slimkit ms | NNCF ms | slimkit / NNCF | A/A control (copy / slimkit) |",
                      "|---|---|---|---|---|"]
            for shape, pair in res["paired"].items():
                ms = pair["median_ms"]
                lo, hi = pair["ratio_ci95"]
                clo, chi = pair["control_ci95"]
                lines.append(f"| {shape} | {ms['slimkit']:.3f} | {ms['NNCF']:.3f} | {pair['ratio']:.3f} "
                             f"[{lo:.3f}, {hi:.3f}] | {pair['control']:.3f} [{clo:.3f}, {chi:.3f}] |")
            lines.append("")
        lines += [res["markdown"], ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["minilm"])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--profile", type=int, default=100, help="inferences timed with PERF_COUNT")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paired-repeats", type=int, default=400, help="timed calls per model, over the rounds")
    parser.add_argument("--paired-rounds", type=int, default=20)
    parser.add_argument("--smoothquant", type=lambda v: None if v == "off" else float(v), default=0.8)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    command = (f"python benchmarks/int8_coverage.py --tasks {' '.join(args.tasks)} --tokens {args.tokens} "
               f"--profile {args.profile} --threads {args.threads} --paired-repeats {args.paired_repeats} "
               f"--paired-rounds {args.paired_rounds} --smoothquant "
               f"{'off' if args.smoothquant is None else args.smoothquant}")
    run_and_write("int8_coverage", command, args, lambda name, folder: measure_task(name, args, folder), render)


if __name__ == "__main__":
    main()
