"""Tucker-2 and CP decompositions of Conv2d kernels, and the convolution chains they become.

- **Tucker-2** (Kim et al., "Compression of Deep Convolutional Neural Networks for Fast and Low
  Power Mobile Applications", ICLR 2016): the kernel ``K (O, I, kh, kw)`` is decomposed along its
  two channel modes, ``K ≈ core ×₀ U_out ×₁ U_in`` with a core ``(r_out, r_in, kh, kw)``; the layer
  becomes a 1×1 convolution ``I → r_in``, the ``kh×kw`` core convolution ``r_in → r_out`` (with the
  original stride, padding and dilation), and a 1×1 convolution ``r_out → O`` carrying the bias.
  At full ranks the factors are orthogonal and square, and the chain equals the layer (tested).
- **CP** (Lebedev et al., "Speeding-up Convolutional Neural Networks Using Fine-tuned
  CP-Decomposition", ICLR 2015): ``K ≈ Σ_r λ_r a_r ⊗ b_r ⊗ c_r ⊗ d_r``; the layer becomes a 1×1
  convolution ``I → R``, a depthwise ``kh×1`` and a depthwise ``1×kw`` convolution over the R
  channels (the stride and padding split between them) and a 1×1 convolution ``R → O``.

Both decompositions are written here on torch in float64 (HOOI for Tucker-2, alternating least
squares for CP), a few lines each and tested against exact decompositions. TensorLy has them too,
but its ALS forms the full Khatri-Rao product in every MTTKRP (``_mttkrp`` here contracts one
mode at a time), and a 7 MB dependency for forty lines did not pay.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from slimkit.encoding.twins import take_conv_geometry


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def check_factorizable(conv: nn.Conv2d) -> str | None:
    """Why ``conv`` cannot be decomposed here, or None."""
    if conv.groups != 1:
        return f"groups={conv.groups} (only dense convolutions are decomposed)"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r} (give the padding as numbers)"
    return None


class Tucker2Conv(nn.Module):
    """``last(core(first(x)))``: 1×1 ``I → r_in``, kh×kw ``r_in → r_out``, 1×1 ``r_out → O``.
    Not an encoded layer: its children are plain Conv2d layers."""

    def __init__(self, conv: nn.Conv2d, ranks: tuple[int, int]) -> None:
        super().__init__()
        self.ranks = (int(ranks[0]), int(ranks[1]))  # (r_out, r_in)
        r_out, r_in = self.ranks
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.first = nn.Conv2d(conv.in_channels, r_in, 1, bias=False)
        self.core = nn.Conv2d(r_in, r_out, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                              dilation=conv.dilation, bias=False)
        self.last = nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None)
        take_conv_geometry(self, conv)

    @property
    def weight(self) -> torch.Tensor:
        """The dense kernel the chain applies (third-party forwards read ``layer.weight``)."""
        return torch.einsum("os,srhw,ri->oihw", self.last.weight[:, :, 0, 0], self.core.weight,
                            self.first.weight[:, :, 0, 0])

    @property
    def bias(self) -> torch.Tensor | None:
        return self.last.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.core(self.first(x)))


class CPConv(nn.Module):
    """``last(horizontal(vertical(first(x))))``: 1×1 ``I → R``, depthwise kh×1 and 1×kw, 1×1 ``R → O``.
    Not an encoded layer: its children are plain Conv2d layers."""

    def __init__(self, conv: nn.Conv2d, rank: int) -> None:
        super().__init__()
        self.rank = int(rank)
        (kh, kw), (sh, sw) = conv.kernel_size, _pair(conv.stride)
        (ph, pw), (dh, dw) = _pair(conv.padding), _pair(conv.dilation)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.first = nn.Conv2d(conv.in_channels, rank, 1, bias=False)
        self.vertical = nn.Conv2d(rank, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1),
                                  groups=rank, bias=False)
        self.horizontal = nn.Conv2d(rank, rank, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw),
                                    groups=rank, bias=False)
        self.last = nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None)
        take_conv_geometry(self, conv)

    @property
    def weight(self) -> torch.Tensor:
        """The dense kernel the chain applies (third-party forwards read ``layer.weight``)."""
        return torch.einsum("or,rh,rw,ri->oihw", self.last.weight[:, :, 0, 0], self.vertical.weight[:, 0, :, 0],
                            self.horizontal.weight[:, 0, 0, :], self.first.weight[:, :, 0, 0])

    @property
    def bias(self) -> torch.Tensor | None:
        return self.last.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.horizontal(self.vertical(self.first(x))))


def tucker2_ranks_for_ratio(conv: nn.Conv2d, ratio: float) -> tuple[int, int]:
    """Ranks ``(r_out, r_in) = (ρ O, ρ I)`` with the single ρ whose chain keeps ``ratio`` of the
    layer's weights (``I r_in + r_in r_out kh kw + r_out O``; solved for ρ)."""
    o, i = conv.out_channels, conv.in_channels
    k = conv.kernel_size[0] * conv.kernel_size[1]
    # k o i ρ² + (i² + o²) ρ − ratio k o i = 0
    a, b, c = k * o * i, i * i + o * o, -ratio * k * o * i
    rho = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    return max(1, min(o, round(rho * o))), max(1, min(i, round(rho * i)))


