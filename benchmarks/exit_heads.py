"""Which exit head, where: candidate heads at several depths of a trained backbone, trained jointly once.

    .venv/bin/python benchmarks/exit_heads.py [--task shapes-cnn] [--seed 0] [--epochs 3] [--threads 1]

The task's baseline is trained (or loaded with --baseline-weights); then every candidate head
(`strided`, 4x4 pooling + Linear, 4x4 pooling + MLP, a depthwise-separable stride-2 block) sits
after each of --points children of the `nn.Sequential` backbone, and the backbone and all heads
train together for --epochs epochs (Adam 1e-3, cosine; every head's cross-entropy plus the final
exit's). Prints and writes each head's test accuracy and MACs beside the backbone's cumulative
MACs at that point, so the placement and the head kind of the `early_exit` step can be chosen from
measurements. Writes OUT/exit_heads.md and .json.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import publish_section, section_stamp  # noqa: E402


def candidates(c: int, classes: int):
    import torch.nn as nn

    from slimkit.techniques.dynamic.exits import exit_head

    import torch

    x = torch.zeros(1, c, 8, 8)
    return {
        "strided": exit_head(x, classes, "strided"),
        "4x4 pooling, Linear": exit_head(x, classes, "spatial"),
        "4x4 pooling, MLP": nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(c * 16, 128), nn.ReLU(),
                                          nn.Linear(128, classes)),
        "depthwise-separable, stride 2": nn.Sequential(
            nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(8 * c, classes)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="shapes-cnn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--points", type=int, nargs="+", default=[1, 2, 4, 5, 6])
    parser.add_argument("--baseline-weights", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from slimkit.core.io import load_state_dict
    from slimkit.measure.macs import count_macs, count_macs_by_module
    from slimkit.recipes.runner import run_recipe
    from slimkit.tasks.base import build_task

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    command = (f"python benchmarks/exit_heads.py --task {args.task} --seed {args.seed} --epochs {args.epochs} "
               f"--points {' '.join(map(str, args.points))} --threads {args.threads}"
               + (f" --baseline-weights {args.baseline_weights}" if args.baseline_weights else ""))
    task = build_task(args.task)
    model = task.build_model()
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.baseline_weights
        if weights is None:
            run_recipe({"version": 1, "task": args.task, "seed": args.seed, "steps": [],
                        "measure": {"batch_n": 8, "repeats": 3, "threads": args.threads, "memory": False}}, Path(tmp))
            weights = Path(tmp) / "steps" / "00-baseline" / "model.safetensors"
        model.load_state_dict(load_state_dict(weights))
    if not isinstance(model, nn.Sequential):
        raise SystemExit(f"{type(model).__name__} is not an nn.Sequential: pick the points by hand")
    data = task.data
    x1 = data.train.inputs[0][:1]
    names = [n for n, _ in model.named_children()]
    by_module = count_macs_by_module(model, (x1,))
    cumulative = list(itertools.accumulate(by_module.get(n, 0) for n in names))
    segments = list(model.children())
    classes = int(model.eval()(x1).shape[-1])
    with torch.no_grad():
        h, shapes = x1, []
        for s in segments:
            h = s(h)
            shapes.append(h.shape)
    torch.manual_seed(args.seed)
    heads, head_macs = nn.ModuleDict(), {}
    for p in args.points:
        for kind, head in candidates(shapes[p][1], classes).items():
            key = f"{p}|{kind}"
            heads[key] = head
            head_macs[key] = count_macs(head.eval(), (torch.zeros(shapes[p]),))

    def every(x):
        outs, h = {}, x
        for i, s in enumerate(segments):
            h = s(h)
            for key in heads:
                if key.startswith(f"{i}|"):
                    outs[key] = heads[key](h)
        outs["final"] = h
        return outs

    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    X, Y = data.train.inputs[0], data.train.targets
    steps = args.epochs * math.ceil(len(X) / 128)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        heads.train()
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), 128):
            idx = perm[i:i + 128]
            loss = sum(F.cross_entropy(o, Y[idx]) for o in every(X[idx]).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch} done", flush=True)
    model.eval()
    heads.eval()
    with torch.no_grad():
        parts = [every(data.test.inputs[0][i:i + 500]) for i in range(0, len(data.test), 500)]
    logits = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    accuracy = {k: float((o.argmax(-1) == data.test.targets).float().mean()) for k, o in logits.items()}
    kinds = list(candidates(shapes[args.points[0]][1], classes))
    res = {"task": args.task, "seed": args.seed, "epochs": args.epochs, "points": args.points,
           "cumulative_macs": {names[p]: cumulative[p] for p in args.points}, "total_macs": cumulative[-1],
           "final_accuracy": accuracy["final"], "accuracy": accuracy, "head_macs": head_macs}
    lines = ["# Exit heads: test accuracy by kind and depth", "", f"`{command}`; {section_stamp(args.threads)}.", "",
             f"Task `{args.task}`, seed {args.seed}: the trained baseline with every candidate head after each "
             f"listed child, all trained jointly for {args.epochs} epochs. Final exit after that training: "
             f"{accuracy['final']:.3f} (backbone {cumulative[-1] / 1e6:.1f}M MACs).", "",
             "| head | " + " | ".join(f"after child {names[p]} ({cumulative[p] / 1e6:.1f}M)" for p in args.points) + " |",
             "|---|" + "---|" * len(args.points)]
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(
            f"{accuracy[f'{p}|{kind}']:.3f} ({head_macs[f'{p}|{kind}'] / 1e6:.2f}M)" for p in args.points) + " |")
    text = "\n".join(lines + ["", "Cells: test accuracy (the head's own MACs).", ""])
    publish_section(args.out, "exit_heads", res, text, command, started)


if __name__ == "__main__":
    main()
