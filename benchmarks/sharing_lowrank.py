"""Weight sharing and low-rank factorization, one command (issue 8).

    .venv/bin/python benchmarks/sharing_lowrank.py [--sections deep_compression sharing hashednets minilm conv lora]
        [--threads 2]

- deep_compression: the shipped recipes `recipes/{mnist-mlp,mnist-lenet5}-deep-compression.yaml`
  (prune 92% -> fine-tune -> 16 shared values -> fine-tune codebooks -> Huffman) over `--seeds`:
  test accuracy and bytes after each stage (the FP32 safetensors checkpoint; the pruned one,
  bitmask + values; the shared one, packed 4-bit codes + codebooks; the Huffman-coded file), and
  the ratio to FP32.
- hashednets: LeNet-300-100 on `mnist-mlp` with every layer hashed to `--compression` of its
  weights, trained from scratch (and from the dense weights), against a dense 784-3h-h-10 MLP with
  as many stored weights, each trained for `--hash-epochs`, over `--seeds`.
- sharing: 16 shared values alone (no pruning), each of the three centroid initialisations, with
  and without a short codebook fine-tune: accuracy drop and bytes against FP32, on `mnist-mlp`
  and `mnist-lenet5`.
- minilm: all-MiniLM-L6-v2's 12 FFN Linears factorized to 54% of their weights (30% of the
  encoder's parameters removed) by plain, activation-scaled (ASVD) and whitened (SVD-LLM) truncated SVD:
  cosine to the FP32 embeddings before fine-tuning; then the shipped
  `recipes/minilm-lowrank.yaml` (whitened, fine-tuned against the FP32 embeddings and every
  layer's hidden states, exported to ONNX Runtime and timed against the FP32 model in one
  process); `--minilm-controls embedding-only plain` adds the same fine-tune without the
  hidden-state term, or from plain SVD.
- conv: `digits-cnn`'s 3x3 convolutions as Tucker-2 chains (`recipes/digits-cnn-lowrank.yaml`)
  and as CP chains from the same baseline, over `--seeds`: MACs of the factorized layers,
  accuracy before and after fine-tuning, and every runtime timed against the baseline (the
  `deploy` step's paired timing); then the same factorization of `shapes-cnn`'s larger CNN,
  untrained, for timing only.
- lora: an under-trained digits-mlp fine-tuned by LoRA adapters (merged after) against full
  fine-tuning for the same epochs: accuracy and trainable parameters.

Each section writes OUT/sharing_lowrank_SECTION.md and .json with the command that reproduces it.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import run_section_loop, shipped  # noqa: E402

TASKS = ("mnist-mlp", "mnist-lenet5")



def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {std:.4f}"


# ------------------------------------------------------------------------------ deep compression
def deep_compression_section(args, folder: Path, progress) -> dict[str, Any]:
    from slimkit.recipes.runner import run_recipe

    out: dict[str, Any] = {}
    for task in TASKS:
        runs = []
        for seed in args.seeds:
            progress(f"deep compression: {task} seed {seed}")
            recipe = shipped(f"{task}-deep-compression.yaml")
            recipe["seed"] = seed
            recipe["measure"]["threads"] = args.threads
            base, pruned, shared = run_recipe(recipe, folder / f"{task}-{seed}").results["steps"]
            runs.append({"quality": [s["metrics"]["quality"] for s in (base, pruned, shared)],
                         "bytes": [s["metrics"]["size_bytes"] for s in (base, pruned, shared)]
                         + [shared["info"]["entropy_coded"]["bytes"]],
                         "sparsity": pruned["info"]["sparsity"]})
        out[task] = {"runs": runs, "recipe": recipe}
    return {"tasks": out, "seeds": args.seeds}


def render_deep_compression(res: dict[str, Any], command: str, stamp: str) -> str:
    lines = ["# Deep Compression: prune -> share -> Huffman", "", f"Command: `{command}`; {stamp}.", "",
             f"Seeds {', '.join(map(str, res['seeds']))}; test accuracy mean ± std; bytes are the files themselves "
             "(safetensors checkpoints; the last column the Huffman-coded file the `cluster` step writes), medians "
             "over seeds, and the ratio to the FP32 checkpoint. Han et al. 2016 report 40× (LeNet-300-100) and 39× "
             "(LeNet-5) on the full MNIST.", ""]
    for task, r in res["tasks"].items():
        runs = r["runs"]
        fp32 = statistics.median(x["bytes"][0] for x in runs)
        lines += [f"## {task}", "", "| stage | accuracy | bytes | × smaller than FP32 |", "|---|---|---|---|"]
        for i, stage in enumerate(["FP32", f"pruned ({statistics.fmean(x['sparsity'] for x in runs):.0%}) + "
                                   "fine-tuned, bitmask + values", "16 shared values + codebooks fine-tuned, "
                                   "packed 4-bit codes", "Huffman-coded codes and gaps"]):
            q = _mean_std([x["quality"][min(i, 2)] for x in runs])
            b = statistics.median(x["bytes"][i] for x in runs)
            lines.append(f"| {stage} | {q} | {b:,.0f} | {fp32 / b:.1f} |")
        change = [x["quality"][2] - x["quality"][0] for x in runs]
        lines += ["", f"Accuracy change FP32 → final, paired by seed: {100 * statistics.fmean(change):+.2f} pt "
                  f"(per seed {', '.join(f'{100 * d:+.1f}' for d in change)}).", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- sharing
def sharing_section(args, folder: Path, progress) -> dict[str, Any]:
    from slimkit.recipes.runner import run_recipe

    out: dict[str, Any] = {}
    for task in TASKS:
        rows: dict[str, dict[str, list[float]]] = {}
        for seed in args.seeds:
            baseline = None
            for init in ("linear", "density", "random"):
                for epochs in (0, args.sharing_epochs):
                    name = f"{init}, {'no fine-tune' if epochs == 0 else f'{epochs} epochs of codebook fine-tune'}"
                    progress(f"sharing: {task} seed {seed}: {name}")
                    recipe = {"task": task, "seed": seed,
                              "baseline": {} if baseline is None else {"weights": baseline},
                              "measure": {"batch_n": 64, "repeats": 3, "warmup": 1, "threads": args.threads,
                                          "memory": False},
                              "steps": [{"cluster": {"clusters": 16, "init": init, "finetune": {"epochs": epochs, "lr": 1e-4}}}]}
                    run_dir = folder / f"{task}-{seed}-{init}-{epochs}"
                    base, step = run_recipe(recipe, run_dir).results["steps"]
                    baseline = baseline or str(run_dir / base["artifact"])
                    row = rows.setdefault(name, {"drop": [], "ratio": [], "fp32": [], "quality": []})
                    row["drop"].append(base["metrics"]["quality"] - step["metrics"]["quality"])
                    row["ratio"].append(step["metrics"]["size_bytes"] / base["metrics"]["size_bytes"])
                    row["fp32"].append(base["metrics"]["quality"])
                    row["quality"].append(step["metrics"]["quality"])
        out[task] = rows
    return {"tasks": out, "seeds": args.seeds}


def render_sharing(res: dict[str, Any], command: str, stamp: str) -> str:
    lines = ["# Weight sharing alone: 16 values per layer", "", f"Command: `{command}`; {stamp}.", "",
             f"Seeds {', '.join(map(str, res['seeds']))}; every Linear / Conv2d weight with ≥ 256 entries shares 16 "
             "values (4-bit codes), the rest stays FP32. Drop = FP32 test accuracy − shared, paired by seed "
             "(positive = lost); bytes = the step's safetensors checkpoint / the FP32 one.", ""]
    for task, rows in res["tasks"].items():
        fp32 = next(iter(rows.values()))["fp32"]
        lines += [f"## {task} (FP32 {_mean_std(fp32)})", "", "| init | accuracy | drop (pt) | bytes / FP32 |",
                  "|---|---|---|---|"]
        for name, r in rows.items():
            lines.append(f"| {name} | {_mean_std(r['quality'])} | {100 * statistics.fmean(r['drop']):+.2f} "
                         f"(max {100 * max(r['drop']):+.2f}) | {statistics.median(r['ratio']):.3f} |")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ hashednets
def dense_equivalent(stored: int) -> list[int]:
    """Hidden widths (3h, h) of a 784-3h-h-10 MLP with at most ``stored`` weights (biases aside)."""
    h = 1
    while 784 * 3 * (h + 1) + 3 * (h + 1) * (h + 1) + (h + 1) * 10 <= stored:
        h += 1
    return [3 * h, h]


def hashednets_section(args, folder: Path, progress) -> dict[str, Any]:
    from slimkit.recipes.runner import run_recipe

    measure = {"batch_n": 64, "repeats": 3, "warmup": 1, "threads": args.threads, "memory": False}
    epochs = args.hash_epochs
    virtual = 784 * 300 + 300 * 100 + 100 * 10
    stored = sum(round(n * args.compression) for n in (784 * 300, 300 * 100, 100 * 10))
    hidden = dense_equivalent(stored)
    rows: dict[str, dict[str, list[float]]] = {}
    for seed in args.seeds:
        progress(f"hashednets seed {seed}: LeNet-300-100, its hashed twin trained from scratch, from the dense weights")
        recipe = {"task": "mnist-mlp", "seed": seed, "baseline": {"train": {"epochs": epochs}}, "measure": measure,
                  "steps": [{"hash": {"compression": args.compression, "init": "random", "finetune": {"epochs": epochs}}}]}
        base, scratch = run_recipe(recipe, folder / f"h{seed}").results["steps"]
        recipe["steps"] = [{"hash": {"compression": args.compression, "init": "project",
                                     "finetune": {"epochs": epochs // 2, "lr": 5e-4}}}]
        recipe["baseline"] = {"weights": str(folder / f"h{seed}" / base["artifact"])}
        _, projected = run_recipe(recipe, folder / f"p{seed}").results["steps"]
        progress(f"hashednets seed {seed}: dense 784-{hidden[0]}-{hidden[1]}-10")
        dense = {"task": {"name": "mnist-mlp", "model": "mlp_digits", "model_args": {"in_features": 784,
                                                                                      "hidden": hidden, "dropout": 0.0}},
                 "seed": seed, "baseline": {"train": {"epochs": epochs}}, "measure": measure,
                 "steps": []}
        small = run_recipe(dense, folder / f"d{seed}").results["steps"][0]
        for name, step in ((f"LeNet-300-100 dense ({virtual:,} weights)", base),
                           (f"HashedNets 1/{1 / args.compression:g}, trained from scratch", scratch),
                           (f"HashedNets 1/{1 / args.compression:g}, from the dense weights + {epochs // 2} epochs",
                            projected),
                           (f"dense 784-{hidden[0]}-{hidden[1]}-10 (same stored weights)", small)):
            row = rows.setdefault(name, {"quality": [], "params": [], "bytes": []})
            row["quality"].append(step["metrics"]["quality"])
            row["params"].append(stored_params(step))
            row["bytes"].append(step["metrics"]["size_bytes"])
    return {"rows": rows, "seeds": args.seeds, "stored": stored, "epochs": epochs}


def render_hashednets(res: dict[str, Any], command: str, stamp: str) -> str:
    rows = list(res["rows"].items())
    lines = ["# HashedNets against a dense net with as many stored weights: `mnist-mlp`", "",
             f"Command: `{command}`; {stamp}.", "",
             f"Seeds {', '.join(map(str, res['seeds']))}; {res['epochs']} training epochs each (the dense control "
             "is the task's baseline training of the small MLP, without dropout, as LeNet-300-100). Params are stored parameters (biases included); "
             "bytes the safetensors checkpoint.", "",
             "| model | stored params | bytes | test accuracy | vs the dense equivalent, paired |", "|---|---|---|---|---|"]
    control = rows[-1][1]["quality"]
    for name, r in rows:
        paired = "—" if r["quality"] is control else \
            f"{100 * statistics.fmean(a - b for a, b in zip(r['quality'], control)):+.2f} pt"
        lines.append(f"| {name} | {statistics.median(r['params']):,.0f} | {statistics.median(r['bytes']):,.0f} | "
                     f"{_mean_std(r['quality'])} | {paired} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- minilm
FFN = ["*.intermediate.dense", "*.layer.?.output.dense"]


def stored_params(step: dict[str, Any]) -> int:
    """Parameters a step's model stores: results.json counts a hashed layer's virtual weights (the
    dense equivalent), so each hashed layer's virtual count is swapped for its stored one."""
    layers = step["info"].get("layers", {}) if step["technique"] == "hash" else {}
    return step["metrics"]["params"] - sum(v["virtual"] - v["stored"] for v in layers.values())


