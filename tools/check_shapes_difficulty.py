#!/usr/bin/env python
"""Difficulty check for the procedural shapes dataset, on the real task pipeline.

Builds the ``shapes-cnn`` task, trains its own baseline model (``cnn_shapes``)
exactly as the task does (``task.baseline_train``: 15 epochs, batch 128,
Adam 2e-3, cosine schedule, keep-best on the validation split) through
``Context.train``, then prints the test accuracy (``task.evaluate`` on
``task.data.test``), per-class accuracy with the main confusion, training
time and data-generation time.  One line per seed, then the mean.

The data is calibrated so that this baseline lands at roughly 84-89% test
accuracy: clearly learnable, but not saturated (there is headroom for the
efficient-architecture and compression comparisons).

``--epochs`` overrides the baseline's epoch budget; use it only for quick
screening, the calibration figure is the full task training.  ``--preview``
writes a PNG grid of training images (one row per class) for a visual check
that every class stays recognisable.

Usage (from the repo root)::

    .venv/bin/python tools/check_shapes_difficulty.py                # seed 0
    .venv/bin/python tools/check_shapes_difficulty.py --seeds 0 1
    .venv/bin/python tools/check_shapes_difficulty.py --epochs 5      # screening only
    .venv/bin/python tools/check_shapes_difficulty.py --preview-only --preview shapes.png
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

try:
    import slimkit  # noqa: F401
except ImportError:  # allow running without installing / setting PYTHONPATH
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from slimkit.core.context import Context
from slimkit.data.shapes import SHAPE_CLASSES, make_shapes
from slimkit.measure.quality import predict
from slimkit.tasks import build_task

TASK = "shapes-cnn"


def save_preview(path: str, per_class: int = 12, seed: int = 123, zoom: int = 3) -> None:
    """Grid PNG: one row per class (in SHAPE_CLASSES order), ``per_class`` images per row."""
    from PIL import Image

    k = len(SHAPE_CLASSES)
    x, y = make_shapes(k * per_class * 2, seed=seed)
    size = x.shape[-1]
    pad = 2
    cell = size + pad
    grid = np.ones((k * cell, per_class * cell, 3), dtype=np.float32)
    for c in range(k):
        for j, i in enumerate(np.flatnonzero(y == c)[:per_class]):
            grid[c * cell : c * cell + size, j * cell : j * cell + size] = x[i].transpose(1, 2, 0)
    img = Image.fromarray((grid * 255).round().astype(np.uint8))
    img = img.resize((img.width * zoom, img.height * zoom), Image.NEAREST)
    img.save(path)
    print(f"preview ({k} rows: {', '.join(SHAPE_CLASSES)}) -> {path}")


def run_seed(task, seed: int, epochs: int | None) -> tuple[float, np.ndarray, np.ndarray, float]:
    cfg = task.baseline_train
    if epochs is not None:
        cfg = cfg.model_copy(update={"epochs": epochs})
    torch.manual_seed(seed)
    model = task.build_model()
    t0 = time.perf_counter()
    Context(task=task, seed=seed, progress=False).train(model, cfg)
    t_train = time.perf_counter() - t0
    test = task.data.test
    out = predict(model.eval(), test)
    acc = task.evaluate(out, test.targets)["quality"]
    return acc, out.argmax(-1).numpy(), test.targets.numpy(), t_train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (data is fixed)")
    ap.add_argument("--epochs", type=int, default=None, help="override the baseline epochs (screening only)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preview", default=None, help="also write a PNG grid of training images here")
    ap.add_argument("--preview-only", action="store_true", help="write the preview and exit")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    if args.preview:
        save_preview(args.preview)
    if args.preview_only:
        return

    k = len(SHAPE_CLASSES)
    t0 = time.perf_counter()
    make_shapes(10_000, seed=12345)
    t_gen10k = time.perf_counter() - t0

    task = build_task(TASK)
    t0 = time.perf_counter()
    sizes = task.data.sizes()
    t_load = time.perf_counter() - t0
    n_params = sum(p.numel() for p in task.build_model().parameters())
    cfg = task.baseline_train
    epochs = cfg.epochs if args.epochs is None else args.epochs
    print(
        f"task {TASK}: model {task.info['model']} ({n_params} params), splits {sizes}; "
        f"baseline epochs {epochs}{' (OVERRIDDEN: screening only)' if args.epochs is not None else ''}, "
        f"batch {cfg.batch_size}, lr {cfg.lr}, {cfg.optimizer}, {cfg.schedule}, keep_best {cfg.keep_best}"
    )
    print(f"generation: 10k images {t_gen10k:.2f}s; all task splits {t_load:.2f}s; threads {args.threads}")

    accs = []
    for seed in args.seeds:
        acc, pred, y, t_train = run_seed(task, seed, args.epochs)
        accs.append(acc)
        print(f"seed {seed}: test accuracy {acc:.4f}  (train {t_train:.1f}s)")
        print("  per-class test accuracy:")
        for c, name in enumerate(SHAPE_CLASSES):
            m = y == c
            wrong = np.bincount(pred[m & (pred != c)], minlength=k)
            confused = f"{SHAPE_CLASSES[int(wrong.argmax())]} ({wrong.max()})" if wrong.any() else "-"
            print(f"    {name:10s} {np.mean(pred[m] == c):.3f}  most confused with: {confused}")
    print(
        f"FINAL test accuracy mean {np.mean(accs):.4f} over seeds {args.seeds} "
        f"({', '.join(f'{a:.4f}' for a in accs)}); chance {1 / k:.3f}"
    )


if __name__ == "__main__":
    main()
