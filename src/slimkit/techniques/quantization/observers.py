"""Calibration observers: from the values a tensor takes on calibration data to its range.

``minmax`` keeps the exact running extremes (per tensor or per channel). The others choose a
clipping range that trades rounding error against clipping error, from a sample of the observed
values (per tensor; activations are quantized per tensor):

- ``percentile``: the range holding ``percentile`` % of the |values| (outliers clipped);
- ``mse``: the symmetric clip that minimises the mean squared quantization error (searched);
- ``entropy``: TensorRT's calibration: the clip minimising the KL divergence between the
  histogram of |values| and its quantized version (Migacz, "8-bit inference with TensorRT", 2017).

Samples are drawn uniformly at random with a fixed seed (at most ``max_samples`` kept), so the
result is deterministic and memory stays bounded however long calibration runs.
"""

from __future__ import annotations

from typing import Literal

import torch

from slimkit.techniques.quantization.qscheme import QuantSpec, dequantize, qparams_from_range, quantize, reduce_dims

ObserverName = Literal["minmax", "percentile", "mse", "entropy"]


class Observer:
    """Accumulates statistics of one tensor; ``qparams(spec)`` gives (scale, zero_point)."""

    def __init__(self, axis: int | None = None, max_samples: int = 1 << 20, seed: int = 0) -> None:
        self.axis = axis
        self.max_samples = max_samples
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.samples: list[torch.Tensor] = []
        self.seen = 0
        self._gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        dims = reduce_dims(x, self.axis)
        lo, hi = x.amin(dim=dims), x.amax(dim=dims)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        if self.needs_samples:
            flat = x.flatten()
            self.seen += flat.numel()
            keep = min(flat.numel(), self.max_samples // 8)
            if keep < flat.numel():
                flat = flat[torch.randint(flat.numel(), (keep,), generator=self._gen)]
            self.samples.append(flat)
            total = sum(s.numel() for s in self.samples)
            if total > self.max_samples:  # thin the pool uniformly
                pool = torch.cat(self.samples)
                self.samples = [pool[torch.randperm(pool.numel(), generator=self._gen)[: self.max_samples // 2]]]

    needs_samples = False

    def range(self, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lo is None:
            raise RuntimeError("observer saw no data: run calibration batches first")
        return self.lo, self.hi

    def qparams(self, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.range(spec)
        return qparams_from_range(lo, hi, spec)


class MinMaxObserver(Observer):
    pass


class _ClipObserver(Observer):
    """Per-tensor observers that choose a clip ``c`` and use ``[-c, c]`` (symmetric) or the
    observed range clipped to ``[-c, c]`` (asymmetric)."""

    needs_samples = True

    def __init__(self, axis: int | None = None, **kwargs) -> None:
        if axis is not None:
            raise ValueError(f"{type(self).__name__} is per tensor (activations); use minmax per channel")
        super().__init__(None, **kwargs)

    def clip(self, values: torch.Tensor, spec: QuantSpec) -> float:
        raise NotImplementedError

    def range(self, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = super().range(spec)
        c = self.clip(torch.cat(self.samples), spec)
        return torch.maximum(lo, torch.tensor(-c)), torch.minimum(hi, torch.tensor(c))


class PercentileObserver(_ClipObserver):
    def __init__(self, percentile: float = 99.99, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def clip(self, values: torch.Tensor, spec: QuantSpec) -> float:
        return float(torch.quantile(values.abs().double(), self.percentile / 100))


class MseObserver(_ClipObserver):
    """Searches ``grid`` clips between 1% and 100% of max |x| for the least squared error."""

    def __init__(self, grid: int = 100, **kwargs) -> None:
        super().__init__(**kwargs)
        self.grid = grid

    def clip(self, values: torch.Tensor, spec: QuantSpec) -> float:
        top = float(values.abs().max())
        if top == 0:
            return 0.0
        best, best_err = top, float("inf")
        for c in torch.linspace(top / self.grid, top, self.grid).tolist():
            scale, zp = qparams_from_range(torch.tensor(-c), torch.tensor(c), spec)
            err = float(((dequantize(quantize(values, scale, zp, spec), scale, zp, spec) - values) ** 2).mean())
            if err < best_err:
                best, best_err = c, err
        return best


class EntropyObserver(_ClipObserver):
    """KL-divergence calibration on a 2048-bin histogram of |x| (TensorRT's algorithm)."""

    def __init__(self, bins: int = 2048, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bins = bins

    def clip(self, values: torch.Tensor, spec: QuantSpec) -> float:
        a = values.abs().double()
        top = float(a.max())
        if top == 0:
            return 0.0
        hist = torch.histc(a, bins=self.bins, min=0, max=top)
        levels = (spec.qmax - spec.qmin + 1) // 2 if spec.symmetric else spec.qmax - spec.qmin + 1
        best_i, best_kl = self.bins, float("inf")
        for i in range(levels, self.bins + 1, max(1, self.bins // 256)):
            ref = hist[:i].clone()
            ref[-1] += hist[i:].sum()  # clipped mass goes to the last bin
            # the candidate: i bins merged into ``levels`` buckets, each spread back over its nonzero bins
            edges = torch.linspace(0, i, levels + 1).round().long()
            cand = torch.zeros(i, dtype=torch.float64)
            for b in range(levels):
                lo_b, hi_b = int(edges[b]), int(edges[b + 1])
                chunk = hist[lo_b:hi_b]
                nonzero = chunk > 0
                if nonzero.any():
                    cand[lo_b:hi_b][nonzero] = chunk.sum() / nonzero.sum()
            p, q = ref / ref.sum(), cand / cand.sum().clamp_min(1e-30)
            mask = p > 0
            kl = float((p[mask] * (p[mask] / q[mask].clamp_min(1e-30)).log()).sum())
            if kl < best_kl:
                best_i, best_kl = i, kl
        return top * best_i / self.bins


OBSERVERS: dict[str, type[Observer]] = {"minmax": MinMaxObserver, "percentile": PercentileObserver,
                                        "mse": MseObserver, "entropy": EntropyObserver}


def make_observer(name: ObserverName, axis: int | None = None, **kwargs) -> Observer:
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer {name!r} (known: {', '.join(OBSERVERS)})")
    return OBSERVERS[name](axis=axis, **kwargs)