def embedding_params() -> int:
    """Parameters of MiniLM's embedding tables (and their LayerNorm), which factorizing leaves alone."""
    from slimkit.tasks import build_task

    model = build_task("minilm").build_model()
    return sum(p.numel() for n, p in model.named_parameters() if ".embeddings." in n)


def minilm_recipe(args, method: str = "whiten", hidden: bool = True) -> dict[str, Any]:
    """The shipped recipe with the command's settings; ``hidden=False`` drops the hidden-state term
    (the embedding-only control)."""
    recipe = shipped("minilm-lowrank.yaml")
    recipe["measure"].update(threads=args.threads, repeats=args.repeats)
    factorize, distill = recipe["steps"][0]["factorize"], recipe["steps"][1]["distill"]
    factorize.update(method=method, ratio=args.minilm_ratio)
    distill["finetune"].update(epochs=args.minilm_epochs, lr=args.minilm_lr)
    distill["data"]["generate"]["count"] = args.minilm_generated
    if hidden and args.minilm_hidden_weight > 0:
        distill["losses"]["features"]["weight"] = args.minilm_hidden_weight
    else:
        del distill["losses"]["features"]
    return recipe


# the fine-tuned arms: {label: (factorization, hidden-state term, deploy)}; the first always runs
MINILM_ARMS = {"whiten": ("whiten", True, True), "embedding-only": ("whiten", False, False),
               "plain": ("plain", True, False)}


