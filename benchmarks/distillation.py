"""Knowledge distillation, one command: where a teacher helps a student, against the same student
trained the same way without it.

    .venv/bin/python benchmarks/distillation.py [--sections fewlabels lenet5 minilm] [--threads 2]

Every row is the `distill` recipe step; the control is the same step with the soft-target weight
set to 0 (same student, initialisation, data order, epochs and learning rate: only the teacher's
signal differs), so differences are paired by seed. Each section writes OUT/distillation_SECTION.md
and .json with the command that reproduces it.

- fewlabels: `mnist-lenet5` with `labels_per_class` labelled training rows (a different draw per
  seed); the teacher is LeNet-5 trained on those rows, the student a one-hidden-layer MLP. Rows:
  the student alone; with soft targets on the labelled rows; on those and mixup'ed ones; with
  the teacher's hard labels on the other (unlabelled) training inputs (no soft targets); with
  soft targets on them; plus mixup inputs. The last epoch counts (no labelled validation set
  picks one).
- lenet5: all 4,000 labels; LeNet-5 teacher -> LeNet-5 at LeCun's 1998 widths (6, 16, 120: 12x
  fewer parameters) alone, with soft targets, with soft targets on mixup inputs too; and a student
  cut from the teacher (channels pruned to `--derive-width`, teacher weights kept) distilled.
- minilm: all-MiniLM-L6-v2 -> 3 layers (1, 3, 5 dropped; the teacher's weights kept): cosine to
  the teacher before distilling (for several choices of kept layers), after distilling with the
  embedding term on the corpus's training split, with spliced sentences added, and with the
  hidden-state term too (the shipped recipe); that one exported to ONNX Runtime and timed against
  the teacher in one process (paired b1 and b32).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import run_section_loop, shipped  # noqa: E402


def run(folder: Path, task: Any, seed: int, baseline: dict[str, Any], steps: list[dict[str, Any]],
        threads: int, repeats: int = 5) -> tuple[list[dict[str, Any]], str]:
    """A recipe run: (its step results, the baseline checkpoint's path)."""
    from slimkit.recipes.runner import run_recipe

    recipe = {"task": task, "seed": seed, "baseline": baseline, "steps": steps,
              "measure": {"batch_n": 32, "repeats": repeats, "warmup": 2, "threads": threads, "memory": False}}
    results = run_recipe(recipe, folder).results["steps"]
    return results, str(folder / results[0]["artifact"])


def distill_step(student: Any, *, kd: float, temperature: float = 4.0, data: dict[str, Any] | None = None,
                 hard_weight: float = 1.0, **finetune: Any) -> dict[str, Any]:
    """kd = 0: the control (the soft-target term weighs nothing; hard labels only)."""
    return {"distill": {"student": student, "losses": {"logits": {"weight": kd, "temperature": temperature}},
                        "data": data or {}, "hard_weight": hard_weight, "finetune": finetune}}


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


# ------------------------------------------------------------------------------------- fewlabels
def fewlabels_conditions(args) -> dict[str, dict[str, Any]]:
    student = {"model": "mlp_digits", "model_args": {"in_features": 784, "hidden": [args.mlp_hidden]}}
    train = {"hard_weight": 1.0, "epochs": args.student_epochs, "lr": 2e-3, "batch_size": 32, "keep_best": False}
    unlabelled = {"unlabelled": True}
    generated = {"generate": {"method": "mixup", "count": args.generated, "alpha": 1.0}}
    mixup = {"unlabelled": True, **generated}
    return {
        "student alone (labelled rows)": distill_step(student, kd=0.0, **train),
        "KD (labelled rows)": distill_step(student, kd=1.0, **train),
        "KD + mixup of the labelled rows": distill_step(student, kd=1.0, data=generated, **train),
        "teacher's hard labels on unlabelled rows (no KD)": distill_step(student, kd=0.0, data=unlabelled, **train),
        "KD + unlabelled rows": distill_step(student, kd=1.0, data=unlabelled, **train),
        "KD + unlabelled + mixup rows": distill_step(student, kd=1.0, data=mixup, **train),
    }


def fewlabels_section(args, folder: Path, progress) -> dict[str, Any]:
    conditions = fewlabels_conditions(args)
    teacher = {"train": {"epochs": args.teacher_epochs, "batch_size": 32, "keep_best": False}}
    res = paired_students(folder, lambda seed: {"name": "mnist-lenet5", "labels_per_class": args.per_class,
                                                "labels_seed": seed},
                          args.seeds, "teacher (LeNet-5 on the labelled rows)", teacher, conditions, args.threads,
                          lambda text: progress(f"fewlabels {text}"))
    return {**res, "per_class": args.per_class}


def paired_students(folder: Path, task_for_seed: Callable[[int], Any], seeds: list[int], teacher_name: str,
                    teacher: dict[str, Any], conditions: dict[str, dict[str, Any]], threads: int,
                    progress) -> dict[str, Any]:
    """Per seed: the teacher trained once (the first run's baseline), then each condition's
    distill step from it; test accuracies per row, over seeds."""
    rows: dict[str, list[float]] = {teacher_name: [], **{k: [] for k in conditions}}
    params: dict[str, int] = {}
    for seed in seeds:
        baseline_weights = None
        for i, (name, step) in enumerate(conditions.items()):
            progress(f"seed {seed}: {name}")
            baseline = teacher if baseline_weights is None else {"weights": baseline_weights}
            steps, weights = run(folder / f"s{seed}-{i}", task_for_seed(seed), seed, baseline, [step], threads, 3)
            if baseline_weights is None:
                baseline_weights = weights
                rows[teacher_name].append(steps[0]["metrics"]["quality"])
                params[teacher_name] = steps[0]["metrics"]["params"]
            rows[name].append(steps[1]["metrics"]["quality"])
            params[name] = steps[1]["metrics"]["params"]
    return {"rows": {k: summary(v) for k, v in rows.items()}, "params": params, "seeds": list(seeds),
            "conditions": conditions}


def render_fewlabels(res: dict[str, Any], command: str, stamp: str) -> str:
    rows = res["rows"]
    teacher_name, alone_name = list(rows)[:2]
    teacher, alone = rows[teacher_name]["values"], rows[alone_name]["values"]
    lines = [f"# Distillation with few labels: `mnist-lenet5`, {res['per_class']} labels per class", "",
             f"Command: `{command}`; {stamp}.", "",
             f"{res['per_class'] * 10} labelled training rows per seed (a different draw for each of seeds "
             f"{', '.join(map(str, res['seeds']))}); the other training inputs are unlabelled. The teacher is LeNet-5 "
             "trained on the labelled rows; the student a one-hidden-layer MLP. Every student row is one `distill` "
             "step from the same initialisation with the same data order; the control sets the soft-target weight "
             "to 0. Test accuracy on the 500 test images, last epoch; paired differences are per seed. Gap closed = "
             "(row − student alone) / (teacher − student alone).", "",
             "| | params | test accuracy, mean ± std | vs student alone, paired mean ± std | gap closed |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        if name in (teacher_name, alone_name):
            lines.append(f"| {name} | {res['params'][name]:,} | {r['mean']:.4f} ± {r['std']:.4f} | — | — |")
            continue
        diff = [a - b for a, b in zip(r["values"], alone)]
        gap = statistics.fmean(teacher) - statistics.fmean(alone)
        closed = f"{(r['mean'] - statistics.fmean(alone)) / gap:.0%}" if gap > 0 else "—"
        lines.append(f"| {name} | {res['params'][name]:,} | {r['mean']:.4f} ± {r['std']:.4f} | "
                     f"{100 * statistics.fmean(diff):+.2f} ± {100 * (statistics.stdev(diff) if len(diff) > 1 else 0):.2f}"
                     f" pt | {closed} |")
    lines += ["", "Per seed (teacher; student alone):",
              ", ".join(f"{t:.3f}; {a:.3f}" for t, a in zip(teacher, alone)), "",
              "Steps:", "", "```json", json.dumps(res["conditions"], indent=1), "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- lenet5
def lenet5_conditions(args) -> dict[str, dict[str, Any]]:
    small = {"model": "lenet5", "model_args": {"widths": [6, 16, 120]}}
    train = {"hard_weight": 1.0, "epochs": args.student_epochs, "lr": 2e-3, "batch_size": 64}
    mixup = {"generate": {"method": "mixup", "count": args.generated, "alpha": 1.0}}
    derived = {"derive": {"width": args.derive_width, "criterion": "l1"}}
    return {
        "LeNet-5 (6, 16, 120) alone": distill_step(small, kd=0.0, **train),
        "LeNet-5 (6, 16, 120) KD": distill_step(small, kd=1.0, **train),
        "LeNet-5 (6, 16, 120) KD + mixup rows": distill_step(small, kd=1.0, data=mixup, **train),
        f"cut from the teacher (width {args.derive_width}) KD + mixup rows": distill_step(derived, kd=1.0, data=mixup,
                                                                                       **train),
    }


def lenet5_section(args, folder: Path, progress) -> dict[str, Any]:
    return paired_students(folder, lambda seed: "mnist-lenet5", args.seeds[:args.lenet5_seeds], "teacher (LeNet-5)",
                           {}, lenet5_conditions(args), args.threads, lambda text: progress(f"lenet5 {text}"))


def render_lenet5(res: dict[str, Any], command: str, stamp: str) -> str:
    rows = res["rows"]
    teacher_name, alone_name = list(rows)[:2]
    teacher, alone = rows[teacher_name], rows[alone_name]["values"]
    lines = ["# Distillation: `mnist-lenet5` teacher -> a 10x smaller student", "", f"Command: `{command}`; {stamp}.",
             "", f"All 4,000 training labels; seeds {', '.join(map(str, res['seeds']))} (the teacher is trained once "
             "per seed, every student row is a `distill` step from it; best epoch on the validation split). "
             "% of teacher = student accuracy / teacher accuracy, per seed then averaged.", "",
             "| | params (× fewer) | test accuracy, mean ± std | % of teacher | vs alone, paired |",
             "|---|---|---|---|---|"]
    tp = res["params"][teacher_name]
    for name, r in rows.items():
        share = statistics.fmean(a / t for a, t in zip(r["values"], teacher["values"]))
        paired = "—" if name in (teacher_name, alone_name) else \
            f"{100 * statistics.fmean(a - b for a, b in zip(r['values'], alone)):+.2f} pt"
        lines.append(f"| {name} | {res['params'][name]:,} ({tp / res['params'][name]:.1f}) | "
                     f"{r['mean']:.4f} ± {r['std']:.4f} | {share:.1%} | {paired} |")
    lines += ["", "Steps:", "", "```json", json.dumps(res["conditions"], indent=1), "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- minilm
LAYERS = "encoder.encoder.layer"


def minilm_undistilled(keep_sets: list[list[int]], threads: int) -> dict[str, float]:
    """Cosine to the teacher on the test sentences of 3-layer students cut from it, untrained."""
    from slimkit.measure.quality import predict
    from slimkit.tasks import build_task
    from slimkit.techniques.pruning.blocks import remove_blocks_

    task = build_task("minilm")
    test = task.data.test
    out = {}
    for keep in keep_sets:
        model = remove_blocks_(task.build_model(), [f"{LAYERS}.{i}" for i in range(6) if i not in keep])
        out[",".join(map(str, keep))] = task.evaluate(predict(model.eval(), test, 128), test.targets)["quality"]
    return out


def minilm_conditions(args) -> dict[str, list[dict[str, Any]]]:
    """recipes/minilm-distill.yaml's steps (with the command line's epochs, lr and spliced
    count), and two controls without deploy: its distill step on the embeddings alone, with and
    without the spliced sentences."""
    import copy

    steps = shipped("minilm-distill.yaml")["steps"]
    steps[0]["distill"]["finetune"].update(epochs=args.minilm_epochs, lr=args.minilm_lr)
    steps[0]["distill"]["data"]["generate"]["count"] = args.minilm_generated
    embedding_only = copy.deepcopy(steps[0])
    del embedding_only["distill"]["losses"]["features"]
    corpus_only = copy.deepcopy(embedding_only)
    corpus_only["distill"]["data"] = {}
    return {"3 layers, corpus, embeddings only": [corpus_only],
            "3 layers, corpus + spliced, embeddings only": [embedding_only],
            "3 layers, corpus + spliced, embeddings + hidden states": steps}


def minilm_section(args, folder: Path, progress) -> dict[str, Any]:
    progress("minilm: undistilled 3-layer students")
    undistilled = minilm_undistilled([[0, 2, 4], [1, 3, 5], [0, 1, 2], [3, 4, 5]], args.threads)
    rows = {}
    for i, (name, steps) in enumerate(minilm_conditions(args).items()):
        progress(f"minilm: {name}")
        results, _ = run(folder / f"m{i}", "minilm", 0, {}, steps, args.threads, repeats=args.repeats)
        rows[name] = [{"step": r["name"], "metrics": {k: r["metrics"].get(k) for k in (
            "quality", "quality_metrics", "params", "macs", "size_bytes", "latency_b1", "latency_bN")},
            "info": {k: v for k, v in r.get("info", {}).items() if k in (
                "labelled_rows", "generated_rows", "teacher_cache", "train", "candidates", "student_params")}}
            for r in results]
    return {"undistilled": undistilled, "rows": rows, "conditions": minilm_conditions(args)}


def render_minilm(res: dict[str, Any], command: str, stamp: str) -> str:
    lines = ["# Distillation: all-MiniLM-L6-v2 -> 3 layers", "", f"Command: `{command}`; {stamp}.", "",
             "The student is the teacher with layers 1, 3 and 5 replaced by the identity (its other weights kept), "
             "trained by the `distill` step with the embedding term (1 − cosine to the teacher's embedding), alone "
             "or with the hidden-state term (the squared error of each kept layer's output against the teacher "
             "layer it stands in for: 0→1, 2→3, 4→5; real tokens only). "
             "Quality: mean cosine to the teacher's embeddings on the 1,000 held-out test sentences, and the overlap "
             "of each sentence's 10 nearest neighbours. Eager latency: medians at b1 and b32 (64 tokens).", "",
             "Undistilled 3-layer students (kept layers: cosine): " +
             ", ".join(f"{k}: {v:.3f}" for k, v in res["undistilled"].items()) + ".", "",
             "| run | step | cosine | top-10 overlap | params | MACs | eager b1 ms | eager b32 ms |",
             "|---|---|---|---|---|---|---|---|"]
    notes = []
    for name, steps in res["rows"].items():
        for s in steps:
            m, q = s["metrics"], s["metrics"].get("quality_metrics") or {}
            b1, bn = m.get("latency_b1") or {}, m.get("latency_bN") or {}
            knn = q.get("knn10_overlap")
            lines.append(f"| {name} | {s['step']} | {m['quality']:.4f} | {'—' if knn is None else f'{knn:.3f}'} | "
                         f"{m['params']:,} | {m['macs']:,} | {b1.get('median_ms', float('nan')):.2f} | "
                         f"{bn.get('median_ms', float('nan')):.2f} |")
            for c in s["info"].get("candidates") or []:
                if c.get("paired_b1_ms") is not None:
                    notes.append(f"{name}: ONNX Runtime, paired with the 6-layer teacher in one process: b1 "
                                 f"{c['versus_b1_ms']:.3f} → {c['paired_b1_ms']:.3f} ms "
                                 f"({c['speedup_vs_versus_b1']:.2f}× faster), b32 {c['versus_bN_ms']:.3f} → "
                                 f"{c['paired_bN_ms']:.3f} ms ({c['speedup_vs_versus_bN']:.2f}×); max relative "
                                 f"difference from eager {c.get('max_rel_diff', 0):.1e}.")
            if "train" in s["info"]:
                t = s["info"]["train"]
                notes.append(f"{name}: {s['info'].get('labelled_rows')} corpus sentences"
                             f"{' + ' + str(s['info']['generated_rows']) + ' spliced' if s['info'].get('generated_rows') else ''}"
                             f", {t['epochs']} epochs, best epoch {t['best_epoch']} on validation (cosine by epoch: "
                             f"{', '.join(f'{v:.4f}' for v in t.get('val_history', []))}); teacher outputs: "
                             f"{s['info'].get('teacher_cache', 'run every batch')}.")
    lines += ["", *notes, "", "Steps:", "", "```json", json.dumps(res["conditions"], indent=1), "```", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main
SECTIONS: dict[str, Callable[[Any], str]] = {
    "fewlabels": lambda a: f"--seeds {' '.join(map(str, a.seeds))} --per-class {a.per_class} --teacher-epochs "
                           f"{a.teacher_epochs} --student-epochs {a.student_epochs} --mlp-hidden {a.mlp_hidden} "
                           f"--generated {a.generated}",
    "lenet5": lambda a: f"--seeds {' '.join(map(str, a.seeds))} --lenet5-seeds {a.lenet5_seeds} --student-epochs "
                        f"{a.student_epochs} --generated {a.generated} --derive-width {a.derive_width}",
    "minilm": lambda a: f"--minilm-epochs {a.minilm_epochs} --minilm-lr {a.minilm_lr} --minilm-generated "
                        f"{a.minilm_generated} --repeats {a.repeats}",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--per-class", type=int, default=20, help="fewlabels: labelled rows per class")
    parser.add_argument("--teacher-epochs", type=int, default=60, help="fewlabels: the teacher's epochs")
    parser.add_argument("--student-epochs", type=int, default=30)
    parser.add_argument("--mlp-hidden", type=int, default=100, help="fewlabels: the student's hidden width")
    parser.add_argument("--generated", type=int, default=4000, help="mixup rows")
    parser.add_argument("--lenet5-seeds", type=int, default=3, help="lenet5: how many of --seeds")
    parser.add_argument("--derive-width", type=float, default=0.3, help="lenet5: channels kept by the cut student")
    parser.add_argument("--minilm-epochs", type=int, default=8)
    parser.add_argument("--minilm-lr", type=float, default=5e-4)
    parser.add_argument("--minilm-generated", type=int, default=8000, help="minilm: spliced sentences")
    parser.add_argument("--repeats", type=int, default=30, help="minilm: latency repeats")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("slimkit").setLevel(logging.WARNING)
    run_section_loop("distillation.py", "distillation", args, SECTIONS, globals())


if __name__ == "__main__":
    main()
