"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): a frozen Linear
``W`` learns an update ``(alpha / r) * B @ A`` of rank ``r`` (A: r x in, Kaiming-uniform; B:
out x r, zeros, so training starts from the unchanged model), then merges back into one plain
Linear of weight ``W + (alpha / r) * B @ A`` at no inference cost.

Written here rather than taken from PEFT: PEFT's LoraModel wraps Hugging Face models in its own
config and model classes behind a large dependency, while the adapter itself is a dozen lines
and slimkit needs it on any ``nn.Linear`` inside its own recipe and checkpoint format.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LoRALinear(nn.Module):
    """``base(x) + scaling * dropout(x) @ A^T @ B^T`` with ``base`` frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not 1 <= rank < min(base.in_features, base.out_features):
            raise ValueError(f"LoRA rank {rank} must lie in [1, {min(base.in_features, base.out_features)}) "
                             f"for a {base.in_features} -> {base.out_features} Linear")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        # initialised on the CPU, where the generator lives, then moved beside the base weight
        a = torch.empty(rank, base.in_features, dtype=base.weight.dtype)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_a = nn.Parameter(a.to(base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=a.dtype, device=a.device))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The merged weight (what third-party code reading ``layer.weight`` should see)."""
        return self.merged_weight()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(self.dropout(x), self.lora_a), self.lora_b) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        """``W + scaling * B @ A``: the one weight that computes what the adapted layer does."""
        return self.base.weight + self.scaling * (self.lora_b @ self.lora_a)


def add_lora_(model: nn.Module, names: list[str], rank: int, alpha: float, dropout: float = 0.0,
              generator: torch.Generator | None = None) -> dict[str, LoRALinear]:
    """Wrap each named ``nn.Linear`` of ``model`` in a LoRALinear, in place; {name: adapter}."""
    done = {}
    for name in names:
        layer = model.get_submodule(name)
        if type(layer) is not nn.Linear:
            raise ValueError(f"LoRA: {name} is a {type(layer).__name__}, not an nn.Linear")
        done[name] = LoRALinear(layer, rank, alpha, dropout, generator)
        model.set_submodule(name, done[name])
    return done


@torch.no_grad()
def merge_lora_(model: nn.Module) -> list[str]:
    """Replace every LoRALinear by a plain ``nn.Linear`` holding its merged weight and the base's
    bias (same device and dtype), in place; the names replaced."""
    names = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in names:
        lora = model.get_submodule(name)
        base = lora.base
        dense = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                          device=base.weight.device, dtype=base.weight.dtype)
        dense.weight.copy_(lora.merged_weight())
        if base.bias is not None:
            dense.bias.copy_(base.bias)
        model.set_submodule(name, dense)
    return names


def freeze_except_lora_(model: nn.Module, train_bias: bool = False) -> tuple[int, int]:
    """Only the adapters' A and B (and with ``train_bias`` the adapted layers' biases) keep
    ``requires_grad``; (trainable, total) parameter counts."""
    keep = set()
    for module in model.modules():
        if isinstance(module, LoRALinear):
            keep |= {id(module.lora_a), id(module.lora_b)}
            if train_bias and module.base.bias is not None:
                keep.add(id(module.base.bias))
    trainable = total = 0
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
        trainable += p.numel() if id(p) in keep else 0
        total += p.numel()
    return trainable, total


def is_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())
