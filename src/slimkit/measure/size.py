"""Parameter counts and bytes. Sizes are bytes of real serialized artifacts, never estimates."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from slimkit.core.io import state_dict_bytes, tensors_for_saving


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in _unique(model.parameters()))


def count_nonzero_params(model: nn.Module) -> int:
    """Parameter elements that are not exactly zero (what pruning removes)."""
    return sum(int(torch.count_nonzero(p.detach())) for p in _unique(model.parameters()))


def dense_fp32_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and floating-point buffer stored densely as float32."""
    tensors = tensors_for_saving(model.state_dict())
    return sum(4 * t.numel() for t in tensors.values() if t.is_floating_point())


def tensors_bytes(state: Mapping[str, torch.Tensor]) -> int:
    """Raw payload bytes of a set of tensors (no container overhead)."""
    return sum(t.numel() * t.element_size() for t in tensors_for_saving(state).values())


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict serialized with safetensors (payload plus header)."""
    return len(state_dict_bytes(model.state_dict()))


def file_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of an artifact on disk: a file, or every file under a directory."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _unique(params):
    seen: set[int] = set()
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            yield p
