"""Structured pruning sections of `benchmarks/pruning.py` (run through it, not alone).

- shapes: `shapes-cnn`'s plain CNN pruned to a MACs budget and fine-tuned, beside the same slim
  architecture trained from scratch for as many epochs as baseline + fine-tune (a control); eager
  and every runtime timed before/after in their own processes (the `deploy` step's paired timing).
- minilm: half the FFN neurons and a third of the attention heads removed; cosine to the FP32
  embeddings before and after a short fine-tune against them; ONNX Runtime runs the export.
- transformers: ResNet-50, MobileNetV2 and ViT-B/16 built from `transformers` config classes (no
  weights), 30% structured pruning: output shapes kept, MACs cut as expected, ONNX export checked.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from common import shipped  # benchmarks/ is on sys.path: this module runs through pruning.py

# ----------------------------------------------------------------------------------------- shapes



def shapes_recipe(seed: int, threads: int, target_macs: float, epochs: int, criterion: str) -> dict[str, Any]:
    """recipes/shapes-cnn-prune.yaml with the command line's seed, threads and pruning settings."""
    recipe = shipped("shapes-cnn-prune.yaml")
    recipe["seed"] = seed
    recipe["measure"]["threads"] = threads
    recipe["steps"][0]["prune_structured"].update(target_macs=target_macs, criterion=criterion,
                                                  finetune={"epochs": epochs})
    return recipe


def scratch_control(run_dir: Path, recipe: dict[str, Any], extra_epochs: int, seed: int) -> dict[str, Any]:
    """The pruned architecture with fresh weights, trained for baseline + fine-tune epochs."""
    from slimkit.tasks.context import Context
    from slimkit.core.step import rebuild_model
    from slimkit.measure.quality import predict
    from slimkit.tasks import build_task

    task = build_task(recipe["task"])
    state = json.loads((run_dir / "run-state.json").read_text())
    structures = [(s["technique"], s.get("structure")) for s in state["steps"][:2]]
    model = rebuild_model(task.build_model, structures, None).train()
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    cfg = task.baseline_train.model_copy(update={"epochs": task.baseline_train.epochs + extra_epochs})
    Context(task=task, seed=seed).train(model, cfg, description="scratch")
    test = task.data.test
    return {"quality": task.evaluate(predict(model.eval(), test, 256), test.targets)["quality"],
            "epochs": cfg.epochs}


def shapes_section(args, folder: Path, progress) -> dict[str, Any]:
    from slimkit.recipes.runner import run_recipe

    seeds = []
    for seed in args.shapes_seeds:
        progress(f"shapes-cnn seed {seed}: baseline, prune, deploy")
        recipe = shapes_recipe(seed, args.threads, args.target_macs, args.structured_epochs, args.criterion)
        run_dir = folder / f"shapes{seed}"
        steps = run_recipe(recipe, run_dir).results["steps"]
        base, pruned, deployed = steps
        progress(f"shapes-cnn seed {seed}: scratch control")
        control = scratch_control(run_dir, recipe, args.structured_epochs, seed)
        seeds.append({"seed": seed, "baseline": _metrics(base), "pruned": _metrics(pruned),
                      "pruned_info": {k: pruned["info"].get(k) for k in ("layers_changed", "increments")},
                      "candidates": deployed["info"]["candidates"], "chosen": deployed["info"]["backend"],
                      "scratch": control})
    return {"recipe": shapes_recipe(0, args.threads, args.target_macs, args.structured_epochs, args.criterion),
            "seeds": seeds}


def _metrics(step: dict[str, Any]) -> dict[str, Any]:
    m = step["metrics"]
    return {k: m.get(k) for k in ("quality", "params", "macs", "size_bytes", "latency_b1", "latency_bN")}


