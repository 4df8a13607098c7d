"""Parameter counts and bytes. Sizes are bytes of real serialized artifacts, never estimates."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from slimkit.core.io import state_dict_bytes, tensors_for_saving


_CODE_DTYPES = (torch.int8, torch.uint8)


def count_params(model: nn.Module) -> int:
    """Number of weight elements: parameters, plus the 8-bit integer buffers in which quantized
    layers keep their weight codes (shared tensors counted once)."""
    return sum(p.numel() for p in _weights(model))


def count_nonzero_params(model: nn.Module) -> int:
    """Weight elements (as ``count_params`` counts them) that are not exactly zero (what pruning removes)."""
    return sum(int(torch.count_nonzero(p.detach())) for p in _weights(model))


def dense_fp32_bytes(model: nn.Module) -> int:
    """Bytes of every parameter, floating-point buffer and 8-bit weight code stored densely as float32."""
    tensors = tensors_for_saving(model.state_dict())
    return sum(4 * t.numel() for t in tensors.values() if t.is_floating_point() or t.dtype in _CODE_DTYPES)


def _weights(model: nn.Module):
    yield from _unique(model.parameters())
    yield from _unique(b for b in model.buffers() if b.dtype in _CODE_DTYPES)


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