def _step_row(step: dict[str, Any]) -> dict[str, Any]:
    keep = ("quality", "quality_metrics", "params", "macs", "size_bytes", "latency_b1", "latency_bN")
    info = {k: v for k, v in step.get("info", {}).items() if k in (
        "method", "weights", "factorized_weights", "macs", "factorized_macs", "quality_before_finetune", "train",
        "generated_rows", "candidates", "layers_factorized", "search")}
    return {"step": step["name"], "metrics": {k: step["metrics"].get(k) for k in keep}, "info": info}


def minilm_section(args, folder: Path, progress) -> dict[str, Any]:
    from slimkit.recipes.runner import run_recipe

    before = {}
    for method in ("plain", "asvd", "whiten"):
        progress(f"minilm: {method} SVD, no fine-tune")
        recipe = minilm_recipe(args, method)
        recipe["steps"] = recipe["steps"][:1]
        recipe["measure"]["repeats"] = 3
        base, step = run_recipe(recipe, folder / f"before-{method}").results["steps"]
        before[method] = _step_row(step)
    runs = {}
    for label in ["whiten", *args.minilm_controls]:
        method, hidden, deploy = MINILM_ARMS[label]
        progress(f"minilm: {method} SVD, fine-tuned{'' if hidden else ' on embeddings only'}"
                 f"{', ONNX Runtime' if deploy else ''}")
        recipe = minilm_recipe(args, method, hidden)
        if not deploy:
            recipe["steps"] = recipe["steps"][:2]  # a control: the fine-tune only
        steps = [_step_row(s) for s in run_recipe(recipe, folder / f"tuned-{label}").results["steps"]]
        runs[label] = {"method": method, "hidden": "features" in recipe["steps"][1]["distill"]["losses"],
                       "steps": steps}
    return {"before": before, "runs": runs, "recipe": minilm_recipe(args), "embedding_params": embedding_params()}