def render_shapes(res: dict[str, Any], command: str, stamp: str) -> str:
    seeds = res["seeds"]

    def mean_std(values: list[float]) -> str:
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 \
            else f"{values[0]:.4f}"

    base_q = [s["baseline"]["quality"] for s in seeds]
    pruned_q = [s["pruned"]["quality"] for s in seeds]
    scratch_q = [s["scratch"]["quality"] for s in seeds]
    b, p = seeds[0]["baseline"], seeds[0]["pruned"]
    drop = [100 * (x - y) for x, y in zip(base_q, pruned_q)]
    lines = ["# Structured pruning on shapes-cnn (cnn_shapes, width 32)", "", f"Command: `{command}`; {stamp}.", "",
             "Per seed: the recipe below (baseline trained by the runner; `prune_structured` to the MACs budget and "
             "fine-tuned; `deploy` times every runtime on the pruned model and, interleaved in the same process "
             "(ABBA rounds), on the baseline), then the pruned architecture re-initialised and trained from scratch "
             f"for baseline + fine-tune epochs ({seeds[0]['scratch']['epochs']}). Accuracy: test split.", "",
             "| model | accuracy (mean ± std) | per seed | params | MACs | × fewer MACs |", "|---|---|---|---|---|---|",
             f"| baseline | {mean_std(base_q)} | {' '.join(f'{q:.4f}' for q in base_q)} | {b['params']:,} | "
             f"{b['macs']:,} | 1.00 |",
             f"| pruned + fine-tuned | {mean_std(pruned_q)} | {' '.join(f'{q:.4f}' for q in pruned_q)} | "
             f"{p['params']:,} | {p['macs']:,} | {b['macs'] / p['macs']:.2f} |",
             f"| same architecture from scratch | {mean_std(scratch_q)} | {' '.join(f'{q:.4f}' for q in scratch_q)} | "
             f"{p['params']:,} | {p['macs']:,} | {b['macs'] / p['macs']:.2f} |", "",
             f"Pruned minus baseline: {-statistics.mean(drop):+.2f} pt (per seed "
             f"{' '.join(f'{-d:+.2f}' for d in drop)}); pruned minus scratch: "
             f"{100 * (statistics.mean(pruned_q) - statistics.mean(scratch_q)):+.2f} pt.", "",
             "Latency, seed by seed: each runtime in its own process; `speed-up` = baseline ms / pruned ms from "
             "the paired (interleaved) timing; medians.", "",
             "| seed | runtime | b1 ms baseline → pruned | b1 speed-up | b64 ms baseline → pruned | b64 speed-up | "
             "chosen |", "|---|---|---|---|---|---|---|"]
    for s in seeds:
        for c in s["candidates"]:
            lines.append(f"| {s['seed']} | {c['backend']} {c['precision']} | {_ms(c.get('versus_b1_ms'))} → "
                         f"{_ms(c.get('paired_b1_ms'))} | {_ratio(c.get('speedup_vs_versus_b1'))} | "
                         f"{_ms(c.get('versus_bN_ms'))} → {_ms(c.get('paired_bN_ms'))} | "
                         f"{_ratio(c.get('speedup_vs_versus_bN'))} | {'yes' if c['backend'] == s['chosen'] else ''} |")
    eager_b1, eager_bn, best_b1, best_bn, best_names = [], [], [], [], set()
    for s in seeds:
        eager = next(c for c in s["candidates"] if c["backend"] == "eager")
        best = next(c for c in s["candidates"] if c["backend"] == s["chosen"])
        eager_b1.append(eager.get("speedup_vs_versus_b1") or 0)
        eager_bn.append(eager.get("speedup_vs_versus_bN") or 0)
        best_b1.append(best.get("speedup_vs_versus_b1") or 0)
        best_bn.append(best.get("speedup_vs_versus_bN") or 0)
        best_names.add(s["chosen"])
    med = statistics.median
    lines += ["", "Criteria (issue 6, shapes-cnn structured):", "",
              f"- MACs: {100 * (1 - p['macs'] / b['macs']):.1f}% fewer (≥ 40% wanted)",
              f"- accuracy, pruned minus baseline: {-statistics.mean(drop):+.2f} pt, mean over seeds (a drop of at "
              f"most 1 pt wanted); pruned minus the same architecture from scratch: "
              f"{100 * (statistics.mean(pruned_q) - statistics.mean(scratch_q)):+.2f} pt",
              f"- batch 64, paired speed-up, median over seeds: eager {med(eager_bn):.2f}×, best runtime "
              f"({'/'.join(sorted(best_names))}) {med(best_bn):.2f}× (≥ 1.3× wanted)",
              f"- batch 1: eager {med(eager_b1):.2f}×, best runtime {med(best_b1):.2f}×"]
    if min(med(eager_b1), med(best_b1)) < 1.3 <= min(med(eager_bn), med(best_bn)):
        lines.append("  - at batch 1 this model is bound by per-operator overhead (dispatch, small kernels, "
                     "threading) more than by MACs, so removing MACs buys less there")
    lines += ["", "Recipe (seed varies):", "", "```json", json.dumps(res["recipe"], indent=1), "```", ""]
    return "\n".join(lines)


