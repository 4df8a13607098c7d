"""Affine integer quantization: the arithmetic every quantization method here shares.

``q = clamp(round(x / scale) + zero_point, qmin, qmax)`` and ``x ≈ (q - zero_point) * scale``,
per tensor, per channel (one scale per slice along ``axis``) or per group (one scale per
``group_size`` consecutive values along the last axis). Symmetric schemes fix the zero point at
0 (signed range, ``[-2^(b-1), 2^(b-1) - 1]``); asymmetric ones use the unsigned range
``[0, 2^b - 1]`` and place the zero point so that the real value 0 is exactly representable
(needed for zero padding and ReLU outputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 8
    symmetric: bool = True
    axis: int | None = None  # per-channel axis; None = per tensor
    group_size: int | None = None  # per-group along the last axis (weights); excludes ``axis``

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 16:
            raise ValueError(f"bits must be in 2..16, got {self.bits}")
        if self.group_size is not None and (self.group_size < 1 or self.axis is not None):
            raise ValueError("group_size is a positive size and excludes a per-channel axis")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2 ** self.bits - 1


def reduce_dims(x: torch.Tensor, axis: int | None) -> tuple[int, ...]:
    """The dimensions reduced to get one statistic per slice along ``axis`` (all when None)."""
    if axis is None:
        return tuple(range(x.dim()))
    axis = axis % x.dim()
    return tuple(d for d in range(x.dim()) if d != axis)


def group_view(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """``x`` as ``(..., n_groups, group_size)`` along its last axis (which must divide evenly)."""
    if x.shape[-1] % group_size:
        raise ValueError(f"last dimension {x.shape[-1]} is not a multiple of group_size {group_size}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec,
                       eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) covering ``[lo, hi]`` (widened to include 0), as float32 and int32."""
    lo = torch.minimum(lo.float(), torch.zeros_like(lo, dtype=torch.float32))
    hi = torch.maximum(hi.float(), torch.zeros_like(hi, dtype=torch.float32))
    if spec.symmetric:
        bound = torch.maximum(-lo, hi)
        scale = (bound / ((spec.qmax - spec.qmin) / 2)).clamp_min(eps)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = ((hi - lo) / (spec.qmax - spec.qmin)).clamp_min(eps)
        zero_point = (spec.qmin - torch.round(lo / scale)).clamp(spec.qmin, spec.qmax).to(torch.int32)
    return scale, zero_point


def _broadcast(p: torch.Tensor, x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    if spec.group_size is not None:
        return p.unsqueeze(-1)  # (..., n_groups) -> (..., n_groups, 1) against the grouped view
    if spec.axis is None or p.dim() == 0:
        return p
    shape = [1] * x.dim()
    shape[spec.axis % x.dim()] = -1
    return p.reshape(shape)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Integer codes of ``x`` (int32 tensor of ``x``'s shape), round half to even."""
    xv = group_view(x, spec.group_size) if spec.group_size is not None else x
    q = torch.round(xv.float() / _broadcast(scale, xv, spec)) + _broadcast(zero_point, xv, spec)
    return q.clamp(spec.qmin, spec.qmax).to(torch.int32).reshape(x.shape)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    qv = group_view(q, spec.group_size) if spec.group_size is not None else q
    x = (qv.float() - _broadcast(zero_point, qv, spec)) * _broadcast(scale, qv, spec)
    return x.reshape(q.shape)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``dequantize(quantize(x))`` with the straight-through estimator: the gradient passes
    unchanged inside the representable range and is zero outside it."""
    xq = dequantize(quantize(x.detach(), scale, zero_point, spec), scale, zero_point, spec)
    xv = group_view(x, spec.group_size) if spec.group_size is not None else x
    s, z = _broadcast(scale, xv, spec), _broadcast(zero_point, xv, spec)
    inside = ((xv >= (spec.qmin - z) * s) & (xv <= (spec.qmax - z) * s)).reshape(x.shape)
    return torch.where(inside, x + (xq - x).detach(), xq)


def weight_qparams(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max (scale, zero_point) of a weight under ``spec`` (per tensor, channel or group)."""
    if spec.group_size is not None:
        wv = group_view(w.detach(), spec.group_size)
        return qparams_from_range(wv.amin(-1), wv.amax(-1), spec)
    dims = reduce_dims(w, spec.axis)
    return qparams_from_range(w.detach().amin(dim=dims), w.detach().amax(dim=dims), spec)
