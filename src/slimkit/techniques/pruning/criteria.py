"""Which weights to remove: scores (magnitude, movement, random) turned into keep-masks, per
layer or over all layers at once, unstructured or N:M, and the gradual sparsity schedule.

A mask is a bool tensor of the weight's shape, True where the weight is kept. Ties at the
threshold are broken by position (``topk`` on the flattened scores), so a mask keeps exactly
the number of weights asked for.
"""

from __future__ import annotations

import math
from typing import Literal, Mapping

import torch

Scope = Literal["global", "layer"]


def keep_count(numel: int, sparsity: float) -> int:
    """Weights kept out of ``numel`` at ``sparsity`` (rounded to the nearest whole weight)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return max(1, numel - round(sparsity * numel))


def topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """True at the ``keep`` highest scores."""
    flat = scores.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.topk(flat, keep, sorted=False).indices] = True
    return mask.reshape(scores.shape)


def masks_from_scores(scores: Mapping[str, torch.Tensor], sparsity: float, scope: Scope) -> dict[str, torch.Tensor]:
    """Keep-masks reaching ``sparsity``: the same share in every layer (``layer``) or the
    highest scores over all layers together (``global``: layers whose weights matter less give
    up more of them)."""
    if scope == "layer":
        return {name: topk_mask(s, keep_count(s.numel(), sparsity)) for name, s in scores.items()}
    if scope != "global":
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    flat = torch.cat([s.flatten().float() for s in scores.values()])
    keep = topk_mask(flat, keep_count(flat.numel(), sparsity))
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = keep[start:start + s.numel()].reshape(s.shape)
        start += s.numel()
    return out


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M semi-structured mask: in every run of ``m`` consecutive weights along a row's inputs
    (the last dimension of ``(out, in)``; a conv's flattened ``in * kh * kw``), keep the ``n``
    highest scores. 2:4 is what sparse tensor cores run."""
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < n < m, got {n}:{m}")
    rows = scores.reshape(scores.shape[0], -1)
    if rows.shape[1] % m:
        raise ValueError(f"N:M: rows of {rows.shape[1]} weights do not split into groups of {m}")
    groups = rows.reshape(rows.shape[0], -1, m)
    idx = torch.topk(groups, n, dim=-1, sorted=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.reshape(scores.shape)


def cubic_sparsity(step: int, total: int, final: float, initial: float = 0.0, end: float = 0.75) -> float:
    """Zhu & Gupta (2017)'s gradual schedule: ``s_t = s_f + (s_i - s_f) (1 - t / T)^3`` over the
    first ``end`` share of the ``total`` steps, then ``final``. Prunes fast while many redundant
    weights remain, slowly near the target, and leaves the last steps to recover."""
    horizon = max(1, math.ceil(end * total))
    progress = min(1.0, step / horizon)
    return final + (initial - final) * (1.0 - progress) ** 3
