"""Sparse training from the start, measured against dense training and against its controls.

    .venv/bin/python benchmarks/sparse_bayes.py [--sections lottery dst svd l0 bc] [--seeds 0 1 2] [--threads 2]

- lottery: `mnist-mlp` (LeNet-300-100 on the 5,000 MNIST digits). The dense baseline; the lottery
  ticket at `--sparsity` found by `--rounds` rounds of iterative magnitude pruning, rewound to the
  baseline's initial weights each round (the `lottery` step); its two controls from the same
  pruning rounds: the ticket's mask from a fresh random initialisation (`control: reinit`) and a
  random mask of the ticket's per-layer sparsity from the initial weights (`control: random_mask`).
- dst: the same task and sparsity, trained sparse from the initial weights for the baseline's
  epochs: RigL (ERK layer densities), static sparse training (a fixed random mask, ERK), SNIP; RigL
  and static again at `--longer` multiples of those epochs (Evci et al. report RigL at 2x and 5x).
- svd: `mnist-lenet5` (Caffe LeNet-5): sparse variational dropout from the trained baseline, and
  global magnitude pruning (cubic schedule, same epochs) at the sparsity it reached.
- bc: `mnist-lenet5` with Bayesian compression: accuracy, the checkpoint's and the entropy-coded
  archive's bytes against the dense FP32 checkpoint, bits per layer and the architecture left.
- l0: `digits-cnn` with L0 channel gates: MACs, parameters and the runner's eager latency of the
  smaller dense model against the baseline's in the same run.
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


def _run(task: str, seed: int, steps: list[dict[str, Any]], folder: Path, repeats: int = 3) -> dict[str, Any]:
    from slimkit.recipes.runner import run_recipe

    recipe = {"version": 1, "task": task, "seed": seed,
              "measure": {"batch_n": 64, "repeats": repeats, "threads": 1, "memory": False}, "steps": steps}
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
    runs = [("rigl", 1), ("static", 1), ("snip", 1)] + [(m, k) for k in args.longer for m in ("rigl", "static")]
    for seed in args.seeds:
        for method, times in runs:
            train = {**ft, "epochs": ft["epochs"] * times}
            res = _run(args.task, seed, [{"sparse_train": {"method": method, "sparsity": args.sparsity,
                                                           "finetune": train}}], folder / f"{seed}-{method}-{times}")
            if (method, times) == ("rigl", 1):
                rows.append(_row(seed, "dense", res["steps"][0]))
            name = {"rigl": "RigL (ERK)", "static": "static random mask (ERK)", "snip": "SNIP"}[method]
            name += f", {times}x epochs" if times != 1 else ""
            rows.append(_row(seed, name, res["steps"][1]))
            progress(f"seed {seed} {name}: {rows[-1]['test_accuracy']:.4f}")
    return {"task": args.task, "sparsity": args.sparsity, "finetune": ft, "rows": rows, "longer": args.longer}


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
              f"- SNIP - dense: {100 * (m['SNIP'] - dense):+.2f} pt."]
    for k in res.get("longer", []):
        r, st = m.get(f"RigL (ERK), {k}x epochs"), m.get(f"static random mask (ERK), {k}x epochs")
        if r is not None and st is not None:
            lines.append(f"- With {k}x the dense baseline's epochs (Evci et al.'s longer budgets): RigL - dense "
                         f"{100 * (r - dense):+.2f} pt, RigL - static {100 * (r - st):+.2f} pt.")
    lines.append("")
    return "\n".join(lines)


def svd_section(args, folder: Path, progress) -> dict[str, Any]:
    """Sparse variational dropout on LeNet-5 against global magnitude pruning (cubic schedule,
    the same epochs) at the sparsity variational dropout reached, per seed."""
    rows = []
    for seed in args.seeds:
        vd = {"variational_dropout": {"kl_weight": args.kl_weight, "finetune": {"epochs": args.svd_epochs,
                                                                                 "lr": 1e-3}}}
        res = _run(args.svd_task, seed, [vd], folder / f"{seed}-vd")
        rows.append(_row(seed, "dense", res["steps"][0]))
        rows.append(_row(seed, "sparse variational dropout", res["steps"][1]))
        reached = res["steps"][1]["info"]["sparsity"]
        progress(f"seed {seed} variational dropout: {rows[-1]['test_accuracy']:.4f} at sparsity {reached:.4f}")
        magnitude = {"prune": {"sparsity": min(reached, 0.9999), "schedule": "cubic",
                               "finetune": {"epochs": args.svd_epochs, "lr": 1e-3}}}
        res = _run(args.svd_task, seed, [magnitude], folder / f"{seed}-magnitude")
        rows.append(_row(seed, "magnitude pruning (global, cubic), same sparsity", res["steps"][1]))
        progress(f"seed {seed} magnitude: {rows[-1]['test_accuracy']:.4f}")
    return {"task": args.svd_task, "kl_weight": args.kl_weight, "epochs": args.svd_epochs, "rows": rows}


def render_svd(res: dict[str, Any], command: str, stamp: str) -> str:
    lines = ["# Sparse variational dropout against magnitude pruning", "", f"`{command}`; {stamp}.", "",
             f"Task `{res['task']}` (Caffe LeNet-5, 431,080 parameters). Variational dropout from the trained "
             f"baseline, {res['epochs']} epochs (Adam 1e-3, KL weight {res['kl_weight']} after a linear warm-up over "
             "30% of the steps, weights with log alpha > 3 removed). Magnitude pruning: the `prune` step at the "
             "sparsity variational dropout reached on that seed, global threshold, cubic schedule, the same epochs. "
             "Last epoch of each (keep_best off). Test accuracy; nonzero Linear/Conv weights; bytes of their bitmask "
             "+ values encoding.", ""]
    table, m = _table(res["rows"])
    lines += table + [""]
    rows = [r for r in res["rows"] if r["variant"] == "sparse variational dropout"]
    dense_n = 431080 - 20 - 50 - 500 - 10  # weights of the four layers (biases stay dense)
    ratios = [dense_n / r["nonzero_weights"] for r in rows if r.get("nonzero_weights")]
    vd, dense, mag = m["sparse variational dropout"], m["dense"], m["magnitude pruning (global, cubic), same sparsity"]
    lines += [f"- Fewer nonzero weights: {statistics.mean(ratios):.0f}x on average (bar: >= 50x) at "
              f"{100 * (vd - dense):+.2f} pt (bar: >= -1).",
              f"- Variational dropout - magnitude pruning at the same sparsity: {100 * (vd - mag):+.2f} pt.", ""]
    return "\n".join(lines)


def bc_section(args, folder: Path, progress) -> dict[str, Any]:
    """Bayesian compression on LeNet-5 from the trained baseline, per seed: the step's checkpoint
    (the file a restore loads) and its entropy-coded archive against the dense FP32 checkpoint."""
    rows = []
    for seed in args.seeds:
        step = {"bayesian_compression": {"kl_weight": args.bc_kl_weight,
                                         "finetune": {"epochs": args.bc_epochs, "lr": 1e-3}}}
        res = _run(args.bc_task, seed, [step], folder / f"{seed}-bc")
        dense, bc = res["steps"][0], res["steps"][1]
        info = bc["info"]
        rows.append({"seed": seed, "dense_accuracy": dense["metrics"]["quality"], "accuracy": bc["metrics"]["quality"],
                     "dense_file_bytes": dense["metrics"]["size_bytes"], "file_bytes": bc["metrics"]["size_bytes"],
                     "archive_bytes": info["entropy_coded"]["bytes"], "params_before": info["params_before"],
                     "params_after": info["params_after"], "macs_before": info["macs_before"],
                     "macs_after": info["macs_after"], "bits_per_layer": info["bits_per_layer"],
                     "shapes": {n: v["shape"] for n, v in info["layers"].items()},
                     "zero_share": {n: round(v["zero_share"], 3) for n, v in info["layers"].items()},
                     "channels_removed": info["channels_removed"]})
        progress(f"seed {seed} Bayesian compression: {rows[-1]['accuracy']:.4f} (dense {rows[-1]['dense_accuracy']:.4f}), "
                 f"file {rows[-1]['dense_file_bytes'] / rows[-1]['file_bytes']:.0f}x smaller")
    return {"task": args.bc_task, "kl_weight": args.bc_kl_weight, "epochs": args.bc_epochs, "rows": rows}


def render_bc(res: dict[str, Any], command: str, stamp: str) -> str:
    lines = ["# Bayesian compression: channels and bits from the posterior", "", f"`{command}`; {stamp}.", "",
             f"Task `{res['task']}` (Caffe LeNet-5, 431,080 parameters). The `bayesian_compression` step from the "
             f"trained baseline: {res['epochs']} epochs (Adam 1e-3; scales and log variances at 0.02), KL weight "
             f"{res['kl_weight']} after a linear warm-up over 30% of the steps; channels whose scale has log alpha > 0 "
             "removed physically; each layer's weights rounded to a grid through zero whose step is one geometric-mean "
             "posterior standard deviation, stored as packed codes + grid. Last epoch (keep_best off). Bytes are "
             "files: the step's safetensors checkpoint (what a restore loads) and the Huffman-coded archive of the "
             "same tensors (`model.huffman.safetensors`, decoded bit-exactly by `read_archive`), against the dense "
             "FP32 checkpoint.", "",
             "| seed | dense acc. | compressed acc. | drop (pt) | dense file B | checkpoint B | x fewer | archive B "
             "| x fewer | params | MACs | bits per layer | layer shapes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['seed']} | {r['dense_accuracy']:.4f} | {r['accuracy']:.4f} | "
                     f"{100 * (r['accuracy'] - r['dense_accuracy']):+.2f} | {r['dense_file_bytes']:,} | "
                     f"{r['file_bytes']:,} | {r['dense_file_bytes'] / r['file_bytes']:.0f} | {r['archive_bytes']:,} | "
                     f"{r['dense_file_bytes'] / r['archive_bytes']:.0f} | {r['params_before']:,} -> {r['params_after']:,} | "
                     f"{r['macs_before']:,} -> {r['macs_after']:,} | "
                     f"{', '.join(str(b) for b in r['bits_per_layer'].values())} | "
                     f"{'; '.join('x'.join(map(str, s)) for s in r['shapes'].values())} |")
    rows = res["rows"]
    drop = statistics.mean(100 * (r["accuracy"] - r["dense_accuracy"]) for r in rows)
    ratio = statistics.mean(r["dense_file_bytes"] / r["file_bytes"] for r in rows)
    archive = statistics.mean(r["dense_file_bytes"] / r["archive_bytes"] for r in rows)
    worst = min(100 * (r["accuracy"] - r["dense_accuracy"]) for r in rows)
    arch = statistics.mean(r["params_before"] / r["params_after"] for r in rows)
    lines += ["", f"- Checkpoint {ratio:.0f}x fewer bytes than FP32 on average (bar: >= 100x), entropy-coded archive "
                  f"{archive:.0f}x, at {drop:+.2f} pt mean, {worst:+.2f} pt worst seed (bar: >= -1).",
              f"- Of that, the smaller architecture gives {arch:.0f}x fewer parameters; the bits per layer the rest.", ""]
    return "\n".join(lines)


def l0_section(args, folder: Path, progress) -> dict[str, Any]:
    """L0 channel gates on a CNN: MACs and eager batch-1 latency of the smaller dense model against
    the baseline (same run, measured by the runner), per seed."""
    rows = []
    for seed in args.seeds:
        res = _run(args.l0_task, seed, [{"l0": {"penalty": args.l0_penalty, "finetune": {"epochs": args.l0_epochs}}}],
                   folder / f"{seed}-l0", repeats=args.repeats)
        for variant, step in (("dense", res["steps"][0]), ("L0 channel gates", res["steps"][1])):
            row = _row(seed, variant, step)
            row.update({"macs": step["metrics"]["macs"], "latency_ms_b1": step["metrics"]["latency_ms_b1"],
                        "latency_ms_bN": step["metrics"]["latency_ms_bN"], "params": step["metrics"]["params"],
                        "channels_removed": step.get("info", {}).get("channels_removed")})
            rows.append(row)
        progress(f"seed {seed} L0: {rows[-1]['test_accuracy']:.4f}, MACs {rows[-2]['macs']:,} -> {rows[-1]['macs']:,}")
    return {"task": args.l0_task, "penalty": args.l0_penalty, "epochs": args.l0_epochs, "rows": rows}


def render_l0(res: dict[str, Any], command: str, stamp: str) -> str:
    from slimkit.core.hardware import cpu_capability

    lines = ["# L0 channel gates: channels removed physically", "", f"`{command}`; {stamp}; {cpu_capability()}.", "",
             f"Task `{res['task']}`. The `l0` step (hard-concrete gates on every prunable channel group, cost in MACs, "
             f"penalty {res['penalty']}, {res['epochs']} epochs from the trained baseline), then the closed channels "
             "removed through torch-pruning's dependency graph. Latency: eager PyTorch, the runner's measurement of "
             "each step in the same run (median of the repeats).", "",
             "| seed | variant | accuracy | MACs | params | b1 ms | bN ms | channels removed |", "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['seed']} | {r['variant']} | {r['test_accuracy']:.4f} | {r['macs']:,} | {r['params']:,} | "
                     f"{r['latency_ms_b1']:.4f} | {r['latency_ms_bN']:.3f} | {r.get('channels_removed') or ''} |")
    dense = [r for r in res["rows"] if r["variant"] == "dense"]
    gated = [r for r in res["rows"] if r["variant"] != "dense"]
    lines += ["", f"- MACs: {statistics.mean(d['macs'] / g['macs'] for d, g in zip(dense, gated)):.2f}x fewer; "
              f"b1 latency {statistics.median(d['latency_ms_b1'] / g['latency_ms_b1'] for d, g in zip(dense, gated)):.2f}x, "
              f"bN {statistics.median(d['latency_ms_bN'] / g['latency_ms_bN'] for d, g in zip(dense, gated)):.2f}x "
              f"faster; accuracy {100 * (statistics.mean(g['test_accuracy'] for g in gated) - statistics.mean(d['test_accuracy'] for d in dense)):+.2f} pt.", ""]
    return "\n".join(lines)


SECTIONS = {
    "lottery": lambda a: f"--task {a.task} --seeds {' '.join(map(str, a.seeds))} --sparsity {a.sparsity} --rounds {a.rounds}",
    "dst": lambda a: f"--task {a.task} --seeds {' '.join(map(str, a.seeds))} --sparsity {a.sparsity}"
                     + (f" --longer {' '.join(map(str, a.longer))}" if a.longer else ""),
    "svd": lambda a: f"--svd-task {a.svd_task} --seeds {' '.join(map(str, a.seeds))} --kl-weight {a.kl_weight} "
                     f"--svd-epochs {a.svd_epochs}",
    "l0": lambda a: f"--l0-task {a.l0_task} --seeds {' '.join(map(str, a.seeds))} --l0-penalty {a.l0_penalty} "
                    f"--l0-epochs {a.l0_epochs} --repeats {a.repeats}",
    "bc": lambda a: f"--bc-task {a.bc_task} --seeds {' '.join(map(str, a.seeds))} --bc-kl-weight {a.bc_kl_weight} "
                    f"--bc-epochs {a.bc_epochs}",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--task", default="mnist-mlp")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--longer", nargs="*", type=int, default=[2, 5], help="dst: RigL and static also at these "
                                                                               "multiples of the baseline's epochs")
    parser.add_argument("--svd-task", default="mnist-lenet5")
    parser.add_argument("--kl-weight", type=float, default=0.2)
    parser.add_argument("--svd-epochs", type=int, default=20)
    parser.add_argument("--l0-task", default="digits-cnn")
    parser.add_argument("--l0-penalty", type=float, default=3.0)
    parser.add_argument("--l0-epochs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=100, help="l0: latency repeats of the runner's measurement")
    parser.add_argument("--bc-task", default="mnist-lenet5")
    parser.add_argument("--bc-kl-weight", type=float, default=0.1)
    parser.add_argument("--bc-epochs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_section_loop("sparse_bayes.py", "sparse_bayes", args, SECTIONS, globals())


if __name__ == "__main__":
    main()
