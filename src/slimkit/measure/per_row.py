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


def leading_rows(split: Split, n: int, device: torch.device | str) -> list[tuple[torch.Tensor, ...]]:
    """The first ``n`` rows of ``split`` (all of them if fewer), each as a batch of one."""
    return [tuple(t[i:i + 1].to(device) for t in split.inputs) for i in range(min(n, len(split)))]


def per_row_macs(model: nn.Module, rows: list[tuple[torch.Tensor, ...]]) -> dict[str, Any]:
    """MACs of each row's forward pass, summarised: mean, min, max and the number of rows."""
    counts = [count_macs(model, row) for row in rows]
    return {"mean": sum(counts) / len(counts), "min": min(counts), "max": max(counts), "rows": len(counts)}
