"""Figures of a model whose cost depends on its input (early exits, adaptive computation):
taken row by row over real test rows, since row 0 alone would show one path's cost only."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from slimkit.data.base import Split
from slimkit.measure.macs import count_macs


def has_input_dependent_cost(model: nn.Module) -> bool:
    """Whether the model declares ``input_dependent_cost = True`` (an attribute of the root module)."""
    return getattr(model, "input_dependent_cost", False) is True


def spread_rows(split: Split, n: int, device: torch.device | str) -> list[tuple[torch.Tensor, ...]]:
    """``n`` rows spread evenly over ``split`` (all of them if fewer), each as a batch of one:
    splits may be ordered (token sequences by length), so the first rows alone would be biased."""
    count = min(n, len(split))
    index = torch.linspace(0, len(split) - 1, count).round().long().unique().tolist() if count else []
    return [tuple(t[i:i + 1].to(device) for t in split.inputs) for i in index]


def per_row_macs(model: nn.Module, rows: list[tuple[torch.Tensor, ...]]) -> dict[str, Any]:
    """MACs of each row's forward pass, summarised: mean, min, max and the number of rows."""
    counts = [count_macs(model, row) for row in rows]
    return {"mean": sum(counts) / len(counts), "min": min(counts), "max": max(counts), "rows": len(counts)}
