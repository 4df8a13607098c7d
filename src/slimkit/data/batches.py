"""Batches drawn from a split for the techniques that score or calibrate on data: calibration
samples, the leading training batches, and a model's mean loss on a split's first rows."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from slimkit.core.outputs import primary_output
from slimkit.data.base import Split


def calibration_batches(split: Split, samples: int, batch_size: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    """``samples`` examples of ``split`` drawn at random (seeded), in batches: what the quantizers
    calibrate on (and what the benchmarks hand to other quantizers, so all see the same)."""
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:samples]
    return [tuple(t[order[i:i + batch_size]] for t in split.inputs) for i in range(0, len(order), batch_size)]


def leading_batches(split: Split, batches: int, batch_size: int, device: torch.device | str = "cpu"
                    ) -> list[tuple[torch.Tensor, ...]]:
    """The inputs of the first ``batches`` batches of ``split``, in order, on ``device``."""
    starts = [b * batch_size for b in range(batches) if b * batch_size < len(split)]
    return [tuple(t[i:i + batch_size].to(device) for t in split.inputs) for i in starts]


def mean_loss(split: Split, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], samples: int,
              device: torch.device | str = "cpu", batch_size: int = 256) -> Callable[[nn.Module], float]:
    """model -> the mean of ``loss`` (a task's loss) over the first ``samples`` rows of ``split``."""
    inputs = tuple(t[:samples].to(device) for t in split.inputs)
    targets = split.targets[:samples].to(device)

    @torch.no_grad()
    def measure(model: nn.Module) -> float:
        model.eval()
        total, n = 0.0, len(targets)
        for start in range(0, n, batch_size):
            batch = tuple(t[start:start + batch_size] for t in inputs)
            total += float(loss(primary_output(model(*batch)), targets[start:start + batch_size])) * len(batch[0])
        return total / n

    return measure
