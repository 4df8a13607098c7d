"""Sparse variational dropout (Molchanov, Ashukha & Vetrov, ICML 2017).

Every weight gets its own Gaussian multiplicative noise, ``w = theta * (1 + sqrt(alpha) * eps)``,
that is a posterior ``N(theta, alpha * theta^2)`` parameterised additively by ``theta`` and
``log sigma^2`` (``log alpha = log sigma^2 - log theta^2``). Trained on the evidence lower bound
with the log-uniform prior, whose KL term (Molchanov et al.'s approximation, eq. 14)

    -KL ~= k1 * sigmoid(k2 + k3 * log alpha) - 0.5 * log(1 + 1 / alpha) - k1

pushes ``alpha`` up wherever the data allow: a weight whose ``log alpha > 3`` (dropout rate above
0.95) carries only noise and is removed. LeNet-5 loses up to 280x of its nonzero weights on MNIST
in the paper. Training uses the local reparameterisation trick: a layer's pre-activations are
sampled from their Gaussian (mean ``x * theta``, variance ``x^2 * sigma^2``) instead of its
weights, so the gradient's variance stays low. In eval mode a layer computes with ``theta``
where ``log alpha <= threshold`` and zero elsewhere: the sparse model that is stored.

Written here: the reference is the authors' Theano/Lasagne code; no maintained PyTorch package
ships sparse variational dropout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.train.callbacks import Callback, FitState
from slimkit.train.objectives import Batch

_K1, _K2, _K3 = 0.63576, 1.87320, 1.48695


def log_uniform_kl(log_alpha: torch.Tensor) -> torch.Tensor:
    """KL(N(m, alpha m^2) || log-uniform), summed: Molchanov et al.'s approximation (eq. 14)."""
    neg_kl = _K1 * torch.sigmoid(_K2 + _K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - _K1
    return -neg_kl.sum()


class _SVDO(nn.Module):
    """What the variational Linear and Conv2d share: ``weight`` (theta), ``log_sigma2``, the
    threshold on ``log alpha``."""

    threshold: float

    def _init_variational(self, layer: nn.Module, threshold: float, init_log_sigma2: float) -> None:
        self.weight = nn.Parameter(layer.weight.detach().clone())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        self.log_sigma2 = nn.Parameter(torch.full_like(self.weight, init_log_sigma2))
        self.threshold = threshold

    def log_alpha(self) -> torch.Tensor:
        return (self.log_sigma2 - torch.log(self.weight.square() + 1e-8)).clamp(-10.0, 10.0)

    def kept(self) -> torch.Tensor:
        """True where the weight survives (``log alpha <= threshold``)."""
        return self.log_alpha() <= self.threshold

    def sparse_weight(self) -> torch.Tensor:
        return self.weight * self.kept()

    def kl(self) -> torch.Tensor:
        """KL(q || log-uniform prior), summed over the layer's weights (the approximation)."""
        return log_uniform_kl(self.log_alpha())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._op(x, self.sparse_weight(), self.bias)
        mean = self._op(x, self.weight, self.bias)
        var = self._op(x.square(), self.log_sigma2.exp(), None)
        return mean + torch.sqrt(var + 1e-8) * torch.randn_like(mean)


class VariationalLinear(_SVDO):
    def __init__(self, layer: nn.Linear, threshold: float = 3.0, init_log_sigma2: float = -10.0) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self._init_variational(layer, threshold, init_log_sigma2)

    def _op(self, x, w, b):
        return F.linear(x, w, b)

    def to_plain(self) -> nn.Linear:
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            plain.weight.copy_(self.sparse_weight())
            if self.bias is not None:
                plain.bias.copy_(self.bias)
        return plain


class VariationalConv2d(_SVDO):
    def __init__(self, layer: nn.Conv2d, threshold: float = 3.0, init_log_sigma2: float = -10.0) -> None:
        super().__init__()
        if layer.padding_mode != "zeros":
            raise ValueError(f"variational dropout: padding_mode {layer.padding_mode!r} (zeros only)")
        # nn.Conv2d's attributes, which models read (Hugging Face's TF-style padding reads stride)
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups
        self.padding_mode = layer.padding_mode
        self.in_channels, self.out_channels, self.kernel_size = layer.in_channels, layer.out_channels, layer.kernel_size
        self._init_variational(layer, threshold, init_log_sigma2)

    @property
    def conv_args(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def _op(self, x, w, b):
        return F.conv2d(x, w, b, **self.conv_args)

    def to_plain(self) -> nn.Conv2d:
        plain = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, bias=self.bias is not None,
                          **self.conv_args)
        with torch.no_grad():
            plain.weight.copy_(self.sparse_weight())
            if self.bias is not None:
                plain.bias.copy_(self.bias)
        return plain


_TWINS = {nn.Linear: VariationalLinear, nn.Conv2d: VariationalConv2d}


def make_variational_(model: nn.Module, names: list[str], threshold: float = 3.0,
                      init_log_sigma2: float = -10.0) -> dict[str, _SVDO]:
    """Swap the named Linear / Conv2d layers for their variational twins, in place."""
    from slimkit.encoding.twins import swap_twins_

    return swap_twins_(model, names, _TWINS, "variational dropout",
                       lambda name, layer, twin_type: twin_type(layer, threshold, init_log_sigma2))


def make_plain_(model: nn.Module, layers: dict[str, _SVDO]) -> dict[str, nn.Parameter]:
    """Swap the variational layers back for plain ones holding the kept weights (zeros elsewhere);
    {name: the plain layer's weight}."""
    out = {}
    for name, layer in layers.items():
        plain = layer.to_plain().to(layer.weight.device)
        model.set_submodule(name, plain)
        out[name] = plain.weight
    return out


@dataclass
class VariationalKL:
    """The ELBO's KL term per training row: ``sum_layers KL / rows`` (times ``weight``, which
    ``KLWarmup`` ramps up)."""

    layers: dict[str, _SVDO]
    rows: int
    weight: float = 1.0
    name: str = "kl"

    def __call__(self, batch: Batch) -> torch.Tensor:
        return sum(layer.kl() for layer in self.layers.values()) / self.rows


class KLWarmup(Callback):
    """Raises the KL term's weight linearly from 0 to ``final`` over the first ``share`` of the
    optimizer steps (Molchanov et al. train from a pretrained network with such a ramp)."""

    def __init__(self, term: VariationalKL, final: float, share: float) -> None:
        self.term, self.final, self.share = term, final, share

    def on_fit_start(self, state: FitState) -> None:
        self.term.weight = 0.0 if self.share > 0 else self.final

    def on_step_end(self, state: FitState) -> None:
        horizon = max(1, math.ceil(self.share * state.total_steps))
        self.term.weight = self.final * min(1.0, (state.step + 1) / horizon)
