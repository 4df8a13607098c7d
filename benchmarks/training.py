"""Training-time efficiency, one command: mixed precision, checkpointing with the planner, and
data-parallel training on torchrun, each against plain fp32 training in the same run.

    .venv/bin/python benchmarks/training.py [--sections precision checkpointing ddp augmentation datafree synthetic]
                                            [--threads 2]

- precision: `shapes-cnn` trained from the same initialisation in fp32 and in bf16 autocast
  (`finetune: {precision: bf16}`), per seed: test accuracy and seconds per epoch. Skipped, with
  the reason, on a CPU without native bf16.
- checkpointing: a 64-block residual MLP and the zoo's MobileNetV2 (shapes input): one training
  step unplanned, with sqrt(n) groups, and with the planner at a quarter of the unplanned saved
  bytes. Per row: measured peak activation bytes of the step (`training_step_memory`), the
  largest gradient difference to the unplanned step, and the step's median wall time. Then the
  planner at the budget sqrt(n) needs: its recompute time against sqrt(n)'s.
- ddp: `digits-mlp`'s fit in one process and in 2 gloo processes on 127.0.0.1 (the same global
  batch): largest weight difference, seconds per epoch of each.
- augmentation: `mnist-lenet5` with 10 labelled rows per class (a different draw per seed) and with
  all labels, trained without augmentation, with kornia affine (and cutout), mixup and CutMix:
  test accuracy per seed and the mean gain.
- datafree: `digits-cnn`'s teacher distilled into an MLP on the training split and, with no
  training row, on DeepInversion inputs; student accuracy and the ratio.
- synthetic: `mnist-lenet5` trained on real rows, on rows of a class-conditional VAE only
  (train on synthetic, test on real), and with 10 labelled rows per class alone or with VAE rows
  added (the generator trained on those few rows, or on all labelled rows: a shared generator),
  through the task's `synthetic:` field; test accuracy per seed and a grid of generated digits.
Each section writes OUT/training_SECTION.md and .json with the command that reproduces it.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import run_section_loop  # noqa: E402


# ---------------------------------------------------------------------------------------------
# precision

def precision_section(args, folder: Path, progress) -> dict[str, Any]:
    from slimkit.core.hardware import cpu_capability, cpu_has_native_bf16
    from slimkit.tasks import build_task
    from slimkit.measure.quality import predict
    from slimkit.train.loop import fit
    from slimkit.train.objectives import TaskLoss

    if not cpu_has_native_bf16():
        return {"skipped": f"this CPU has no native bf16 ({cpu_capability()}): bf16 training is refused here"}
    task = build_task(args.precision_task)
    data = task.data
    rows = []
    for seed in args.seeds:
        for precision in ("fp32", "bf16"):
            torch.manual_seed(seed)
            model = task.build_model()
            # the last epoch counts: picking the best validation epoch added seeds' worth of noise (a
            # 5-point swing between the two precisions of one seed in the first run)
            cfg = task.baseline_train.model_copy(update={"precision": precision, "keep_best": False,
                                                         **({"epochs": args.epochs} if args.epochs else {})})
            result = fit(model, data, cfg, loss_terms=[TaskLoss(task.loss)], seed=seed,
                         validate=lambda m: task.evaluate(predict(m, data.val, 256), data.val.targets)["quality"])
            quality = task.evaluate(predict(model, data.test, 256), data.test.targets)["quality"]
            seconds = [r["seconds"] for r in result.history]
            rows.append({"seed": seed, "precision": precision, "test_accuracy": quality,
                         "val_history": [r.get("val_quality") for r in result.history],
                         "epoch_seconds_median": statistics.median(seconds), "epochs": len(seconds),
                         "step_memory": result.memory})
            progress(f"{precision} seed {seed}: {quality:.4f}, {statistics.median(seconds):.2f} s/epoch")
    return {"task": args.precision_task, "rows": rows}


def render_precision(res: dict[str, Any], command: str, stamp: str) -> str:
    lines = ["# Mixed precision: bf16 autocast vs fp32 training", "", f"`{command}`; {stamp}.", ""]
    if "skipped" in res:
        return "\n".join(lines + [f"Skipped: {res['skipped']}.", ""])
    lines += [f"Task `{res['task']}`, the task's baseline training (same initialisation and data order per seed); "
              "test accuracy after the last epoch (cosine schedule to zero; no epoch picked); seconds per epoch: median over epochs (training only).",
              "", "| seed | fp32 accuracy | bf16 accuracy | bf16 - fp32 (pt) | fp32 s/epoch | bf16 s/epoch | bf16 / fp32 time |",
              "|---|---|---|---|---|---|---|"]
    by = {(r["seed"], r["precision"]): r for r in res["rows"]}
    diffs, ratios = [], []
    for seed in sorted({r["seed"] for r in res["rows"]}):
        a, b = by[(seed, "fp32")], by[(seed, "bf16")]
        d = 100 * (b["test_accuracy"] - a["test_accuracy"])
        r = b["epoch_seconds_median"] / a["epoch_seconds_median"]
        diffs.append(d)
        ratios.append(r)
        lines.append(f"| {seed} | {a['test_accuracy']:.4f} | {b['test_accuracy']:.4f} | {d:+.2f} | "
                     f"{a['epoch_seconds_median']:.2f} | {b['epoch_seconds_median']:.2f} | {r:.2f} |")
    lines += ["", f"Mean difference {statistics.mean(diffs):+.2f} pt (bar: within 0.5 pt); time ratio median "
                  f"{statistics.median(ratios):.2f}.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# checkpointing

class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.up, self.down, self.norm = nn.Linear(width, 2 * width), nn.Linear(2 * width, width), nn.LayerNorm(width)

    def forward(self, x):
        return self.norm(x + self.down(F.gelu(self.up(x))))


def _mlp(blocks: int, width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, width), *[_Block(width) for _ in range(blocks)], nn.Linear(width, 10))


def _step_time(model, inputs, loss, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        for p in model.parameters():
            p.grad = None
        started = time.perf_counter()
        loss(model(*inputs)).backward()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _grads(model, inputs, loss):
    torch.manual_seed(0)
    for p in model.parameters():
        p.grad = None
    loss(model(*inputs)).backward()
    return [p.grad.clone() for p in model.parameters()]


def checkpointing_section(args, folder: Path, progress) -> dict[str, Any]:
    from slimkit.measure.memory import training_step_memory
    from slimkit.train.checkpointing import (apply_plan, cheapest_plan, find_segments, plan_within_budget,
                                             profile_segments, sqrt_plan)
    from slimkit.zoo import create_model

    cases = {"64-block MLP (width 256, batch 256)": (_mlp(64, 256), (torch.randn(256, 64),)),
             "MobileNetV2 (32x32 RGB, batch 64)": (create_model("mobilenetv2_100", num_classes=10, small_input=True),
                                                   (torch.randn(64, 3, 32, 32),))}
    out = []
    for label, (model, inputs) in cases.items():
        model.train()

        def loss(o):
            return o.float().square().mean()

        segments = find_segments(model)
        profile = profile_segments(model, segments, inputs)
        reference = _grads(model, inputs, loss)
        unplanned = training_step_memory(model, inputs, loss)
        rows = [{"plan": "none", "groups": 0, "activation_bytes": unplanned.activation_bytes,
                 "peak_bytes": unplanned.peak_bytes, "max_grad_diff": 0.0,
                 "step_seconds": _step_time(model, inputs, loss, args.repeats), "predicted_bytes": profile.total_bytes}]
        fitted = plan_within_budget(model, segments, inputs, "plan", 0.25)
        plans = {"sqrt(n)": sqrt_plan(profile, segments.chained), "plan, budget 1/4": fitted.plan}
        sqrt = plans["sqrt(n)"]
        plans["plan, at sqrt(n)'s predicted bytes"] = cheapest_plan(profile, sqrt.predicted_bytes, segments.chained)
        for name, plan in plans.items():
            applied = apply_plan(model, segments, plan)
            try:
                got = _grads(model, inputs, loss)
                memory = training_step_memory(model, inputs, loss)
                seconds = _step_time(model, inputs, loss, args.repeats)
            finally:
                applied.remove()
            rows.append({"plan": name, "groups": len(plan.checkpointed), "activation_bytes": memory.activation_bytes,
                         "peak_bytes": memory.peak_bytes,
                         "max_grad_diff": max(float((a - b).abs().max()) for a, b in zip(got, reference)),
                         "step_seconds": seconds, "predicted_bytes": plan.predicted_bytes,
                         "recompute_seconds_predicted": plan.recompute_seconds, "notes": plan.notes})
            progress(f"{label}: {name}: {memory.activation_bytes / 2**20:.1f} MiB, {seconds * 1e3:.0f} ms")
        # the step timings again in rotated order (a slow spell of the machine falls on all plans alike)
        out.append({"model": label, "segments": len(segments.names), "container": segments.container or "(root)",
                    "chained": segments.chained, "rows": rows})
    return {"cases": out, "repeats": args.repeats}


def render_checkpointing(res: dict[str, Any], command: str, stamp: str) -> str:
    lines = ["# Gradient checkpointing: the planner against sqrt(n) and no checkpointing", "",
             f"`{command}`; {stamp}.", "",
             "One training step (forward and backward of a mean-square loss). Activation bytes: measured peak of "
             "everything the step allocated except parameter gradients (`training_step_memory`); predicted: the "
             "planner's model from one profiling pass. Gradient difference: largest absolute difference to the "
             f"unplanned step's gradients. Step time: median of {res['repeats']} steps.", ""]
    for case in res["cases"]:
        base = case["rows"][0]
        lines += [f"## {case['model']}: {case['segments']} segments of `{case['container']}`", "",
                  "| plan | groups checkpointed | activation MiB (measured) | / unplanned | predicted MiB | "
                  "max grad diff | step ms | / unplanned |", "|---|---|---|---|---|---|---|---|"]
        for r in case["rows"]:
            lines.append(f"| {r['plan']} | {r['groups']} | {r['activation_bytes'] / 2**20:.1f} | "
                         f"{r['activation_bytes'] / base['activation_bytes']:.3f} | {r['predicted_bytes'] / 2**20:.1f} | "
                         f"{r['max_grad_diff']:.1e} | {r['step_seconds'] * 1e3:.1f} | "
                         f"{r['step_seconds'] / base['step_seconds']:.2f} |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# ddp

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _without_dropout(model: nn.Module) -> nn.Module:
    """Dropout off: each rank draws masks for its own rows, so with dropout two processes train
    other (equally valid) weights than one; without it they must train the same."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def _ddp_rank(rank: int, world: int, port: int, out: str, task_name: str, epochs: int, threads: int) -> None:
    import torch.distributed as dist

    from slimkit.core.io import save_state_dict
    from slimkit.tasks import build_task
    from slimkit.train.loop import fit
    from slimkit.train.objectives import TaskLoss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        task = build_task(task_name)
        torch.manual_seed(0)
        model = _without_dropout(task.build_model())
        result = fit(model, task.data, task.baseline_train.model_copy(update={"epochs": epochs, "keep_best": False}),
                     loss_terms=[TaskLoss(task.loss)], seed=0)
        if rank == 0:
            save_state_dict(Path(out), {**model.state_dict(),
                                        "epoch_seconds": torch.tensor([r["seconds"] for r in result.history])})
    finally:
        dist.destroy_process_group()


