"""Bayesian compression (Louizos, Ullrich & Welling, NeurIPS 2017) with the group normal-Jeffreys
prior: uncertainty decides which channels go and how many bits each layer keeps.

The model. Each prunable group of output channels (torch-pruning's dependency graph, exactly the
groups L0's channel gates use, ``sparse_training/l0.py``) gets one scale per channel, ``z``, with
the log-uniform (Jeffreys) prior ``p(z) ~ 1/|z|`` and the posterior ``q(z) = N(mu, sigma_z^2)``;
the scale multiplies the channel after the group's BatchNorm, else the layer's output. Every
weight of each Linear / Conv2d has, given its scale, the prior ``p(w | z) = N(0, z^2)``: its
unscaled value ``N(0, 1)`` a priori and ``N(theta, sigma^2)`` a posteriori (``theta`` is the
layer's own weight). The ELBO's KL is then

    sum_channels KL(q(z) || p(z))  +  sum_weights 0.5 * (sigma^2 + theta^2 - 1 - log sigma^2)

with Molchanov et al.'s approximation for the first part, in ``log alpha_z = log sigma_z^2 -
log mu^2`` (``variational_dropout.log_uniform_kl``). Training uses the local reparameterisation
trick: a forward hook samples each layer's pre-activations (mean ``x theta``, variance ``x^2
sigma^2``) and the scales are drawn per row; the layers stay plain ``nn.Conv2d`` / ``nn.Linear``
throughout, so the dependency graph built before training still describes the model after it.

Compression, after training:

1. Channels whose scale is mostly noise (``log alpha_z > threshold``) are removed physically,
   each open scale's mean folded into its BatchNorm or layer (L0's ``remove_closed_channels_``).
2. Bits per layer from the posterior: the variance of each stored weight is ``mu^2 sigma^2 +
   sigma_z^2 theta^2 + sigma_z^2 sigma^2`` where the scale was folded into the layer, ``sigma^2``
   elsewhere (the variances lose the removed entries with the weights). A uniform grid through
   zero whose step is ``step`` times the geometric mean of the layer's posterior standard
   deviations needs ``ceil(log2(levels + 1))`` bits for the weight's range; the weights are rounded
   to it and stored as packed codes + the grid (weight sharing's codebook twins, ``k = 2^bits``),
   so the artifact's bytes are the real ones. Where most weights round to zero, code 0 is the
   exact zero and the entropy-coded file stores the gaps between nonzeros.

Individual weights are not removed by their own ``log alpha`` (sparse variational dropout's rule):
under this prior the KL pushes every ``sigma^2`` towards 1, so weights with a high ``alpha`` still
carry small means that add up coherently over a layer's inputs (zeroing them lost accuracy on
LeNet-5 in an early trial); the grid through zero rounds the truly small ones to zero instead.

Where this departs from the paper, and why: Louizos et al.'s code rounds to a fixed-point grid
``2^-t`` with ``t`` counted from each weight's variance (averaged over the layer) and books
sign + exponent + mantissa bits of a float format; here the grid is uniform over the layer's own
range and the step is measured in posterior standard deviations, which keeps the rule independent
of the weights' units. The scales sit on output channels rather than a Linear's inputs, so a
Linear fed by a flattened conv drops whole channels, not single positions: what torch-pruning can
remove physically.

Written here: the authors' reference is a tutorial for two layer types; no maintained package
ships Bayesian compression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.techniques.bayesian.variational_dropout import log_uniform_kl
from slimkit.train.objectives import Batch


class LogUniformScale(nn.Module):
    """``width`` scales with posterior ``N(mu, sigma_z^2)`` under the log-uniform prior; drawn per
    row in training, ``mu`` (0 where ``log alpha_z > threshold``) in evaluation. Follows L0's
    channel-gate protocol (``draw``, ``deterministic``, ``strength``). Parameters are stored
    divided by ``lr_scale``, so they learn ``lr_scale`` times faster than the weights."""

    def __init__(self, width: int, threshold: float = 0.0, init_log_sigma2: float = -8.0,
                 lr_scale: float = 1.0) -> None:
        super().__init__()
        if lr_scale <= 0:
            raise ValueError(f"lr_scale must be > 0, got {lr_scale}")
        self.lr_scale, self.threshold = lr_scale, threshold
        self.mu_raw = nn.Parameter(torch.full((width,), 1.0 / lr_scale))
        self.log_sigma2_raw = nn.Parameter(torch.full((width,), init_log_sigma2 / lr_scale))

    @property
    def mu(self) -> torch.Tensor:
        return self.mu_raw * self.lr_scale

    @property
    def log_sigma2(self) -> torch.Tensor:
        return self.log_sigma2_raw * self.lr_scale

    def log_alpha(self) -> torch.Tensor:
        return (self.log_sigma2 - torch.log(self.mu.square() + 1e-8)).clamp(-10.0, 10.0)

    def draw(self, rows: int, sample: bool) -> torch.Tensor:
        if not sample:
            return self.deterministic()
        noise = torch.randn(rows, self.mu.numel(), device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + (0.5 * self.log_sigma2).exp() * noise

    def deterministic(self) -> torch.Tensor:
        return self.mu * (self.log_alpha() <= self.threshold)

    def strength(self) -> torch.Tensor:
        return -self.log_alpha()

    def kl(self) -> torch.Tensor:
        return log_uniform_kl(self.log_alpha())


class WeightPosterior(nn.Module):
    """``log sigma^2`` of each weight of one Linear / Conv2d (its mean is the layer's own weight)
    and the local reparameterisation as a forward hook on the layer (training mode only)."""

    def __init__(self, layer: nn.Module, init_log_sigma2: float = -10.0, lr_scale: float = 1.0) -> None:
        super().__init__()
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise ValueError(f"Bayesian compression: {type(layer).__name__} is not a Linear or Conv2d")
        self.lr_scale = lr_scale
        self.log_sigma2_raw = nn.Parameter(torch.full_like(layer.weight.detach(), init_log_sigma2 / lr_scale))
        self._layer = (layer,)  # not a submodule: the model owns the layer

    @property
    def layer(self) -> nn.Module:
        return self._layer[0]

    @property
    def log_sigma2(self) -> torch.Tensor:
        return self.log_sigma2_raw * self.lr_scale

    def hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        x2, s2 = args[0].square(), self.log_sigma2.exp()
        var = F.linear(x2, s2) if isinstance(module, nn.Linear) else module._conv_forward(x2, s2, None)
        return output + torch.sqrt(var + 1e-8) * torch.randn_like(output)

    def kl(self) -> torch.Tensor:
        """KL(N(theta, sigma^2) || N(0, 1)), summed over the layer's weights."""
        ls = self.log_sigma2
        return 0.5 * (ls.exp() + self.layer.weight.square() - 1.0 - ls).sum()


@dataclass
class BayesianKL:
    """The ELBO's KL per training row (times ``weight``, which ``KLWarmup`` ramps up); the scales
    and log variances live outside the model, so the term hands them to ``fit``'s optimizer."""

    scales: list[LogUniformScale]
    posteriors: list[WeightPosterior]
    rows: int
    weight: float = 1.0
    name: str = "kl"

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in (*self.scales, *self.posteriors) for p in m.parameters()]

    def __call__(self, batch: Batch) -> torch.Tensor:
        return (sum(s.kl() for s in self.scales) + sum(p.kl() for p in self.posteriors)) / self.rows