def render_minilm(res: dict[str, Any], command: str, stamp: str) -> str:
    base = res["runs"]["whiten"]["steps"][0]["metrics"]

    def encoder_params(params: int) -> int:
        return params - res["embedding_params"]

    lines = ["# Low-rank MiniLM: the 12 FFN Linears factorized", "", f"Command: `{command}`; {stamp}.", "",
             "Each FFN Linear (384 ↔ 1536) becomes two Linears through rank r keeping "
             f"{res['recipe']['steps'][0]['factorize']['ratio']:.0%} of its weights. Quality: mean "
             "cosine to the FP32 model's embeddings on the 1,000 held-out test sentences (and the overlap of each "
             "sentence's 10 nearest neighbours). Encoder params exclude the "
             f"{res['embedding_params']:,} parameters of the embedding tables.", "",
             "| factorization | fine-tune | cosine | top-10 overlap | params | encoder params | MACs | eager b1 ms "
             "| eager b32 ms |", "|---|---|---|---|---|---|---|---|---|"]

    def line(name: str, tune: str, m: dict[str, Any]) -> str:
        b1, bn = m.get("latency_b1") or {}, m.get("latency_bN") or {}
        knn = (m.get("quality_metrics") or {}).get("knn10_overlap")
        return (f"| {name} | {tune} | {m['quality']:.4f} | {'—' if knn is None else f'{knn:.3f}'} | {m['params']:,} | "
                f"{encoder_params(m['params']):,} ({1 - encoder_params(m['params']) / encoder_params(base['params']):.1%}"
                f" fewer) | {m['macs']:,} | {b1.get('median_ms', float('nan')):.2f} | "
                f"{bn.get('median_ms', float('nan')):.2f} |")

    lines.append(line("none (FP32)", "—", base).replace(" (0.0% fewer)", ""))
    names = {"plain": "plain SVD", "asvd": "ASVD (activation-scaled)", "whiten": "SVD-LLM (whitened)"}
    for method, row in res["before"].items():
        lines.append(line(names[method], "none", row["metrics"]))
    notes = []
    for label, run in res["runs"].items():
        steps, name = run["steps"], names[run["method"]]
        tuned = next(s for s in steps if s["step"] == "distill")
        terms = "embeddings + hidden states" if run["hidden"] else "embeddings only"
        n = tuned["info"]["train"]["epochs"]
        lines.append(line(name, f"{n} epoch{'' if n == 1 else 's'}, {terms}", tuned["metrics"]))
        t = tuned["info"]["train"]
        curve = ", ".join(f"{v:.4f}" for v in t.get("val_history", []))
        notes.append(f"{name}, {terms}: fine-tuned on the corpus + {tuned['info'].get('generated_rows')} spliced "
                     f"sentences, best epoch {t['best_epoch']} (validation cosine by epoch: {curve}).")
        deploy = next((s for s in steps if s["step"] == "deploy"), None)
        for c in (deploy or {"info": {}})["info"].get("candidates") or []:
            if c.get("paired_b1_ms") is not None:
                notes.append(f"{name}, fine-tuned: ONNX Runtime, paired with the FP32 model in one process: "
                             f"b1 {c['versus_b1_ms']:.3f} → {c['paired_b1_ms']:.3f} ms "
                             f"({c['speedup_vs_versus_b1']:.2f}× faster), b32 {c['versus_bN_ms']:.3f} → "
                             f"{c['paired_bN_ms']:.3f} ms ({c['speedup_vs_versus_bN']:.2f}×); max relative "
                             f"difference from eager {c.get('max_rel_diff', 0):.1e}.")
    ffn = res["runs"]["whiten"]["steps"][1]["info"]
    notes.append(f"FFN weights {ffn['weights']:,} → {ffn['factorized_weights']:,}; FFN MACs per sentence of 64 "
                 f"tokens {ffn['macs']:,} → {ffn['factorized_macs']:,}.")
    lines += ["", *notes, "", "Recipe (the whitened run):", "", "```json", json.dumps(res["recipe"], indent=1), "```", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ conv
def conv_section(args, folder: Path, progress) -> dict[str, Any]:
    from slimkit.recipes.runner import run_recipe

    seeds = []
    for seed in args.seeds:
        row: dict[str, Any] = {"seed": seed}
        baseline = None
        for conv in ("tucker2", "cp"):
            progress(f"conv: digits-cnn seed {seed}: {conv}")
            recipe = conv_recipe(args, seed, conv)
            if baseline is not None:
                recipe["baseline"] = {"weights": baseline}
            run_dir = folder / f"{conv}-{seed}"
            base, step, deployed = run_recipe(recipe, run_dir).results["steps"]
            baseline = baseline or str(run_dir / base["artifact"])
            row["baseline"] = _step_row(base)
            row[conv] = {**_step_row(step), "candidates": deployed["info"]["candidates"],
                         "chosen": deployed["info"]["backend"]}
        seeds.append(row)
    scale = {}
    for conv in ("tucker2", "cp"):  # timing only: the same factorization of a larger CNN, untrained
        progress(f"conv: shapes-cnn (untrained, timing only): {conv}")
        recipe = conv_recipe(args, 0, conv)
        recipe["task"] = {"name": "shapes-cnn", "model": "cnn_shapes", "model_args": {"width": 32}}
        recipe["baseline"] = {"train": {"epochs": 0}}
        recipe["steps"][0]["factorize"]["finetune"]["epochs"] = 0
        base, step, deployed = run_recipe(recipe, folder / f"scale-{conv}").results["steps"]
        scale[conv] = {**_step_row(step), "baseline": _step_row(base), "candidates": deployed["info"]["candidates"]}
    return {"seeds": seeds, "scale": scale, "recipe": conv_recipe(args, 0, "tucker2")}


def conv_recipe(args, seed: int, conv: str) -> dict[str, Any]:
    recipe = shipped("digits-cnn-lowrank.yaml")
    recipe["seed"] = seed
    recipe["measure"]["threads"] = args.threads
    recipe["steps"][0]["factorize"].update(conv=conv, ratio=args.conv_ratio)
    recipe["steps"][0]["factorize"]["finetune"]["epochs"] = args.conv_epochs
    return recipe


def render_conv(res: dict[str, Any], command: str, stamp: str) -> str:
    seeds = res["seeds"]
    lines = ["# Low-rank convolutions: Tucker-2 and CP on digits-cnn", "", f"Command: `{command}`; {stamp}.", "",
             f"Seeds {', '.join(str(s['seed']) for s in seeds)}; `digits-cnn` (16-32-pool-64-pool on 8×8 digits), "
             "both 3x3 convolutions after the stem factorized to the same kept-weight ratio, then fine-tuned; both "
             "factorizations start from the same baseline per seed. Accuracy: test split, mean ± std; MACs per image.",
             "", "| model | accuracy before fine-tune | accuracy | vs baseline, paired | params | MACs | MACs of the "
             "factorized layers | × fewer there |", "|---|---|---|---|---|---|---|---|"]
    base_q = [s["baseline"]["metrics"]["quality"] for s in seeds]
    b = seeds[0]["baseline"]["metrics"]
    lines.append(f"| baseline | — | {_mean_std(base_q)} | — | {b['params']:,} | {b['macs']:,} | "
                 f"{seeds[0]['tucker2']['info']['macs']:,} | 1.00 |")
    for conv, name in (("tucker2", "Tucker-2"), ("cp", "CP")):
        q = [s[conv]["metrics"]["quality"] for s in seeds]
        pre = [s[conv]["info"]["quality_before_finetune"] for s in seeds]
        info, m = seeds[0][conv]["info"], seeds[0][conv]["metrics"]
        diff = statistics.fmean(a - c for a, c in zip(q, base_q))
        lines.append(f"| {name} | {_mean_std(pre)} (validation) | {_mean_std(q)} | {100 * diff:+.2f} pt | "
                     f"{m['params']:,} | {m['macs']:,} | {info['factorized_macs']:,} | "
                     f"{info['macs'] / info['factorized_macs']:.2f} |")
    lines += ["", "Latency, seed by seed: each runtime timed on the factorized model and, interleaved in the same "
              "process, on the baseline (ABBA rounds); speed-up = baseline ms / factorized ms; medians.", "",
              "| seed | model | runtime | b1 ms baseline → factorized | b1 speed-up | b64 ms baseline → factorized | "
              "b64 speed-up |", "|---|---|---|---|---|---|---|"]
    for s in seeds:
        for conv, name in (("tucker2", "Tucker-2"), ("cp", "CP")):
            for c in s[conv]["candidates"]:
                if c.get("paired_b1_ms") is None:
                    continue
                lines.append(f"| {s['seed']} | {name} | {c['backend']} | {c['versus_b1_ms']:.3f} → "
                             f"{c['paired_b1_ms']:.3f} | {c['speedup_vs_versus_b1']:.2f}× | {c['versus_bN_ms']:.3f} → "
                             f"{c['paired_bN_ms']:.3f} | {c['speedup_vs_versus_bN']:.2f}× |")
    lines += ["", "Timing only, at a larger size: `shapes-cnn`'s plain CNN (cnn_shapes, width 32: 32-64-128 channels on "
              "32×32 RGB), untrained, the same factorization (no fine-tune; accuracy is not the point here).", "",
              "| model | MACs | MACs of the factorized layers | runtime | b1 ms baseline → factorized | b1 speed-up | "
              "b64 ms baseline → factorized | b64 speed-up |", "|---|---|---|---|---|---|---|---|"]
    for conv, name in (("tucker2", "Tucker-2"), ("cp", "CP")):
        r = res["scale"][conv]
        for c in r["candidates"]:
            if c.get("paired_b1_ms") is None:
                continue
            lines.append(f"| {name} | {r['baseline']['metrics']['macs']:,} → {r['metrics']['macs']:,} | "
                         f"{r['info']['macs']:,} → {r['info']['factorized_macs']:,} | {c['backend']} | "
                         f"{c['versus_b1_ms']:.3f} → {c['paired_b1_ms']:.3f} | {c['speedup_vs_versus_b1']:.2f}× | "
                         f"{c['versus_bN_ms']:.3f} → {c['paired_bN_ms']:.3f} | {c['speedup_vs_versus_bN']:.2f}× |")
    lines += ["", "Recipe (Tucker-2; the CP run sets `conv: cp`):", "", "```json", json.dumps(res["recipe"], indent=1),
              "```", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ lora
def lora_section(args, folder: Path, progress) -> dict[str, Any]:
    """An under-trained digits-mlp (1 epoch), then the same epochs of LoRA (merged) or of full
    fine-tuning, from the same weights per seed."""
    from slimkit.recipes.runner import run_recipe

    measure = {"batch_n": 64, "repeats": 3, "warmup": 1, "threads": args.threads, "memory": False}
    arms = {f"LoRA rank {args.lora_rank}, merged": {"lora": {"rank": args.lora_rank, "alpha": 2 * args.lora_rank,
                                                              "finetune": {"epochs": args.lora_epochs, "lr": 1e-2}}},
            "full fine-tune, lr 1e-3": {"train": {"epochs": args.lora_epochs, "lr": 1e-3}},
            "full fine-tune, lr 1e-2": {"train": {"epochs": args.lora_epochs, "lr": 1e-2}}}
    rows: dict[str, dict[str, list[Any]]] = {}
    for seed in args.seeds:
        baseline = None
        for i, (name, step) in enumerate(arms.items()):
            progress(f"lora: seed {seed}: {name}")
            recipe = {"task": "digits-mlp", "seed": seed, "measure": measure, "steps": [step],
                      "baseline": {"train": {"epochs": 1}} if baseline is None else {"weights": baseline}}
            run_dir = folder / f"{seed}-{i}"
            base, done = run_recipe(recipe, run_dir).results["steps"]
            if baseline is None:
                baseline = str(run_dir / base["artifact"])
                row = rows.setdefault("baseline (1 epoch)", {"quality": [], "trainable": []})
                row["quality"].append(base["metrics"]["quality"])
                row["trainable"].append(base["metrics"]["params"])
            row = rows.setdefault(name, {"quality": [], "trainable": [], "merge_diff": []})
            row["quality"].append(done["metrics"]["quality"])
            row["trainable"].append(done["info"].get("trainable_params", done["metrics"]["params"]))
            if "merge_max_abs_diff" in done["info"]:
                row["merge_diff"].append(done["info"]["merge_max_abs_diff"])
    return {"rows": rows, "seeds": args.seeds, "epochs": args.lora_epochs, "arms": arms}


def render_lora(res: dict[str, Any], command: str, stamp: str) -> str:
    lines = ["# LoRA against full fine-tuning: digits-mlp", "", f"Command: `{command}`; {stamp}.", "",
             f"Seeds {', '.join(map(str, res['seeds']))}; a digits-mlp trained 1 epoch, then {res['epochs']} epochs of "
             "each arm from the same weights. Test accuracy mean ± std; trainable = parameters the arm updates.", "",
             "| arm | trainable params | test accuracy | largest merged − adapted output difference |",
             "|---|---|---|---|"]
    for name, r in res["rows"].items():
        diff = f"{max(r['merge_diff']):.1e}" if r.get("merge_diff") else "—"
        lines.append(f"| {name} | {statistics.median(r['trainable']):,.0f} | {_mean_std(r['quality'])} | {diff} |")
    lines += ["", "Steps:", "", "```json", json.dumps(res["arms"], indent=1), "```", ""]
    return "\n".join(lines)


SECTIONS = {
    "deep_compression": lambda a: f"--seeds {' '.join(map(str, a.seeds))}",
    "sharing": lambda a: f"--seeds {' '.join(map(str, a.seeds))} --sharing-epochs {a.sharing_epochs}",
    "hashednets": lambda a: f"--seeds {' '.join(map(str, a.seeds))} --compression {a.compression} "
                            f"--hash-epochs {a.hash_epochs}",
    "minilm": lambda a: f"--minilm-ratio {a.minilm_ratio} --minilm-epochs {a.minilm_epochs} --minilm-lr {a.minilm_lr} "
                        f"--minilm-generated {a.minilm_generated} --minilm-hidden-weight {a.minilm_hidden_weight} "
                        f"--repeats {a.repeats}"
                        f"{' --minilm-controls ' + ' '.join(a.minilm_controls) if a.minilm_controls else ''}",
    "lora": lambda a: f"--seeds {' '.join(map(str, a.seeds))} --lora-rank {a.lora_rank} --lora-epochs {a.lora_epochs}",
    "conv": lambda a: f"--seeds {' '.join(map(str, a.seeds))} --conv-ratio {a.conv_ratio} --conv-epochs {a.conv_epochs}",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--sharing-epochs", type=int, default=2)
    parser.add_argument("--compression", type=float, default=0.125, help="hashednets: stored / virtual weights")
    parser.add_argument("--hash-epochs", type=int, default=20, help="hashednets: training epochs")
    parser.add_argument("--minilm-ratio", type=float, default=0.54, help="minilm: FFN weights kept")
    parser.add_argument("--minilm-epochs", type=int, default=8, help="minilm: fine-tuning epochs")
    parser.add_argument("--minilm-lr", type=float, default=2e-4, help="minilm: fine-tuning learning rate")
    parser.add_argument("--minilm-generated", type=int, default=8000, help="minilm: spliced sentences")
    parser.add_argument("--minilm-hidden-weight", type=float, default=1.0,
                        help="minilm: weight of the hidden-state term (0: embeddings only)")
    parser.add_argument("--minilm-controls", nargs="*", default=[], choices=[a for a in MINILM_ARMS if a != "whiten"],
                        help="minilm: control fine-tunes, ~25 minutes each: the same without the hidden-state term "
                             "(embedding-only), or of the plain-SVD model (plain)")
    parser.add_argument("--repeats", type=int, default=30, help="minilm: latency repeats")
    parser.add_argument("--conv-ratio", type=float, default=0.4, help="conv: weights kept per factorized layer")
    parser.add_argument("--conv-epochs", type=int, default=8, help="conv: fine-tuning epochs")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("slimkit").setLevel(logging.WARNING)
    run_section_loop("sharing_lowrank.py", "sharing_lowrank", args, SECTIONS, globals())


if __name__ == "__main__":
    main()
