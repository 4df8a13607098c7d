"""Affine integer quantization: the arithmetic every quantization method here shares.

``q = clamp(round(x / scale) + zero_point, qmin, qmax)`` and ``x ≈ (q - zero_point) * scale``,
per tensor, per channel (one scale per slice along ``axis``) or per group (one scale per
``group_size`` consecutive values along the last axis). Symmetric schemes fix the zero point at
0 (signed range, ``[-2^(b-1), 2^(b-1) - 1]``); asymmetric ones use the unsigned range
``[0, 2^b - 1]`` and place the zero point so that the real value 0 is exactly representable
(needed for zero padding and ReLU outputs). ``narrow_range`` drops the code ``-2^(b-1)``, so
symmetric codes are zero-centred (``[-(2^(b-1) - 1), 2^(b-1) - 1]``: ternary at 2 bits).

``lsq_fake_quantize`` is the same arithmetic with a learnable step (LSQ, for quantization-aware
training); ``lsq_initial_step`` chooses that step's starting value from the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 8
    symmetric: bool = True
    axis: int | None = None  # per-channel axis; None = per tensor
    group_size: int | None = None  # per-group along the last axis (weights); excludes ``axis``
    narrow_range: bool = False  # symmetric only: no code -2^(b-1), so the codes are zero-centred

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 16:
            raise ValueError(f"bits must be in 2..16, got {self.bits}")
        if self.group_size is not None and (self.group_size < 1 or self.axis is not None):
            raise ValueError("group_size is a positive size and excludes a per-channel axis")
        if self.narrow_range and not self.symmetric:
            raise ValueError("narrow_range applies to symmetric (signed) codes only")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) + int(self.narrow_range) if self.symmetric else 0

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


# ---------------------------------------------------------------------------------------------
# learned step size (LSQ: Esser et al., "Learned Step Size Quantization", ICLR 2020)


class _LearnedStepFakeQuant(torch.autograd.Function):
    """``clamp(round(x / s), lo, hi) * s`` with LSQ's gradients (written out: the forward pass is
    then exactly the integer grid a converted model uses, with no detach tricks rounding it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, step: torch.Tensor, lo: int, hi: int, grad_scale: float,
                reciprocal: bool) -> torch.Tensor:
        v = x * (1.0 / step.double()).float() if reciprocal else x / step
        q = torch.round(v).clamp(lo, hi)
        ctx.save_for_backward(v, q)
        ctx.lo, ctx.hi, ctx.grad_scale, ctx.step_shape = lo, hi, grad_scale, step.shape
        return q * step

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        v, q = ctx.saved_tensors
        inside = (v > ctx.lo) & (v < ctx.hi)
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_step = None
        if ctx.needs_input_grad[1]:
            # d(q s)/ds: round(v) - v inside the range (the straight-through round), the clipped code outside
            grad_step = (grad * torch.where(inside, q - v, q)).sum_to_size(ctx.step_shape) * ctx.grad_scale
        return grad_x, grad_step, None, None, None, None


def lsq_grad_scale(values_per_step: int, qmax: int) -> float:
    """LSQ's step-gradient scale ``g = 1 / sqrt(N * Q_P)``: keeps the step's update in proportion
    to the weights' update however many values (``N``) share the step and however many levels."""
    return 1.0 / math.sqrt(max(values_per_step, 1) * max(qmax, 1))


def lsq_fake_quantize(x: torch.Tensor, step: torch.Tensor, spec: QuantSpec, zero_point: int = 0,
                      reciprocal: bool = False) -> torch.Tensor:
    """LSQ fake quantization: ``clamp(round(x / s), qmin - z, qmax - z) * s`` (= ``dequantize(quantize(x))``
    with scale ``s`` and integer zero point ``z``), differentiable in ``x`` and in the step ``s``.

    ``x``'s gradient is the straight-through estimator (1 inside the range, 0 outside); the step's is
    LSQ's ``(round(x/s) - x/s)`` inside and the clipped code outside, scaled by ``lsq_grad_scale``
    with ``N`` the values sharing one step in this call (per channel: that channel's elements;
    per tensor: all of ``x``). ``step`` has one entry per slice along ``spec.axis`` (or is a scalar).
    ``reciprocal``: compute ``x * (1/s)`` as torch's ``quantize_per_tensor`` does (``ActQuant``), not
    ``x / s`` as ``quantize`` does, so a converted model rounds exactly as this did.
    """
    if spec.group_size is not None:
        raise ValueError("lsq_fake_quantize is per tensor or per channel, not per group")
    lo, hi = spec.qmin - zero_point, spec.qmax - zero_point
    g = lsq_grad_scale(x.numel() // max(step.numel(), 1), hi)
    return _LearnedStepFakeQuant.apply(x, _broadcast(step, x, spec), lo, hi, g, reciprocal)


StepInit = Literal["lsq", "lsq+", "minmax", "mse"]


def lsq_initial_step(x: torch.Tensor, spec: QuantSpec, method: StepInit = "mse", grid: int = 100) -> torch.Tensor:
    """A starting step for symmetric codes of ``x``, one per slice along ``spec.axis``:

    - ``lsq``: ``2 mean|x| / sqrt(Q_P)`` (LSQ's rule);
    - ``lsq+``: ``max(|mu - 3 sigma|, |mu + 3 sigma|) / 2^(b-1)`` (LSQ+, Bhalgat et al. 2020);
    - ``minmax``: ``max|x| / Q_P`` (round-to-nearest PTQ's scale: nothing clipped);
    - ``mse``: the clip among ``grid`` fractions of max|x| with the least squared error.
    """
    if not spec.symmetric:
        raise ValueError("lsq_initial_step chooses steps for symmetric codes")
    x = x.detach().float()
    dims = reduce_dims(x, spec.axis)
    if method == "lsq":
        step = 2 * x.abs().mean(dim=dims) / math.sqrt(spec.qmax)
    elif method == "lsq+":
        mu, sigma = x.mean(dim=dims), x.std(dim=dims, unbiased=False)
        step = torch.maximum((mu - 3 * sigma).abs(), (mu + 3 * sigma).abs()) / 2 ** (spec.bits - 1)
    elif method == "minmax":
        step = weight_qparams(x, spec)[0]
    elif method == "mse":
        step = _mse_step(x, spec, dims, grid)
    else:
        raise ValueError(f"unknown step initialisation {method!r}")
    return step.clamp_min(1e-12)


def _mse_step(x: torch.Tensor, spec: QuantSpec, dims: tuple[int, ...], grid: int) -> torch.Tensor:
    top = x.abs().amax(dim=dims).clamp_min(1e-12)
    zero = torch.zeros_like(top, dtype=torch.int32)
    best, best_err = top / spec.qmax, torch.full_like(top, float("inf"))
    for fraction in torch.linspace(1.0 / grid, 1.0, grid).tolist():
        step = top * fraction / spec.qmax
        err = ((dequantize(quantize(x, step, zero, spec), step, zero, spec) - x) ** 2).sum(dim=dims)
        better = err < best_err
        best, best_err = torch.where(better, step, best), torch.where(better, err, best_err)
    return best
