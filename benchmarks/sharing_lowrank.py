"""Weight sharing and low-rank factorization, one command (issue 8; the low-rank sections land
with their techniques).

    .venv/bin/python benchmarks/sharing_lowrank.py [--sections deep_compression sharing hashednets] [--threads 2]

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

Each section writes OUT/sharing_lowrank_SECTION.md and .json with the command that reproduces it.
"""

from __future__ import annotations

import argparse
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
                              "steps": [{"cluster": {"clusters": 16, "init": init, "epochs": epochs, "lr": 1e-4}}]}
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
                  "steps": [{"hash": {"compression": args.compression, "init": "random", "epochs": epochs}}]}
        base, scratch = run_recipe(recipe, folder / f"h{seed}").results["steps"]
        recipe["steps"] = [{"hash": {"compression": args.compression, "init": "project", "epochs": epochs // 2,
                                     "lr": 5e-4}}]
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
            row["params"].append(step["metrics"]["params"])
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


SECTIONS = {
    "deep_compression": lambda a: f"--seeds {' '.join(map(str, a.seeds))}",
    "sharing": lambda a: f"--seeds {' '.join(map(str, a.seeds))} --sharing-epochs {a.sharing_epochs}",
    "hashednets": lambda a: f"--seeds {' '.join(map(str, a.seeds))} --compression {a.compression} "
                            f"--hash-epochs {a.hash_epochs}",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--sharing-epochs", type=int, default=2)
    parser.add_argument("--compression", type=float, default=0.125, help="hashednets: stored / virtual weights")
    parser.add_argument("--hash-epochs", type=int, default=20, help="hashednets: training epochs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("slimkit").setLevel(logging.WARNING)
    run_section_loop("sharing_lowrank.py", "sharing_lowrank", args, SECTIONS, globals())


if __name__ == "__main__":
    main()
