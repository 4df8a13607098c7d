"""Weight counts of a model's dense equivalent: encoded layers count through the protocol (the
weights they stand for, not the bytes they store), plain modules by their tensors. Each tensor
and each module is counted once, however often it is shared."""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn

from slimkit.encoding.layer import EncodedLayer


def logical_param_count(model: nn.Module) -> int:
    """Weights of the dense equivalent: plain parameters plus each encoded layer's ``logical_weights``."""
    encoded, plain = _split(model)
    return sum(m.logical_weights() for m in encoded) + sum(p.numel() for p in _params(plain))


def nonzero_param_count(model: nn.Module) -> int:
    """Weights of the dense equivalent that are not exactly zero (what pruning keeps)."""
    encoded, plain = _split(model)
    with torch.no_grad():
        return sum(m.nonzero_weights() for m in encoded) + sum(int(torch.count_nonzero(p)) for p in _params(plain))


def dense_fp32_bytes(model: nn.Module) -> int:
    """Bytes of the dense equivalent stored as float32: parameters and floating-point persistent
    buffers (BatchNorm statistics) of plain modules, and each encoded layer's logical weights."""
    encoded, plain = _split(model)
    return 4 * (sum(m.logical_weights() for m in encoded) + sum(t.numel() for t in _params(plain))
                + sum(t.numel() for t in _float_buffers(plain)))


def _split(model: nn.Module) -> tuple[list[EncodedLayer], list[nn.Module]]:
    """The encoded layers of ``model`` and the plain modules outside them (each module once)."""
    encoded, plain, seen, stack = [], [], set(), [model]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        if isinstance(m, EncodedLayer):
            encoded.append(m)
        else:
            plain.append(m)
            stack.extend(m.children())
    return encoded, plain


def _params(modules: list[nn.Module]) -> Iterator[torch.Tensor]:
    yield from _unique(p for m in modules for p in m._parameters.values() if p is not None)


def _float_buffers(modules: list[nn.Module]) -> Iterator[torch.Tensor]:
    yield from _unique(b for m in modules for name, b in m._buffers.items()
                       if b is not None and b.is_floating_point() and name not in m._non_persistent_buffers_set)


def _unique(tensors) -> Iterator[torch.Tensor]:
    seen: set[int] = set()
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            yield t
