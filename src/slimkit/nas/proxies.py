"""Zero-cost proxies: scores of an untrained network, computed in one or two passes, that rank
candidates before any training (Abdelfattah et al. 2021, "Zero-Cost Proxies for Lightweight NAS").

- ``grad_norm``: the L2 norm of the loss gradient over all weights, on one labelled batch at
  initialisation.
- ``synflow``: Tanaka et al. 2020's synaptic flow, data-free: every parameter replaced by its
  absolute value, an input of ones, R = the sum of the outputs; the score is sum |theta * dR/dtheta|.
  Computed in float64 on a copy with BatchNorm in evaluation mode (its running statistics at their
  initial values), as the zero-cost reference code does, so no batch statistic rescales the flow.
- ``params``: the parameter count, the control any proxy must beat (on many spaces it is a strong
  one: bigger networks train to better accuracy).

Each takes a freshly built network (seeded) and returns a float; higher is predicted better.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn as nn


def params(net: nn.Module, inputs: torch.Tensor | None = None, targets: torch.Tensor | None = None) -> float:
    return float(sum(p.numel() for p in net.parameters()))


def grad_norm(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
              loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy) -> float:
    """||d loss / d weights||_2 over every parameter, one batch, the network in training mode."""
    net = copy.deepcopy(net).train()
    net.zero_grad()
    loss(net(inputs), targets).backward()
    return float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in net.parameters() if p.grad is not None)))


def synflow(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None = None) -> float:
    """Synaptic flow (data-free: only the input's shape is used); see the module docstring."""
    net = copy.deepcopy(net).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.zero_grad()
    ones = torch.ones((1, *inputs.shape[1:]), dtype=torch.float64, device=inputs.device)
    net(ones).sum().backward()
    return float(sum((p.detach() * p.grad).abs().sum() for p in net.parameters() if p.grad is not None))


PROXIES: dict[str, Callable[..., float]] = {"synflow": synflow, "grad_norm": grad_norm, "params": params}
