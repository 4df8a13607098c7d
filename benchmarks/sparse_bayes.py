"""Sparse training from the start, measured against dense training and against its controls.

    .venv/bin/python benchmarks/sparse_bayes.py [--sections lottery dst] [--seeds 0 1 2] [--threads 2]

- lottery: `mnist-mlp` (LeNet-300-100 on the 5,000 MNIST digits). The dense baseline; the lottery
  ticket at `--sparsity` found by `--rounds` rounds of iterative magnitude pruning, rewound to the
  baseline's initial weights each round (the `lottery` step); its two controls from the same
  pruning rounds: the ticket's mask from a fresh random initialisation (`control: reinit`) and a
  random mask of the ticket's per-layer sparsity from the initial weights (`control: random_mask`).
- dst: the same task and sparsity, trained sparse from the initial weights for the baseline's
  epochs: RigL (ERK layer densities), static sparse training (a fixed random mask, ERK), SNIP.
Every variant is a recipe (`slimkit.recipes.runner.run_recipe`) with the task's baseline training
settings for each training run; test accuracy of the step's model, nonzero weights and the bytes
of its bitmask + values encoding. Writes OUT/sparse_bayes_SECTION.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import run_section_loop  # noqa: E402


def _run(task: str, seed: int, steps: list[dict[str, Any]], folder: Path) -> dict[str, Any]:
    from slimkit.recipes.runner import run_recipe

    recipe = {"version": 1, "task": task, "seed": seed,
              "measure": {"batch_n": 64, "repeats": 3, "threads": 1, "memory": False}, "steps": steps}
    run_recipe(recipe, folder)
    return json.loads((folder / "results.json").read_text())


def _finetune(task: str) -> dict[str, Any]:
    """The task's baseline training settings, for every training run of a variant."""
    from slimkit.tasks import build_task

    base = build_task(task).baseline_train
    return {"epochs": base.epochs, "batch_size": base.batch_size, "lr": base.lr}


def _row(seed: int, variant: str, step: dict[str, Any]) -> dict[str, Any]:
    info = step.get("info", {})
    return {"seed": seed, "variant": variant, "test_accuracy": step["metrics"]["quality"],
            "sparsity": info.get("sparsity"), "nonzero_weights": info.get("nonzero_weights"),
            "encoded_bytes": info.get("encoded_bytes"), "dense_bytes": info.get("dense_bytes"),
            "file_bytes": step["metrics"].get("size_bytes"), "info": {k: info.get(k) for k in
                                                                      ("rounds", "mask_updates", "weights_regrown")}}


def lottery_section(args, folder: Path, progress) -> dict[str, Any]:
    ft = _finetune(args.task)
    rows = []
    for seed in args.seeds:
        for control in ("none", "reinit", "random_mask"):
            res = _run(args.task, seed, [{"lottery": {"sparsity": args.sparsity, "rounds": args.rounds,
                                                       "control": control, "finetune": ft}}],
                       folder / f"{seed}-{control}")
            if control == "none":
                rows.append(_row(seed, "dense", res["steps"][0]))
            name = {"none": "lottery ticket", "reinit": "ticket mask, random re-init",
                    "random_mask": "random mask, initial weights"}[control]
            rows.append(_row(seed, name, res["steps"][1]))
            progress(f"seed {seed} {name}: {rows[-1]['test_accuracy']:.4f}")
    return {"task": args.task, "sparsity": args.sparsity, "rounds": args.rounds, "finetune": ft, "rows": rows}


def dst_section(args, folder: Path, progress) -> dict[str, Any]:
    ft = _finetune(args.task)
    rows = []
    for seed in args.seeds:
        for method in ("rigl", "static", "snip"):
            res = _run(args.task, seed, [{"sparse_train": {"method": method, "sparsity": args.sparsity,
                                                           "finetune": ft}}], folder / f"{seed}-{method}")
            if method == "rigl":
                rows.append(_row(seed, "dense", res["steps"][0]))
            name = {"rigl": "RigL (ERK)", "static": "static random mask (ERK)", "snip": "SNIP"}[method]
            rows.append(_row(seed, name, res["steps"][1]))
            progress(f"seed {seed} {name}: {rows[-1]['test_accuracy']:.4f}")
    return {"task": args.task, "sparsity": args.sparsity, "finetune": ft, "rows": rows}