def _ms(v: Any) -> str:
    return "—" if v is None else f"{v:.3f}"


def _ratio(v: Any) -> str:
    return "—" if v is None else f"{v:.2f}×"


# ----------------------------------------------------------------------------------------- minilm
def minilm_recipe(threads: int, epochs: int) -> dict[str, Any]:
    """recipes/minilm-prune.yaml with the command line's threads and fine-tuning epochs."""
    recipe = shipped("minilm-prune.yaml")
    recipe["measure"]["threads"] = threads
    recipe["steps"][1]["train"]["epochs"] = epochs
    return recipe


def minilm_section(args, folder: Path, progress) -> dict[str, Any]:
    from slimkit.recipes.runner import run_recipe

    progress("minilm: prune, fine-tune, deploy")
    recipe = minilm_recipe(args.threads, args.minilm_epochs)
    steps = run_recipe(recipe, folder / "minilm").results["steps"]
    out = {"recipe": recipe, "rows": []}
    for step in steps:
        m = step["metrics"]
        out["rows"].append({"step": step["name"], "metrics": {k: m.get(k) for k in (
            "quality", "quality_metrics", "params", "macs", "size_bytes", "latency_b1", "latency_bN")},
            "info": {k: step["info"].get(k) for k in ("heads", "layers_changed", "candidates", "train")
                     if k in step.get("info", {})}})
    return out


# ----------------------------------------------------------------------------------- transformers
class Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def hf_models():
    import transformers as t

    return {"ResNet-50": lambda: t.ResNetForImageClassification(t.ResNetConfig(num_labels=1000)),
            "MobileNetV2 1.0": lambda: t.MobileNetV2ForImageClassification(t.MobileNetV2Config(num_labels=1000)),
            "ViT-B/16": lambda: t.ViTForImageClassification(t.ViTConfig(num_labels=1000))}


def transformers_section(args, folder: Path, progress) -> dict[str, Any]:
    from slimkit.backends.onnxruntime import export_onnx, load_onnx
    from slimkit.measure.macs import count_macs
    from slimkit.measure.size import count_params
    from slimkit.techniques.pruning.structured import Plan, StructuredPruner, attention_heads

    rows = {}
    for name, build in hf_models().items():
        progress(f"transformers: {name}")
        torch.manual_seed(0)
        model = Logits(build()).eval()
        x = (torch.randn(1, 3, 224, 224),)
        with torch.no_grad():
            shape = tuple(model(*x).shape)
        macs0, params0, heads0 = count_macs(model, x), count_params(model), attention_heads(model)
        pruner = StructuredPruner(model, x, Plan(ratio=0.3, heads=0.3, criterion="l2"))
        pruner.step()
        batch = (torch.randn(2, 3, 224, 224),)
        path = export_onnx(model, batch, folder / f"{name.replace('/', '_')}.onnx")
        built = load_onnx(path, threads=args.threads)
        with torch.no_grad():
            eager = model(*batch)
        diff = float((torch.as_tensor(built.run(*batch)) - eager).abs().max() / eager.abs().max())
        heads = attention_heads(model)
        rows[name] = {"output_shape": list(shape), "output_shape_after": list(model(*x).shape),
                      "params": [params0, count_params(model)], "macs": [macs0, count_macs(model, x)],
                      "heads": [sum(heads0.values()), sum(heads.values())] if heads0 else None,
                      "onnx_bytes": path.stat().st_size, "onnx_max_rel_diff": diff}
        path.unlink()
    return {"rows": rows}


