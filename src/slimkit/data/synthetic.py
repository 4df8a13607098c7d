"""Inputs synthesised from a trained model alone: data-free distillation's training set.

``deep_inversion`` (Yin et al., "Dreaming to Distill: Data-free Knowledge Transfer via
DeepInversion", CVPR 2020) optimises a batch of random inputs until the teacher classifies them
as chosen classes *and* every BatchNorm layer sees, on them, the mean and variance it recorded on
the real training data (its running statistics): those statistics are what the teacher remembers
of its data. Small image priors keep the inputs natural: total variation, an L2 penalty, random
jitter (shifts) between steps. A student can then be distilled on these inputs with no training
row shared: the teacher's weights are the only thing that leaves the data owner.

Written here, not taken from a library: no maintained package ships DeepInversion for arbitrary
models (NVIDIA's reference code is a research script for torchvision ResNets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.errors import ConfigError
from slimkit.data.base import Split


@dataclass
class InversionReport:
    steps: int
    final_loss: float
    final_bn_loss: float
    teacher_agreement: float  # share of synthesised inputs the teacher assigns to their target class
    seconds: float


def deep_inversion(teacher: nn.Module, input_shape: Sequence[int], count: int, num_classes: int, *,
                   steps: int = 400, lr: float = 0.1, batch_size: int = 256, bn_weight: float = 100.0,
                   tv_weight: float = 1e-3, l2_weight: float = 1e-4, jitter: int = 1,
                   value_range: tuple[float, float] | None = None, seed: int = 0,
                   progress: Callable[[int, int], None] | None = None,
                   device: torch.device | str = "cpu") -> tuple[Split, InversionReport]:
    """``count`` inputs of ``input_shape`` (without the batch dimension), classes balanced, each
    batch optimised for ``steps`` Adam steps (cosine learning rate) against

        CE(teacher(x), y) + bn_weight * sum_layers(|mu(x) - running_mean| + |var(x) - running_var|)
          + tv_weight * TV(x) + l2_weight * mean(x^2)

    with the teacher in eval mode (its running statistics are the targets, not updated). Returns
    the inputs as a ``Split`` whose targets are the chosen classes, and a report.

    ``bn_weight``: on digits-cnn's teacher, an ad-hoc scan of 1, 10, 30, 100 and 300 gave the
    best distilled student at 100 (the teacher then assigns fewer of the inputs to their target
    class; the student learns from its soft outputs, not those classes), hence the default 100; tune it per model."""
    import time

    started = time.perf_counter()
    device = torch.device(device)
    norms = [m for m in teacher.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        raise ConfigError("deepinversion: the teacher has no BatchNorm layer with running statistics to invert "
                          "(it needs a model trained with BatchNorm)")
    was_training = teacher.training
    teacher.eval()
    frozen = [(p, p.requires_grad) for p in teacher.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    bn_terms: list[torch.Tensor] = []

    def statistics_hook(module, args, _out):
        x = args[0]
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        bn_terms.append(torch.linalg.vector_norm(mean - module.running_mean, 2)
                        + torch.linalg.vector_norm(var - module.running_var, 2))

    handles = [m.register_forward_hook(statistics_hook) for m in norms]
    generator = torch.Generator().manual_seed(seed)
    inputs, targets = [], []
    losses = [math.nan, math.nan]
    try:
        for start in range(0, count, batch_size):
            n = min(batch_size, count - start)
            y = (torch.arange(start, start + n) % num_classes)[torch.randperm(n, generator=generator)].to(device)
            x = torch.randn((n, *input_shape), generator=generator).to(device).requires_grad_(True)
            optimizer = torch.optim.Adam([x], lr=lr, betas=(0.5, 0.9))
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
            for step in range(steps):
                bn_terms.clear()
                shifted = _jitter(x, jitter, generator) if jitter else x
                out = teacher(shifted)
                out = out[0] if isinstance(out, (tuple, list)) else out
                bn = torch.stack(bn_terms).sum()
                loss = F.cross_entropy(out, y) + bn_weight * bn + tv_weight * _total_variation(x) \
                    + l2_weight * x.square().mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                if value_range is not None:
                    with torch.no_grad():
                        x.clamp_(*value_range)
                losses = [float(loss.detach()), float(bn.detach())]
                if progress is not None:
                    progress(start // batch_size * steps + step + 1, math.ceil(count / batch_size) * steps)
            inputs.append(x.detach().cpu())
            targets.append(y.cpu())
        with torch.no_grad():
            synthesised = torch.cat(inputs)
            labels = torch.cat(targets)
            agree = sum(int((teacher(synthesised[i:i + 256].to(device)).argmax(-1).cpu() == labels[i:i + 256]).sum())
                        for i in range(0, count, 256)) / count
    finally:
        for h in handles:
            h.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)
        teacher.train(was_training)
    return Split((synthesised,), labels), InversionReport(steps, losses[0], losses[1], agree,
                                                          time.perf_counter() - started)


def _jitter(x: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """``x`` shifted by a random whole number of pixels in each spatial dimension (wrapping)."""
    if x.dim() < 3:
        return x
    shifts = [int(torch.randint(-pixels, pixels + 1, (1,), generator=generator)) for _ in range(x.dim() - 2)]
    return torch.roll(x, shifts=shifts, dims=list(range(2, x.dim())))


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels (images) or positions."""
    if x.dim() < 3:
        return x.new_zeros(())
    total = x.new_zeros(())
    for d in range(2, x.dim()):
        total = total + (x.narrow(d, 1, x.shape[d] - 1) - x.narrow(d, 0, x.shape[d] - 1)).abs().mean()
    return total
