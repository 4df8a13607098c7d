#!/usr/bin/env python
"""Quick difficulty check for the procedural shapes dataset.

Trains a small plain CNN (conv 32-64-128, BN+ReLU+maxpool, global average
pool, linear head; ~95k parameters) with Adam on ``make_shapes`` data and
prints test accuracy per epoch, per-class accuracy and timings.  The dataset
is meant to land at roughly 80-92% test accuracy with the defaults
(10k train / 2k test, 15 epochs, batch 128, lr 1e-3): clearly learnable, but
not saturated.

Usage (from the repo root)::

    PYTHONPATH=src .venv/bin/python tools/check_shapes_difficulty.py
    PYTHONPATH=src .venv/bin/python tools/check_shapes_difficulty.py --epochs 5 --n-train 4000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from torch import nn

try:
    from slimkit.data.shapes import SHAPE_CLASSES, make_shapes
except ImportError:  # allow running without installing / setting PYTHONPATH
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    from slimkit.data.shapes import SHAPE_CLASSES, make_shapes


def small_cnn(num_classes: int, head: str = "flatten") -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]

    if head == "gap":  # global average pool -> linear
        top = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes)]
    else:  # "flatten": keep the 4x4 spatial layout (assumes 32x32 input)
        top = [nn.Flatten(), nn.Linear(128 * 4 * 4, num_classes)]
    return nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128), *top)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=10_000)
    ap.add_argument("--n-test", type=int, default=2_000)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    k = len(SHAPE_CLASSES)

    t0 = time.perf_counter()
    xtr, ytr = make_shapes(args.n_train, seed=args.seed)
    t_gen_train = time.perf_counter() - t0
    xte, yte = make_shapes(args.n_test, seed=args.seed + 10_000)
    t_gen = time.perf_counter() - t0
    print(
        f"generated {args.n_train} train in {t_gen_train:.2f}s, "
        f"{args.n_test} test (total {t_gen:.2f}s); {k} classes"
    )

    xtr_t, ytr_t = torch.from_numpy(xtr), torch.from_numpy(ytr)
    xte_t, yte_t = torch.from_numpy(xte), torch.from_numpy(yte)

    model = small_cnn(k)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model params: {n_params}")
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(args.seed)

    t_train = time.perf_counter()
    acc = 0.0
    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.randperm(len(xtr_t), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i : i + args.batch_size]
            xb, yb = xtr_t[idx], ytr_t[idx]
            out = model(xb)
            loss = loss_fn(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += (out.argmax(1) == yb).sum().item()
            total += len(idx)
        acc = (predict(model, xte_t) == yte_t).float().mean().item()
        print(
            f"epoch {epoch:2d}  loss {loss_sum / total:.3f}  train_acc {correct / total:.3f}  "
            f"test_acc {acc:.4f}  ({time.perf_counter() - t_train:.0f}s)",
            flush=True,
        )
    t_train = time.perf_counter() - t_train

    pred = predict(model, xte_t).numpy()
    print("per-class test accuracy:")
    for c, name in enumerate(SHAPE_CLASSES):
        m = yte == c
        top_wrong = np.bincount(pred[m & (pred != c)], minlength=k)
        confused = SHAPE_CLASSES[int(top_wrong.argmax())] if top_wrong.any() else "-"
        print(f"  {name:10s} {np.mean(pred[m] == c):.3f}  (most confused with: {confused})")
    print(
        f"FINAL test_acc {acc:.4f}  chance {1 / k:.3f}  train_time {t_train:.1f}s  "
        f"gen_time {t_gen:.2f}s  threads {args.threads}"
    )


if __name__ == "__main__":
    main()