def _table(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, float]]:
    seeds = sorted({r["seed"] for r in rows})
    names = list(dict.fromkeys(r["variant"] for r in rows))
    by = {(r["seed"], r["variant"]): r for r in rows}
    lines = ["| variant | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | nonzero weights | encoded bytes |",
             "|---|" + "---|" * (len(seeds) + 3)]
    means = {}
    for n in names:
        vals = [by[(s, n)]["test_accuracy"] for s in seeds]
        means[n] = statistics.mean(vals)
        first = by[(seeds[0], n)]
        nnz = f"{first['nonzero_weights']:,}" if first.get("nonzero_weights") is not None else "all"
        enc = f"{first['encoded_bytes']:,} ({first['encoded_bytes'] / first['dense_bytes']:.3f}x)" \
            if first.get("encoded_bytes") else f"{first.get('file_bytes') or 0:,} (file)"
        lines.append(f"| {n} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {means[n]:.4f} | {nnz} | {enc} |")
    return lines, means


def _header(title: str, res: dict[str, Any], command: str, stamp: str, what: str) -> list[str]:
    return [f"# {title}", "", f"`{command}`; {stamp}.", "",
            f"Task `{res['task']}`; sparsity {res['sparsity']} of the Linear/Conv weights. {what} Every training run: "
            f"`{res['finetune']}` (the task's baseline settings; best validation epoch). Test accuracy; nonzero "
            "weights of the pruned layers; bytes of their bitmask + values encoding against dense fp32.", ""]


def render_lottery(res: dict[str, Any], command: str, stamp: str) -> str:
    lines = _header("Lottery tickets and their controls", res, command, stamp,
                    f"Iterative magnitude pruning, {res['rounds']} rounds, global threshold, rewound to the baseline's "
                    "initial weights each round.")
    table, m = _table(res["rows"])
    lines += table + [""]
    ticket, dense = m["lottery ticket"], m["dense"]
    reinit, rmask = m["ticket mask, random re-init"], m["random mask, initial weights"]
    lines += [f"- Ticket - dense: {100 * (ticket - dense):+.2f} pt (bar: >= -0.5).",
              f"- Ticket - random re-init: {100 * (ticket - reinit):+.2f} pt (bar: >= +1).",
              f"- Ticket - random mask: {100 * (ticket - rmask):+.2f} pt (bar: >= +1).", ""]
    return "\n".join(lines)


def render_dst(res: dict[str, Any], command: str, stamp: str) -> str:
    lines = _header("Dynamic sparse training (RigL) against static sparse training and SNIP", res, command, stamp,
                    "Trained sparse from the baseline's initial weights for as many epochs as the dense baseline.")
    table, m = _table(res["rows"])
    lines += table + [""]
    rigl, static, dense = m["RigL (ERK)"], m["static random mask (ERK)"], m["dense"]
    lines += [f"- RigL - static: {100 * (rigl - static):+.2f} pt (bar: >= +1).",
              f"- RigL - dense: {100 * (rigl - dense):+.2f} pt (bar: >= -1).",
              f"- SNIP - dense: {100 * (m['SNIP'] - dense):+.2f} pt.", ""]
    return "\n".join(lines)


SECTIONS = {
    "lottery": lambda a: f"--task {a.task} --seeds {' '.join(map(str, a.seeds))} --sparsity {a.sparsity} --rounds {a.rounds}",
    "dst": lambda a: f"--task {a.task} --seeds {' '.join(map(str, a.seeds))} --sparsity {a.sparsity}",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--task", default="mnist-mlp")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_section_loop("sparse_bayes.py", "sparse_bayes", args, SECTIONS, globals())


if __name__ == "__main__":
    main()