def install_posteriors(posteriors: list[WeightPosterior]) -> list[torch.utils.hooks.RemovableHandle]:
    """The local reparameterisation hooks (install them before the scale hooks: a scale
    multiplies the sampled output)."""
    return [p.layer.register_forward_hook(p.hook) for p in posteriors]


@torch.no_grad()
def stored_variances(posteriors: list[WeightPosterior], gates: list[Any]) -> dict[int, torch.Tensor]:
    """{id(layer): the posterior variance of each weight as it will be stored}: a layer that is a
    site of a scale gets the scale folded into its rows, so ``Var(z w) = mu^2 sigma^2 + sigma_z^2
    theta^2 + sigma_z^2 sigma^2`` there; elsewhere ``sigma^2``."""
    out = {}
    for p in posteriors:
        theta, s2 = p.layer.weight.detach(), p.log_sigma2.detach().exp()
        var = s2.clone()
        for gate in gates:
            if any(site is p.layer for site in gate.sites):
                shape = (-1,) + (1,) * (theta.dim() - 1)
                mu2 = gate.gates.mu.detach().square().view(shape)
                z2 = gate.gates.log_sigma2.detach().exp().view(shape)
                var = mu2 * s2 + z2 * theta.square() + z2 * s2
        out[id(p.layer)] = var
    return out


@dataclass
class LayerBits:
    """One layer's precision: bits, the grid's first value and step (zero is on the grid), the
    posterior's geometric-mean standard deviation, and the weight's range."""

    bits: int
    low: float
    step: float
    posterior_std: float
    weight_range: float

    def grid(self) -> torch.Tensor:
        return self.low + self.step * torch.arange(2**self.bits, dtype=torch.float64)


def layer_bits(weight: torch.Tensor, variance: torch.Tensor, step: float, max_bits: int) -> LayerBits:
    """Bits for ``weight`` whose entries have posterior ``variance``: a uniform grid through zero
    (a removed weight stays exactly zero) with a step of ``step`` geometric-mean posterior
    standard deviations of its nonzero weights over the weight's range; the step grows where the
    range would need more than ``max_bits``."""
    w = weight.detach().double().flatten()
    kept = w != 0
    var = variance.detach().double().flatten()[kept] if bool(kept.any()) else variance.detach().double().flatten()
    std = float(var.clamp_min(1e-30).log().mean().mul(0.5).exp())
    low, high = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
    if high == low:
        return LayerBits(1, 0.0, 1.0, std, 0.0)
    delta = step * std
    levels = math.floor(high / delta) - math.ceil(low / delta) + 1  # grid points k * delta within [low, high]
    levels = max(levels, 2)
    bits = max(1, math.ceil(math.log2(levels + 1)))  # one spare level: rounding at either end stays on the grid
    if bits > max_bits:
        bits = max_bits
        delta = max(high, -low) / (2 ** (max_bits - 1) - 1)  # symmetric through zero
    first = math.floor(low / delta + 0.5)
    return LayerBits(bits, first * delta, delta, std, high - low)


def round_to_grid(weight: torch.Tensor, bits: LayerBits, zero_first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(the grid as float32, each weight's code on it). ``zero_first``: the grid reordered so that
    code 0 is the exact zero (weight sharing's ``fixed_zero`` layout, which entropy coding stores
    as gaps between nonzeros)."""
    codes = torch.round((weight.detach().double() - bits.low) / bits.step).clamp(0, 2**bits.bits - 1).to(torch.int64)
    grid = bits.grid().float()
    if not zero_first:
        return grid, codes
    zero = int(round(-bits.low / bits.step))
    order = torch.cat([torch.tensor([zero]), torch.arange(zero), torch.arange(zero + 1, grid.numel())])
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel())
    table = grid[order]
    table[0] = 0.0
    return table, position[codes]


def zero_share(weight: torch.Tensor, bits: LayerBits) -> float:
    """Share of ``weight``'s entries that round to the grid's zero."""
    return float((torch.round(weight.detach().double() / bits.step) == 0).double().mean())
