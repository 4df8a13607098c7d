"""Plain layers built from a decoded weight: what an encoded layer's ``densify`` returns."""

from __future__ import annotations

import torch
import torch.nn as nn


def dense_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` holding ``weight`` (out x in) and ``bias``, on the weight's device."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device)
    return _filled(layer, weight, bias)


def dense_conv2d(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Module) -> nn.Conv2d:
    """An ``nn.Conv2d`` holding ``weight`` and ``bias``, with ``like``'s stride, padding, dilation
    and groups (zero padding: encoded convs refuse the other modes)."""
    layer = nn.Conv2d(weight.shape[1] * like.groups, weight.shape[0], tuple(weight.shape[2:]), stride=like.stride,
                      padding=like.padding, dilation=like.dilation, groups=like.groups, bias=bias is not None,
                      device=weight.device)
    return _filled(layer, weight, bias)


def dense_embedding(weight: torch.Tensor, padding_idx: int | None) -> nn.Embedding:
    """An ``nn.Embedding`` holding ``weight`` (rows x dim)."""
    layer = nn.Embedding(weight.shape[0], weight.shape[1], padding_idx=padding_idx, device=weight.device)
    return _filled(layer, weight, None)


def _filled(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    with torch.no_grad():
        layer.weight.copy_(weight.detach())
        if bias is not None:
            layer.bias.copy_(bias.detach())
    return layer