def render_transformers(res: dict[str, Any], command: str, stamp: str) -> str:
    lines = ["# Structured pruning of `transformers` models built from their config classes", "",
             f"Command: `{command}`; {stamp}.", "",
             "Random weights (nothing downloaded), 224×224 input. `prune_structured`'s engine with ratio 0.3 "
             "(L2 scores) and heads 0.3: a conv layer pruned on both sides keeps about 0.7² = 0.49 of its MACs; a "
             "transformer keeps its residual width and loses 30% of its FFN neurons and round(0.3 × 12) = 4 of 12 "
             "heads per layer, so its linear layers keep about 0.67-0.7. ONNX: exported with dynamic batch and run "
             "in ONNX Runtime; max |ORT - eager| / max |eager|.", "",
             "| model | output shape before → after | params before → after | MACs before → after | MACs kept | "
             "heads | ONNX MB | ORT rel. diff |", "|---|---|---|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        heads = "—" if r["heads"] is None else f"{r['heads'][0]} → {r['heads'][1]}"
        lines.append(f"| {name} | {tuple(r['output_shape'])} → {tuple(r['output_shape_after'])} | "
                     f"{r['params'][0] / 1e6:.2f} M → {r['params'][1] / 1e6:.2f} M | {r['macs'][0] / 1e9:.3f} G → "
                     f"{r['macs'][1] / 1e9:.3f} G | {r['macs'][1] / r['macs'][0]:.3f} | {heads} | "
                     f"{r['onnx_bytes'] / 1e6:.1f} | {r['onnx_max_rel_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def render_minilm(res: dict[str, Any], command: str, stamp: str) -> str:
    rows = res["rows"]
    base = rows[0]["metrics"]
    lines = ["# Structured pruning of MiniLM (all-MiniLM-L6-v2)", "", f"Command: `{command}`; {stamp}.", "",
             "The recipe below: `prune_structured` removes half the FFN neurons of every layer and a third of the "
             f"heads (4 of 12 per layer; `{res['recipe']['steps'][0]['prune_structured']['criterion']}` scores), "
             "without training; `train` fine-tunes against the FP32 model's embeddings (the task's cosine loss) on "
             "the corpus's training split; `deploy` exports to ONNX and runs it in ONNX Runtime. Quality: mean "
             "cosine to the FP32 embeddings on the held-out test sentences, and the overlap of each sentence's "
             "10 nearest neighbours. Latency: eager PyTorch at b1 and b32 (64 tokens), medians; the deploy row is "
             "ONNX Runtime's.", "",
             "| step | cosine | top-10 overlap | params | MACs (× fewer) | b1 ms (×) | b32 ms (×) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        q = m.get("quality_metrics") or {}
        lines.append(f"| {r['step']} | {m['quality']:.4f} | {_get(q, 'knn10_overlap')} | {m['params']:,} | "
                     f"{m['macs']:,} ({base['macs'] / m['macs']:.2f}) | {_lat(m, base, 'latency_b1')} | "
                     f"{_lat(m, base, 'latency_bN')} |")
    pruned = next(r for r in rows if r["step"].startswith("prune_structured"))
    heads = pruned["info"].get("heads") or {}
    lines += ["", f"Heads: {heads.get('before')} → {heads.get('after')}; FFN widths: "
              f"{sorted({tuple(v) for k, v in pruned['info'].get('layers_changed', {}).items() if 'intermediate' in k})}.",
              ""]
    deploy = next((r for r in rows if r["step"] == "deploy"), None)
    if deploy and deploy["info"].get("candidates"):
        c = deploy["info"]["candidates"][0]
        lines += [f"ONNX Runtime, paired with the unpruned baseline in its process: b1 "
                  f"{_ms(c.get('versus_b1_ms'))} → {_ms(c.get('paired_b1_ms'))} ms "
                  f"({_ratio(c.get('speedup_vs_versus_b1'))}), b32 {_ms(c.get('versus_bN_ms'))} → "
                  f"{_ms(c.get('paired_bN_ms'))} ms ({_ratio(c.get('speedup_vs_versus_bN'))}); max relative "
                  f"difference from eager {c.get('max_rel_diff', 0):.1e}.", ""]
    lines += ["Recipe:", "", "```json", json.dumps(res["recipe"], indent=1), "```", ""]
    return "\n".join(lines)


def _get(d: dict[str, Any], key: str) -> str:
    return "—" if d.get(key) is None else f"{d[key]:.3f}"


def _lat(m: dict[str, Any], base: dict[str, Any], key: str) -> str:
    if not m.get(key) or not base.get(key):
        return "—"
    return f"{m[key]['median_ms']:.2f} ({base[key]['median_ms'] / m[key]['median_ms']:.2f})"
