"""Sub-byte storage: 4-bit codes packed two to a byte (low nibble first), as ONNX's int4/uint4
and GPTQ checkpoints store them. Codes are stored offset to unsigned (``q - qmin``)."""

from __future__ import annotations

import torch


def pack_int4(q: torch.Tensor, qmin: int) -> torch.Tensor:
    """Codes in ``[qmin, qmin + 15]`` (any shape) -> uint8 of ``ceil(n / 2)`` bytes, row-major."""
    u = (q.flatten().to(torch.int32) - qmin)
    if u.numel() and (int(u.min()) < 0 or int(u.max()) > 15):
        raise ValueError(f"codes outside the 4-bit range starting at {qmin}")
    if u.numel() % 2:
        u = torch.cat([u, u.new_zeros(1)])
    u = u.to(torch.uint8).reshape(-1, 2)
    return u[:, 0] | (u[:, 1] << 4)


def unpack_int4(packed: torch.Tensor, shape: torch.Size | tuple[int, ...], qmin: int) -> torch.Tensor:
    """Inverse of ``pack_int4``: int32 codes of ``shape``."""
    n = 1
    for d in shape:
        n *= d
    low, high = packed & 0x0F, packed >> 4
    u = torch.stack([low, high], dim=1).flatten()[:n]
    return (u.to(torch.int32) + qmin).reshape(shape)
