"""Truncated SVD of Linear layers, plain and activation-aware, and the two-Linear layer it makes.

A weight ``W (out, in)`` of rank ``r`` is stored as ``up (out, r) @ down (r, in)``: ``r (in + out)``
numbers instead of ``in * out``, and as many fewer multiply-adds, so a layer shrinks once
``r < in * out / (in + out)``.

- ``plain``: the Eckart-Young truncation of ``W`` itself, the best rank-r fit of the *weights*.
  Its error on the layer's output ignores which input directions the data actually uses.
- ``asvd`` (Yuan et al., "ASVD: Activation-aware Singular Value Decomposition for Compressing
  Large Language Models", 2023): columns scaled by the mean absolute activation of their input
  channel, ``W diag(s)``, truncated, and the scaling undone, so channels the data drives hard
  keep more of their weight.
- ``whiten`` (Wang et al., "SVD-LLM: Truncation-aware Singular Value Decomposition for Large
  Language Model Compression", ICLR 2025): with ``X^T X = L L^T`` (Cholesky of the calibration
  inputs' Gram matrix), the truncation of ``W L`` times ``L^{-1}`` is the rank-r ``W'`` with the
  smallest output error ``||(W - W') X||_F`` over those inputs, and that error is exactly the
  root sum of squares of the dropped singular values of ``W L`` (tested).

Written here rather than taken from a library: each is an SVD from ``torch.linalg`` plus a few
lines of scaling; the published implementations are scripts tied to LLaMA checkpoints on CUDA.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

METHODS = ("plain", "asvd", "whiten")


class LowRankLinear(nn.Module):
    """``up(down(x))``: a Linear factorized through ``rank`` channels (down has no bias). Not an
    encoded layer: its children are plain Linears, which every step and backend already reads."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    @property
    def weight(self) -> torch.Tensor:
        """``up.weight @ down.weight``: the rank-r weight the chain applies (third-party forwards
        read ``layer.weight``)."""
        return self.up.weight @ self.down.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.up.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def rank_for_ratio(out_features: int, in_features: int, ratio: float) -> int:
    """The rank that keeps ``ratio`` of the layer's weights (at least 1)."""
    return max(1, math.floor(ratio * out_features * in_features / (out_features + in_features)))


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values hold ``energy`` of the sum of their squares."""
    power = singular_values.double().pow(2)
    cumulative = power.cumsum(0) / power.sum().clamp_min(1e-300)
    return min(int((cumulative < energy - 1e-12).sum()) + 1, len(singular_values))


class InputStatistics:
    """Running Gram matrix ``X^T X / n`` and mean absolute value of a layer's input rows."""

    def __init__(self, in_features: int) -> None:
        self.gram = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.abs_mean = torch.zeros(in_features, dtype=torch.float64)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64).cpu()
        total = self.n + x.shape[0]
        if total == 0:
            return
        self.gram.mul_(self.n / total).add_(x.T @ x, alpha=1.0 / total)
        self.abs_mean.mul_(self.n / total).add_(x.abs().sum(0), alpha=1.0 / total)
        self.n = total


def _scaling(weight: torch.Tensor, method: str, stats: InputStatistics | None, alpha: float,
             damp: float) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(S, S^{-1}) with W ≈ (W S)_r S^{-1}; (None, None) for plain SVD."""
    if method == "plain":
        return None, None
    if stats is None or stats.n == 0:
        raise ValueError(f"{method} SVD needs calibration inputs for the layer")
    if method == "asvd":
        s = stats.abs_mean.clamp_min(1e-8).pow(alpha)
        s = s / s.mean()  # scale-free: only the relative weighting of input channels matters
        return torch.diag(s), torch.diag(1.0 / s)
    if method == "whiten":
        gram = stats.gram
        jitter = damp * float(gram.diagonal().mean().clamp_min(1e-12))
        eye = torch.eye(len(gram), dtype=gram.dtype)
        for attempt in range(6):  # a rank-deficient Gram (dead channels): damp until Cholesky succeeds
            chol, info = torch.linalg.cholesky_ex(gram + eye * jitter * 10**attempt)
            if int(info) == 0:
                break
        else:
            raise ValueError("the calibration inputs' Gram matrix is not positive definite even when damped")
        inverse = torch.linalg.solve_triangular(chol, eye, upper=False)
        return chol, inverse
    raise ValueError(f"unknown SVD method {method!r}; expected one of {METHODS}")


def factor_spectrum(weight: torch.Tensor, method: str = "plain", stats: InputStatistics | None = None, *,
                    alpha: float = 0.5, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                     torch.Tensor | None]:
    """The SVD that ``method`` truncates: ``(U, s, Vh, S^{-1})`` with ``W S = U diag(s) Vh``."""
    w = weight.detach().to(torch.float64).cpu()
    scale, inverse = _scaling(w, method, stats, alpha, damp)
    u, s, vh = torch.linalg.svd(w if scale is None else w @ scale, full_matrices=False)
    return u, s, vh, inverse


def truncate(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, inverse: torch.Tensor | None,
             rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(up (out, r), down (r, in))`` from a ``factor_spectrum``, the singular values split evenly."""
    root = s[:rank].sqrt()
    up = u[:, :rank] * root
    down = root[:, None] * vh[:rank]
    if inverse is not None:
        down = down @ inverse
    return up, down


def low_rank_linear(layer: nn.Linear, up: torch.Tensor, down: torch.Tensor) -> LowRankLinear:
    """A ``LowRankLinear`` holding ``up @ down`` and the layer's bias, on its device and dtype."""
    w = layer.weight
    twin = LowRankLinear(layer.in_features, layer.out_features, up.shape[1], bias=layer.bias is not None)
    twin.to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        twin.up.weight.copy_(up.to(w.dtype))
        twin.down.weight.copy_(down.to(w.dtype))
        if layer.bias is not None:
            twin.up.bias.copy_(layer.bias)
    return twin
