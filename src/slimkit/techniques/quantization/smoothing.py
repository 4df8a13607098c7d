"""SmoothQuant's statistics and factors, shared by static and dynamic int8.

SmoothQuant (Xiao et al. 2023) divides input channel j of a linear by
``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` and multiplies weight column j by it: the float
product is unchanged, activation outliers shrink, and the per-output-channel weight scales absorb
them. Linears that read the same tensor (a transformer's query, key and value projections) get
one set of factors, from the largest weight column among them (as NNCF does), so a runtime
computes their smoothed, quantized input once.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn


@torch.no_grad()
def input_statistics(model: nn.Module, layers: dict[str, nn.Module],
                     batches: Iterable[tuple[torch.Tensor, ...]]) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """One pass over ``batches``: each layer's per-input-channel ``max|x|``, and the groups of
    layers that read the same tensor (in the first batch; a layer called on several tensors
    belongs to the group of its first)."""
    absmax: dict[str, torch.Tensor] = {}
    readers: dict[int, list[str]] = {}
    alive: list[torch.Tensor] = []  # held so that no id is reused by a later tensor during the pass
    first = [True]
    placed: set[str] = set()

    def observe(module, args, name):
        x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
        absmax[name] = x if name not in absmax else torch.maximum(absmax[name], x)
        if first[0] and name not in placed:
            readers.setdefault(id(args[0]), []).append(name)
            placed.add(name)
            alive.append(args[0])

    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: observe(mod, args, name))
             for name, m in layers.items()]
    try:
        for inputs in batches:
            model.eval()(*inputs)
            first[0] = False
    finally:
        for h in hooks:
            h.remove()
    order = list(layers).index
    groups = sorted((sorted(g, key=order) for g in readers.values()), key=lambda g: order(g[0]))
    return absmax, groups


def smoothing_factors(x_absmax: torch.Tensor, weights: Iterable[torch.Tensor], alpha: float) -> torch.Tensor:
    """Per input channel ``max|X_j|^alpha / max|W_j|^(1 - alpha)``, the weight maximum taken over
    every weight (``[out, in]``) that reads the input; channels never active keep factor 1."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"smoothquant alpha must be in [0, 1], got {alpha}")
    w = torch.stack([weight.detach().float().abs().amax(0) for weight in weights]).amax(0).clamp_min(1e-8)
    x = x_absmax.to(w.device)
    factors = torch.where(x > 0, x.clamp_min(1e-8) ** alpha / w ** (1 - alpha), torch.ones_like(x))
    return factors.clamp(1e-4, 1e4)
