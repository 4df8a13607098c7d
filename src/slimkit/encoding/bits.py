"""Bit packing shared by every encoding: bool bit planes (sparse bitmasks), k-bit codes (weight
sharing) and 4-bit nibbles (int4 weight-only, in ONNX Runtime's ``MatMulNBits`` layout).

One layout throughout: element ``8k + i`` of a bit stream is bit ``i`` of byte ``k`` (little
endian), and a k-bit code occupies ``k`` consecutive bits, low bit first. So 4-bit codes are two
a byte, low nibble first, and ``pack_nibbles(c) == pack_codes(c, 4)``. Unpacking uses division
and remainder only: OpenVINO's PyTorch frontend has no bit shifts.
"""

from __future__ import annotations

import torch

_POWERS = [1 << i for i in range(8)]


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor (any shape) -> uint8 bytes, 8 elements a byte, little-endian bit order."""
    flat = mask.flatten().to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor(_POWERS, dtype=torch.int32, device=flat.device)
    return (flat.reshape(-1, 8).to(torch.int32) * weights).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: the first ``numel`` bits as bool."""
    p = packed.to(torch.int32).unsqueeze(-1)
    powers = torch.tensor(_POWERS, dtype=torch.int32, device=packed.device)
    bits = torch.remainder(torch.div(p, powers, rounding_mode="floor"), 2)
    return bits.flatten()[:numel].bool()


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes in [0, 2**bits) (any shape) -> uint8 bytes, ``bits`` bits each, low bit first."""
    flat = codes.flatten().to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits}) for {bits} bits")
    powers = torch.tensor([1 << j for j in range(bits)], dtype=torch.int64, device=flat.device)
    planes = torch.remainder(torch.div(flat[:, None], powers, rounding_mode="floor"), 2).bool()
    return pack_bits(planes)


def unpack_codes(packed: torch.Tensor, numel: int, bits: int) -> torch.Tensor:
    """Inverse of ``pack_codes``: the first ``numel`` codes as int64."""
    planes = unpack_bits(packed, numel * bits).reshape(numel, bits).to(torch.int64)
    powers = torch.tensor([1 << j for j in range(bits)], dtype=torch.int64, device=packed.device)
    return (planes * powers).sum(1)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes in [0, 15] (any shape) -> uint8 of ``ceil(n / 2)`` bytes, row-major, low
    nibble first (``pack_codes(codes, 4)``'s bytes, without the bit planes)."""
    u = codes.flatten().to(torch.int32)
    if u.numel() and (int(u.min()) < 0 or int(u.max()) > 15):
        raise ValueError("4-bit codes must lie in [0, 16)")
    if u.numel() % 2:
        u = torch.cat([u, u.new_zeros(1)])
    u = u.to(torch.uint8).reshape(-1, 2)
    return u[:, 0] | (u[:, 1] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """``(..., B)`` bytes -> ``(..., 2B)`` int32 4-bit codes, low nibble first; keeps the leading
    shape, so a gather of packed rows unpacks only those rows."""
    p = packed.to(torch.int32)
    high = torch.div(p, 16, rounding_mode="floor")
    return torch.stack([p - 16 * high, high], dim=-1).flatten(-2)
