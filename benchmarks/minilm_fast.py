"""recipes/minilm-fast.yaml measured: where each factor of the composed speed-up went.

    .venv/bin/python benchmarks/minilm_fast.py [--run-dir runs/minilm-fast] [--rounds 3] [--threads 2]
                                               [--repeats 100] [--tokens 128] [--batch-n-text 8]

Runs the recipe (or resumes it: a finished run folder is reused as it is), rebuilds the model
after each of its steps, and times, each (artifact, runtime) in a process of its own, rounds in
rotated order (benchmarks/quantization.py's workers):

- the FP32 baseline in eager PyTorch and on OpenVINO;
- the baseline quantized alone (the recipe's `quantize` options, same calibration draw) on OpenVINO;
- the pruned + distilled model in FP32 on OpenVINO;
- the recipe's final model (pruned, distilled, int8) on OpenVINO.

So the composed speed-up over eager FP32 splits into: OpenVINO FP32 over eager, pruning over the
unpruned FP32 (on OpenVINO), and int8 over the pruned FP32. Quality is the mean cosine to the FP32
embeddings on the test split. Writes OUT/minilm_fast.md and .json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import run_and_write  # noqa: E402
from quantization import time_and_score  # noqa: E402

RECIPE = Path(__file__).parent.parent / "recipes" / "minilm-fast.yaml"


def models_after_steps(run_dir: Path, task: Any) -> dict[str, Any]:
    """{step name: model as the run left it after that step}."""
    from slimkit.core.io import read_json
    from slimkit.core.step import rebuild_model

    records = read_json(run_dir / "run-state.json")["steps"]
    out = {}
    for k, rec in enumerate(records):
        structures = [(r["technique"], r.get("structure")) for r in records[:k + 1]]
        out[rec["name"]] = rebuild_model(task.build_model, structures, str(run_dir / rec["artifact"]))
    return out, records


def measure_task(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import torch

    from slimkit.backends.openvino import save_ir
    from slimkit.core.io import save_state_dict
    from slimkit.data.batches import calibration_batches
    from slimkit.recipes.runner import run_recipe
    from slimkit.recipes.schema import load_recipe
    from slimkit.tasks.base import build_task
    from slimkit.techniques.quantization.step import QuantizeConfig, quantize_embeddings
    from slimkit.techniques.quantization.ptq import quantize_static
    from slimkit.techniques.quantization.modules import default_weight_max

    recipe = load_recipe(args.recipe)
    run = run_recipe(recipe, args.run_dir, progress=sys.stderr.isatty())
    task = build_task(recipe.task)
    models, records = models_after_steps(args.run_dir, task)
    steps = [r["name"] for r in records]
    baseline = models["baseline"]
    quantize_name = next(s for s in steps if s.startswith("quantize"))
    before_quantize = steps[steps.index(quantize_name) - 1]
    q_options = next(s[quantize_name] for s in recipe.to_dict()["steps"] if quantize_name in s) \
        if any(quantize_name in s for s in recipe.to_dict()["steps"]) else {}
    cfg = QuantizeConfig(**(q_options or {}))
    example = task.data.test.example_inputs(1)
    batches = calibration_batches(task.data.train, cfg.calibration_samples, cfg.calibration_batch_size, recipe.seed)
    with torch.no_grad():
        int8_alone = quantize_embeddings(quantize_static(baseline, batches, weight_max=default_weight_max(),
                                                         smoothquant=cfg.smoothquant, observer=cfg.observer,
                                                         attention=cfg.attention == "int8",
                                                         mask_input=task.data.train.mask_input)[0], cfg)[0]
    artifacts: dict[str, dict[str, Any]] = {}

    def add(config: str, label: str, files: list[Path], runtime: str) -> None:
        artifacts[f"{config}@{runtime}"] = {"quantizer": label, "runtime": runtime, "files": [str(f) for f in files],
                                            "quantize_seconds": None}

    add("fp32", "baseline FP32", [save_state_dict(folder / "fp32.safetensors", baseline.state_dict())], "eager")
    add("fp32", "baseline FP32", save_ir(baseline, example, folder / "fp32.xml"), "openvino")
    add("int8", "baseline, static int8 (the recipe's quantize options)", save_ir(int8_alone, example, folder / "int8.xml"),
        "openvino")
    add("pruned", f"after {before_quantize} (FP32)", save_ir(models[before_quantize], example, folder / "pruned.xml"),
        "openvino")
    add("final", f"after {quantize_name} (the recipe's model)", save_ir(models[quantize_name], example,
                                                                         folder / "final.xml"), "openvino")
    base = {"task": recipe.task.to_json_dict(), "threads": args.threads, "repeats": args.repeats,
            "batch_n": args.batch_n_text, "max_seconds": args.max_seconds, "tokens": args.tokens}
    with torch.no_grad():
        from slimkit.measure.quality import predict

        reference = predict(baseline, task.data.test, 256)
    rows = time_and_score(name, task, artifacts, base, folder, args.rounds, reference)
    by = {r["config"]: r for r in rows}
    factors = {}
    for b in ("b1", "bN"):
        eager, ov = by["fp32@eager"][f"{b}_ms"], by["fp32@openvino"][f"{b}_ms"]
        pruned, final, int8 = by["pruned@openvino"][f"{b}_ms"], by["final@openvino"][f"{b}_ms"], \
            by["int8@openvino"][f"{b}_ms"]
        factors[b] = {"openvino_fp32": eager / ov, "pruning": ov / pruned, "int8_after_pruning": pruned / final,
                      "int8_alone": ov / int8, "composed": eager / final}
    from slimkit.encoding import is_encoded
    from slimkit.encoding.layer import INTEGER_KINDS

    params = {s: sum(p.numel() for p in m.parameters()) for s, m in models.items()
              if not is_encoded(m, INTEGER_KINDS)}  # int8 layers hold codes in buffers, not parameters
    step_info = {r["name"]: {"seconds": r.get("seconds"), "quality": (r.get("metrics") or {}).get("quality")}
                 for r in records}
    return {"task": name, "steps": steps, "rows": rows, "factors": factors, "params": params, "step_info": step_info,
            "run_dir": str(args.run_dir), "resumed_steps": run.resumed_steps, "batch_n": args.batch_n_text,
            "recipe": str(args.recipe), "fp32_quality": by["fp32@eager"]["quality"]}


def render(results: list[dict[str, Any]]) -> str:
    lines = ["# recipes/minilm-fast.yaml: the composed MiniLM, factor by factor", ""]
    for res in results:
        n, t = res["batch_n"], res["tokens"]
        lines += [f"Command: `{res['command']}`; {res['machine']}, {res['date']}, {res['threads']} threads, "
                  f"{res['rounds']} rounds (each artifact timed in a process of its own, rotated order; medians over "
                  "rounds of each process's median).", "",
                  f"Recipe `{res['recipe']}`: steps {' → '.join(res['steps'])}. Quality: mean cosine to the FP32 "
                  "embeddings on the 1,000 test sentences (top-10 overlap beside it).", "",
                  f"| artifact | what | cosine | top-10 overlap | bytes | b1×{t} ms | × eager | b{n}×64 ms | × eager |",
                  "|---|---|---|---|---|---|---|---|---|"]
        by = {r["config"]: r for r in res["rows"]}
        eager = by["fp32@eager"]
        for r in res["rows"]:
            lines.append(f"| {r['config']} | {r['quantizer']} | {r['quality']:.4f} | "
                         f"{r['metrics'].get('knn10_overlap', float('nan')):.3f} | {r['bytes']:,} | {r['b1_ms']:.3f} | "
                         f"{eager['b1_ms'] / r['b1_ms']:.2f} | {r['bN_ms']:.2f} | {eager['bN_ms'] / r['bN_ms']:.2f} |")
        f1, fn = res["factors"]["b1"], res["factors"]["bN"]
        final = by["final@openvino"]
        lines += ["", "Where the speed-up went (latency ratios; the product of the first three is the composed one):",
                  "", f"| factor | b1×{t} | b{n}×64 |", "|---|---|---|"]
        for key, label in (("openvino_fp32", "OpenVINO FP32 / eager FP32"),
                           ("pruning", "pruned + distilled FP32 / unpruned FP32 (OpenVINO)"),
                           ("int8_after_pruning", "int8 / FP32, after pruning (OpenVINO)"),
                           ("composed", "**composed: eager FP32 / the recipe's model**"),
                           ("int8_alone", "int8 alone / FP32 (OpenVINO, unpruned)")):
            lines.append(f"| {label} | {f1[key]:.2f} | {fn[key]:.2f} |")
        ok = f1["composed"] >= 8 and final["quality"] >= 0.99
        lines += ["", f"Target (issue 24): ≥ 8× eager FP32 at b1×{t} at cosine ≥ 0.99: composed "
                      f"{f1['composed']:.2f}× at cosine {final['quality']:.4f}: **{'met' if ok else 'not met'}**.", "",
                  "FP32 parameters after each float step: " + ", ".join(f"{s} {p:,}" for s, p in res["params"].items()) + ".", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/minilm-fast"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batch-n-text", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.tasks = ["minilm"]
    command = (f"python benchmarks/minilm_fast.py --run-dir {args.run_dir} --rounds {args.rounds} --threads "
               f"{args.threads} --repeats {args.repeats} --tokens {args.tokens} --batch-n-text {args.batch_n_text}")
    run_and_write("minilm_fast", command, args, lambda name, folder: measure_task(name, args, folder), render)


if __name__ == "__main__":
    main()