def cp_rank_for_ratio(conv: nn.Conv2d, ratio: float) -> int:
    """The CP rank whose chain keeps ``ratio`` of the layer's weights (``R (I + kh + kw + O)``)."""
    o, i = conv.out_channels, conv.in_channels
    (kh, kw) = conv.kernel_size
    return max(1, math.floor(ratio * o * i * kh * kw / (i + kh + kw + o)))


def _leading(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """The ``rank`` leading left singular vectors of ``matrix``."""
    return torch.linalg.svd(matrix, full_matrices=False)[0][:, :rank]


def tucker2_factors(kernel: torch.Tensor, ranks: tuple[int, int], iters: int = 100, tol: float = 1e-10
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(core (r_out, r_in, kh, kw), U_out (O, r_out), U_in (I, r_in))`` by HOOI from an HOSVD start:
    each factor in turn the leading singular vectors of the kernel projected on the other."""
    k = kernel.detach().to(torch.float64).cpu()
    r_out, r_in = ranks
    u_out = _leading(k.flatten(1), r_out)
    u_in = _leading(k.transpose(0, 1).flatten(1), r_in)
    previous = None
    for _ in range(iters):
        u_out = _leading(torch.einsum("oihw,ir->orhw", k, u_in).flatten(1), r_out)
        u_in = _leading(torch.einsum("oihw,os->ishw", k, u_out).flatten(1), r_in)
        norm = float(torch.einsum("oihw,os,ir->srhw", k, u_out, u_in).norm())  # the core's: grows to the fit
        if previous is not None and abs(norm - previous) <= tol * max(norm, 1e-300):
            break
        previous = norm
    core = torch.einsum("oihw,os,ir->srhw", k, u_out, u_in)
    return core, u_out, u_in


def tucker2_conv(conv: nn.Conv2d, ranks: tuple[int, int], iters: int = 100) -> Tucker2Conv:
    core, u_out, u_in = tucker2_factors(conv.weight, ranks, iters)
    twin = Tucker2Conv(conv, ranks).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        twin.first.weight.copy_(u_in.T[:, :, None, None])
        twin.core.weight.copy_(core)
        twin.last.weight.copy_(u_out[:, :, None, None])
        if conv.bias is not None:
            twin.last.bias.copy_(conv.bias)
    return twin


def _mttkrp(k: torch.Tensor, factors: list[torch.Tensor], n: int) -> torch.Tensor:
    """``K_(n) · KR(F_m, m ≠ n)`` as ``(I_n, R)``, contracting the largest other mode first so no
    intermediate exceeds ``numel(K) / I_max × R`` (the Khatri-Rao matrix itself can be far larger)."""
    letters = "abcd"
    order = sorted((m for m in range(4) if m != n), key=lambda m: -k.shape[m])
    first = order[0]
    kept = [m for m in range(4) if m != first]
    t = torch.einsum(f"{letters}, {letters[first]}r -> {''.join(letters[m] for m in kept)}r", k, factors[first])
    for m in order[1:]:
        kept_now = [x for x in kept if x != m]
        t = torch.einsum(f"{''.join(letters[x] for x in kept)}r, {letters[m]}r -> "
                         f"{''.join(letters[x] for x in kept_now)}r", t, factors[m])
        kept = kept_now
    return t


def _cp_als(k: torch.Tensor, factors: list[torch.Tensor], iters: int, tol: float
            ) -> tuple[torch.Tensor, list[torch.Tensor], float]:
    """Alternating least squares for a 4-way CP decomposition from ``factors``: each factor in turn
    solves ``F_n (⊙_{m≠n} F_m^T F_m) = K_(n) KR(F_{m≠n})``; the error comes from the Gram identity
    ``||K - K̂||² = ||K||² - 2<K, K̂> + ||K̂||²`` (no reconstruction per iteration)."""
    norm2 = float(k.pow(2).sum())
    weights = torch.ones(factors[0].shape[1], dtype=k.dtype)
    previous, error = None, 1.0
    for _ in range(iters):
        for n in range(4):
            others = [f for m, f in enumerate(factors) if m != n]
            gram = torch.ones(len(weights), len(weights), dtype=k.dtype)
            for f in others:
                gram = gram * (f.T @ f)
            mttkrp = _mttkrp(k, factors, n)
            factors[n] = torch.linalg.lstsq(gram, mttkrp.T, driver="gelsd").solution.T
            weights = factors[n].norm(dim=0).clamp_min(1e-300)
            factors[n] = factors[n] / weights
        inner = float((mttkrp * factors[3]).sum(0) @ weights)
        gram = gram * (factors[3].T @ factors[3])
        fit2 = float(weights @ gram @ weights)
        error = max(norm2 - 2 * inner + fit2, 0.0) ** 0.5 / max(norm2 ** 0.5, 1e-300)
        if previous is not None and abs(previous - error) <= tol:
            break
        previous = error
    return weights, factors, error


def cp_factors(kernel: torch.Tensor, rank: int, iters: int = 300, seed: int = 0, restarts: int = 3,
               tol: float = 1e-10) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], float]:
    """``(λ (R,), (A (O, R), B (I, R), C (kh, R), D (kw, R)), relative error)`` by ALS, the best of an
    SVD start (each mode's leading singular vectors, seeded noise where the rank exceeds the mode)
    and ``restarts`` seeded random starts: ALS can stall in a poor fit (a "swamp") from one start."""
    k = kernel.detach().to(torch.float64).cpu()
    generator = torch.Generator().manual_seed(seed)
    best = None
    for start in range(restarts + 1):
        factors = [torch.randn(size, rank, generator=generator, dtype=k.dtype) for size in k.shape]
        if start == 0:
            for n, size in enumerate(k.shape):
                lead = _leading(k.movedim(n, 0).flatten(1), min(rank, size))
                factors[n][:, :lead.shape[1]] = lead
        weights, factors, error = _cp_als(k, factors, iters, tol)
        if best is None or error < best[2]:
            best = (weights, tuple(factors), error)
    return best


def cp_conv(conv: nn.Conv2d, rank: int, iters: int = 300, seed: int = 0) -> tuple[CPConv, float]:
    """The CP chain of ``conv`` and the kernel's relative approximation error."""
    weights, (a, b, c, d), error = cp_factors(conv.weight, rank, iters, seed)
    twin = CPConv(conv, rank).to(device=conv.weight.device, dtype=conv.weight.dtype)
    # λ spread over the four factors so no stage carries an outsized scale
    share = weights.abs().clamp_min(1e-300).pow(0.25)
    sign = torch.sign(weights)
    with torch.no_grad():
        twin.first.weight.copy_((b * share).T[:, :, None, None])
        twin.vertical.weight.copy_((c * share).T[:, None, :, None])
        twin.horizontal.weight.copy_((d * share).T[:, None, None, :])
        twin.last.weight.copy_((a * share * sign)[:, :, None, None])
        if conv.bias is not None:
            twin.last.bias.copy_(conv.bias)
    return twin, error