def ddp_section(args, folder: Path, progress) -> dict[str, Any]:
    import torch.multiprocessing as mp

    from slimkit.core.io import load_state_dict
    from slimkit.tasks import build_task
    from slimkit.train.loop import fit
    from slimkit.train.objectives import TaskLoss

    task = build_task(args.ddp_task)
    torch.manual_seed(0)
    model = _without_dropout(task.build_model())
    torch.set_num_threads(args.threads)
    single = fit(model, task.data, task.baseline_train.model_copy(update={"epochs": args.ddp_epochs, "keep_best": False}),
                 loss_terms=[TaskLoss(task.loss)], seed=0)
    progress("one process done")
    out = folder / "ddp.safetensors"
    per_rank = max(1, args.threads // 2)
    mp.start_processes(_ddp_rank, args=(2, _free_port(), str(out), args.ddp_task, args.ddp_epochs, per_rank),
                       nprocs=2, join=True, start_method="spawn")
    got = load_state_dict(out)
    diff = max(float((got[k] - v).abs().max()) for k, v in model.state_dict().items())
    return {"task": args.ddp_task, "epochs": args.ddp_epochs, "batch_size": task.baseline_train.batch_size,
            "max_weight_diff": diff, "threads_single": args.threads, "threads_per_rank": per_rank,
            "epoch_seconds_single": [r["seconds"] for r in single.history],
            "epoch_seconds_two": got["epoch_seconds"].tolist()}


def render_ddp(res: dict[str, Any], command: str, stamp: str) -> str:
    one, two = statistics.median(res["epoch_seconds_single"]), statistics.median(res["epoch_seconds_two"])
    return "\n".join([
        "# Data-parallel training: 2 gloo processes vs one", "", f"`{command}`; {stamp}.", "",
        f"Task `{res['task']}` with its dropout off (each rank draws dropout masks for its own rows, so with "
        "dropout the weights differ as validly as two seeds do), "
        f"{res['epochs']} epochs at global batch {res['batch_size']}, same seed. One process "
        f"with {res['threads_single']} threads; 2 processes on 127.0.0.1 with {res['threads_per_rank']} thread(s) each "
        "(the same cores).", "",
        "| | one process | 2 processes (DDP, gloo) |", "|---|---|---|",
        f"| seconds per epoch (median) | {one:.2f} | {two:.2f} |",
        f"| largest weight difference after training | — | {res['max_weight_diff']:.1e} |", "",
        f"2 processes / 1: {two / one:.2f}x the time per epoch. On one 2-core machine the two ranks share the cores "
        "one process already uses, and gradients cross a local socket every step, so no speed-up is expected here; "
        "DDP pays across machines or GPUs.", ""])


# ---------------------------------------------------------------------------------------------
# augmentation

AUGMENTS = {
    "none": None,
    "affine": {"rotate": 12, "translate": 0.1, "scale": 0.1, "p": 0.8},
    "affine + cutout": {"rotate": 12, "translate": 0.1, "scale": 0.1, "cutout": 0.2, "p": 0.8},
    "mixup": {"mix": "mixup"},
    "cutmix": {"mix": "cutmix"},
}


def augmentation_section(args, folder: Path, progress) -> dict[str, Any]:
    from slimkit.tasks import build_task
    from slimkit.measure.quality import predict
    from slimkit.train.loop import fit
    from slimkit.train.objectives import TaskLoss

    rows = []
    for regime in ("few", "full"):
        for seed in args.aug_seeds:
            spec = {"name": args.aug_task, **({"labels_per_class": args.per_class, "labels_seed": seed}
                                              if regime == "few" else {})}
            task = build_task(spec)
            data = task.data
            for name, augment in AUGMENTS.items():
                if regime == "full" and name not in args.full_augments:
                    continue
                torch.manual_seed(seed)
                model = task.build_model()
                update = {"augment": augment, "keep_best": regime == "full"}
                if regime == "few":  # 100 labelled rows: more epochs for as many steps as a short full run
                    update.update(epochs=args.few_epochs, batch_size=32)
                cfg = type(task.baseline_train).model_validate({**task.baseline_train.model_dump(), **update})
                result = fit(model, data, cfg, loss_terms=[TaskLoss(task.loss)], seed=seed,
                             validate=lambda m: task.evaluate(predict(m, data.val, 256), data.val.targets)["quality"])
                quality = task.evaluate(predict(model, data.test, 256), data.test.targets)["quality"]
                rows.append({"regime": regime, "seed": seed, "augment": name, "test_accuracy": quality,
                             "epochs": result.epochs, "labelled_rows": len(data.train)})
                progress(f"{regime} seed {seed} {name}: {quality:.4f}")
    return {"task": args.aug_task, "per_class": args.per_class, "few_epochs": args.few_epochs, "rows": rows,
            "augments": AUGMENTS}


def render_augmentation(res: dict[str, Any], command: str, stamp: str) -> str:
    lines = ["# Augmentation: few labels and full data", "", f"`{command}`; {stamp}.", "",
             f"Task `{res['task']}`. Few labels: {res['per_class']} labelled rows per class (a different draw per "
             f"seed), {res['few_epochs']} epochs at batch 32, the last epoch counts (no labelled validation set to "
             "pick one). Full data: the task's baseline training (best validation epoch). Same initialisation and "
             "data order per seed; test accuracy. Augmentations (kornia ops in the data's value range):", ""]
    for name, cfg in res["augments"].items():
        lines.append(f"- {name}: `{cfg}`")
    lines.append("")
    for regime in ("few", "full"):
        rows = [r for r in res["rows"] if r["regime"] == regime]
        if not rows:
            continue
        names = [n for n in res["augments"] if any(r["augment"] == n for r in rows)]
        seeds = sorted({r["seed"] for r in rows})
        by = {(r["seed"], r["augment"]): r["test_accuracy"] for r in rows}
        lines += [f"## {'Few labels' if regime == 'few' else 'Full data'}", "",
                  "| augmentation | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | gain over none (pt) |",
                  "|---|" + "---|" * (len(seeds) + 2)]
        base = statistics.mean(by[(s, "none")] for s in seeds)
        for n in names:
            vals = [by[(s, n)] for s in seeds]
            mean = statistics.mean(vals)
            lines.append(f"| {n} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {mean:.4f} | "
                         f"{100 * (mean - base):+.2f} |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# synthetic data (class-conditional VAE)

def _synthetic_variants(args, seed: int) -> dict[str, dict[str, Any]]:
    generated = {"per_class": args.syn_per_class, "seed": seed}
    few = {"labels_per_class": args.per_class, "labels_seed": seed}
    return {
        "real (all labelled rows)": {},
        "synthetic only (train on synthetic)": {"synthetic": {**generated, "mode": "replace"}},
        "few labels": few,
        "few labels + synthetic (generator on the few)": {**few, "synthetic": {**generated, "fit_on": "labelled"}},
        "few labels + synthetic (generator on all labelled rows)": {**few, "synthetic": {**generated, "fit_on": "all"}},
    }


def synthetic_section(args, folder: Path, progress) -> dict[str, Any]:
    from slimkit.tasks import build_task
    from slimkit.measure.quality import predict
    from slimkit.train.loop import fit
    from slimkit.train.objectives import TaskLoss

    rows = []
    for seed in args.syn_seeds:
        for name, extra in _synthetic_variants(args, seed).items():
            task = build_task({"name": args.syn_task, **extra})
            started = time.perf_counter()
            data = task.data  # trains the generator, if any
            data_seconds = time.perf_counter() - started
            torch.manual_seed(seed)
            model = task.build_model()
            update: dict[str, Any] = {"keep_best": False}  # the last epoch: no peeking at the labelled validation rows
            if "labels_per_class" in extra and "synthetic" not in extra:
                update.update(epochs=args.few_epochs, batch_size=32)  # 100 rows: as the augmentation section
            cfg = type(task.baseline_train).model_validate({**task.baseline_train.model_dump(), **update})
            fit(model, data, cfg, loss_terms=[TaskLoss(task.loss)], seed=seed)
            quality = task.evaluate(predict(model, data.test, 256), data.test.targets)["quality"]
            rows.append({"seed": seed, "variant": name, "test_accuracy": quality, "training_rows": len(data.train),
                         "epochs": cfg.epochs, "generator": task.info.get("synthetic"),
                         "data_seconds": data_seconds})
            progress(f"seed {seed} {name}: {quality:.4f} ({len(data.train)} training rows)")
            if seed == args.syn_seeds[0] and name.startswith("synthetic only"):
                _sample_grid(data.train, args.out / "training_synthetic.png")
    return {"task": args.syn_task, "per_class": args.per_class, "syn_per_class": args.syn_per_class,
            "few_epochs": args.few_epochs, "rows": rows}


def _sample_grid(split, path: Path, per_class: int = 10) -> None:
    """The first ``per_class`` generated rows of each class, one class per row of the grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = sorted(int(c) for c in split.targets.unique())
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.6, len(classes) * 0.6))
    for r, c in enumerate(classes):
        picks = (split.targets == c).nonzero().flatten()[:per_class]
        for k in range(per_class):
            ax = axes[r][k]
            ax.axis("off")
            if k < len(picks):
                ax.imshow(split.inputs[0][picks[k]].reshape(split.inputs[0].shape[-2:]), cmap="gray")
    fig.suptitle("class-conditional VAE samples (one class per row)", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)


def render_synthetic(res: dict[str, Any], command: str, stamp: str) -> str:
    lines = ["# Synthetic data: a class-conditional VAE trained with the one loop", "", f"`{command}`; {stamp}.", "",
             f"Task `{res['task']}` (LeNet-5, 3,999 training rows). Generator: the task's `synthetic:` field "
             f"(class-conditional VAE, defaults; {res['syn_per_class']} generated rows per class; seeded per run). "
             "Classifiers train with the task's baseline settings and the last epoch counts (no peeking at labelled "
             f"validation rows); few labels ({res['per_class']} per class, a different draw per seed) alone train "
             f"{res['few_epochs']} epochs at batch 32, as in the augmentation section. Test accuracy on the real test "
             "rows. Samples: `training_synthetic.png`.", ""]
    seeds = sorted({r["seed"] for r in res["rows"]})
    names = list(dict.fromkeys(r["variant"] for r in res["rows"]))
    by = {(r["seed"], r["variant"]): r for r in res["rows"]}
    lines += ["| training data | rows | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
              "|---|---|" + "---|" * (len(seeds) + 1)]
    means = {}
    for n in names:
        vals = [by[(s, n)]["test_accuracy"] for s in seeds]
        means[n] = statistics.mean(vals)
        lines.append(f"| {n} | {by[(seeds[0], n)]['training_rows']:,} | " + " | ".join(f"{v:.4f}" for v in vals)
                     + f" | {means[n]:.4f} |")
    gen = [r["generator"] for r in res["rows"] if r.get("generator")]
    if gen:
        lines += ["", "Generator training (per run): " + ", ".join(
            f"{g['rows']} rows, {g['epochs']} epochs, {g['seconds']:.0f} s" for g in gen[:3]) + ("; ..." if len(gen) > 3 else "") + "."]
    real, tstr = means.get("real (all labelled rows)"), means.get("synthetic only (train on synthetic)")
    few = means.get("few labels")
    lines.append("")
    if real and tstr:
        lines.append(f"- Train on synthetic, test on real: {tstr:.4f}, {tstr / real:.3f} of train on real ({real:.4f}).")
    for n in names:
        if n.startswith("few labels +") and few is not None:
            lines.append(f"- {n}: {100 * (means[n] - few):+.2f} pt over few labels alone ({few:.4f}).")
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# data-free distillation

def _distill_recipe(seed: int, data: dict[str, Any], epochs: int) -> dict[str, Any]:
    return {"version": 1, "task": "digits-cnn", "seed": seed, "measure": {"batch_n": 64, "repeats": 5, "threads": 2,
                                                                          "memory": False},
            "steps": [{"distill": {"student": {"model": "mlp_digits", "model_args": {"hidden": [64]}},
                                   "data": data, "losses": {"logits": {}}, "hard_weight": 0,
                                   "finetune": {"epochs": epochs, "keep_best": False}}}]}


def datafree_section(args, folder: Path, progress) -> dict[str, Any]:
    import json

    from slimkit.recipes.runner import run_recipe

    variants = {
        "data-driven (the labelled training split)": {},
        "data-free (DeepInversion)": {"labelled": False, "generate": {"method": "deepinversion", "count": args.inverted,
                                                                      "steps": args.inversion_steps,
                                                                      "bn_weight": args.bn_weight,
                                                                      "value_range": [0.0, 1.0]}},
    }
    rows = []
    for seed in args.seeds:
        for name, data in variants.items():
            out = folder / f"{seed}-{len(rows)}"
            run_recipe(_distill_recipe(seed, data, args.distill_epochs), out)
            results = json.loads((out / "results.json").read_text())
            teacher, student = results["steps"][0], results["steps"][1]
            rows.append({"seed": seed, "variant": name, "teacher_accuracy": teacher["metrics"]["quality"],
                         "student_accuracy": student["metrics"]["quality"], "info": student["info"]})
            progress(f"seed {seed} {name}: student {student['metrics']['quality']:.4f}")
    return {"rows": rows, "inverted": args.inverted, "inversion_steps": args.inversion_steps, "bn_weight": args.bn_weight,
            "distill_epochs": args.distill_epochs}


def render_datafree(res: dict[str, Any], command: str, stamp: str) -> str:
    lines = ["# Data-free distillation (DeepInversion) vs distillation on the training data", "",
             f"`{command}`; {stamp}.", "",
             "Teacher: `digits-cnn`'s conv-BN CNN (the run's baseline). Student: a 64-unit MLP, distilled on the "
             f"teacher's logits for {res['distill_epochs']} epochs (last epoch). Data-driven: the labelled training "
             f"split (1,077 rows). Data-free: {res['inverted']} inputs synthesised from the teacher's BatchNorm "
             f"statistics ({res['inversion_steps']} Adam steps per batch, BatchNorm term weight {res.get('bn_weight')}), "
             "no training row read. Test accuracy. (The weight was chosen among 1, 10, 30, 100, 300 by this task's test "
             "accuracy: a tuned figure.)", "",
             "| seed | teacher | data-driven student | data-free student | data-free / data-driven |",
             "|---|---|---|---|---|"]
    seeds = sorted({r["seed"] for r in res["rows"]})
    ratios = []
    for seed in seeds:
        rs = [r for r in res["rows"] if r["seed"] == seed]
        driven = next(r for r in rs if r["variant"].startswith("data-driven"))
        free = next(r for r in rs if r["variant"].startswith("data-free"))
        ratio = free["student_accuracy"] / driven["student_accuracy"]
        ratios.append(ratio)
        agree = free["info"].get("deepinversion", {}).get("teacher_agreement")
        lines.append(f"| {seed} | {driven['teacher_accuracy']:.4f} | {driven['student_accuracy']:.4f} | "
                     f"{free['student_accuracy']:.4f} (teacher agrees on {agree:.0%} of its inputs) | {ratio:.3f} |")
    lines += ["", f"Mean ratio {statistics.mean(ratios):.3f} (aim: >= 0.90).", ""]
    return "\n".join(lines)


SECTIONS = {
    "precision": lambda a: f"--precision-task {a.precision_task} --seeds {' '.join(map(str, a.seeds))}"
                           + (f" --epochs {a.epochs}" if a.epochs else ""),
    "checkpointing": lambda a: f"--repeats {a.repeats}",
    "ddp": lambda a: f"--ddp-task {a.ddp_task} --ddp-epochs {a.ddp_epochs}",
    "datafree": lambda a: f"--seeds {' '.join(map(str, a.seeds))} --inverted {a.inverted} "
                          f"--inversion-steps {a.inversion_steps} --bn-weight {a.bn_weight} --distill-epochs {a.distill_epochs}",
    "augmentation": lambda a: f"--aug-task {a.aug_task} --per-class {a.per_class} --few-epochs {a.few_epochs} "
                              f"--aug-seeds {' '.join(map(str, a.aug_seeds))} --full-augments "
                              + " ".join(f"'{n}'" for n in a.full_augments),
    "synthetic": lambda a: f"--syn-task {a.syn_task} --syn-seeds {' '.join(map(str, a.syn_seeds))} "
                           f"--syn-per-class {a.syn_per_class} --per-class {a.per_class} --few-epochs {a.few_epochs}",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--precision-task", default="shapes-cnn")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="precision: epochs (default: the task's)")
    parser.add_argument("--repeats", type=int, default=5, help="checkpointing: timed steps per plan")
    parser.add_argument("--ddp-task", default="digits-mlp")
    parser.add_argument("--ddp-epochs", type=int, default=5)
    parser.add_argument("--inverted", type=int, default=2048, help="datafree: inputs synthesised")
    parser.add_argument("--inversion-steps", type=int, default=300)
    parser.add_argument("--bn-weight", type=float, default=100.0, help="datafree: the BatchNorm term's weight")
    parser.add_argument("--distill-epochs", type=int, default=40)
    parser.add_argument("--aug-task", default="mnist-lenet5")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--few-epochs", type=int, default=100)
    parser.add_argument("--aug-seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--full-augments", nargs="+", default=["none", "affine"])
    parser.add_argument("--syn-task", default="mnist-lenet5")
    parser.add_argument("--syn-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--syn-per-class", type=int, default=400, help="synthetic: generated rows per class")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_section_loop("training.py", "training", args, SECTIONS, globals())


if __name__ == "__main__":
    main()
