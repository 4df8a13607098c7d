"""Weight counts and bytes. Sizes are bytes of real serialized artifacts, never estimates; weight
counts are the dense equivalent's (an encoded layer counts the weights it stands for, through
``slimkit.encoding``'s protocol, not the bytes it stores)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from slimkit.core.io import state_dict_bytes, tensors_for_saving
from slimkit.encoding.counts import dense_fp32_bytes
from slimkit.encoding.counts import logical_param_count as count_params
from slimkit.encoding.counts import nonzero_param_count as count_nonzero_params

__all__ = ["count_nonzero_params", "count_params", "dense_fp32_bytes", "file_bytes", "serialized_bytes",
           "tensors_bytes"]


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
