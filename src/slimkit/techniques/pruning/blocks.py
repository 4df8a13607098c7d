"""Whole-block removal: a block of a sequence (a residual block, a transformer layer) whose output
has its input's shape can be replaced by the identity; the blocks whose removal costs the least
validation loss go first (a per-block sensitivity measured on held-out batches)."""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.nn as nn

from slimkit.core.errors import ConfigError
from slimkit.search.scan import Progress


class Skip(nn.Module):
    """A removed block: passes its first input through (a residual block without its branch)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # noqa: ARG002 - the block's signature
        return x


@torch.no_grad()
def removable_blocks(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> list[str]:
    """Children of ``nn.Sequential`` / ``nn.ModuleList`` containers that hold weights and return
    one tensor of their first input's shape, in execution order (found on one forward pass)."""
    containers = [m for m in model.modules() if isinstance(m, (nn.Sequential, nn.ModuleList))]
    names = {id(m): n for n, m in model.named_modules()}
    candidates = {id(child): child for c in containers for child in c.children()
                  if any(True for _ in child.parameters()) and not isinstance(child, Skip)}
    seen: list[str] = []
    bad: set[int] = set()

    def hook(module, args, kwargs, output):
        first = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
        same = isinstance(first, torch.Tensor) and isinstance(output, torch.Tensor) and first.shape == output.shape
        if not same:
            bad.add(id(module))
        elif names[id(module)] not in seen:
            seen.append(names[id(module)])

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in candidates.values()]
    was_training = model.training
    try:
        model.eval()(*example_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    found = [n for n in seen if id(dict(model.named_modules())[n]) not in bad]
    # a block inside another removable block is removed with it; keep only the outermost ones
    return [n for n in found if not any(n.startswith(o + ".") for o in found if o != n)]


def remove_blocks_(model: nn.Module, names: list[str]) -> nn.Module:
    """Replace the named blocks by ``Skip`` in place."""
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ConfigError(f"remove blocks: no module named {unknown}")
    for name in names:
        parent, _, leaf = name.rpartition(".")
        setattr(modules[parent] if parent else model, leaf, Skip())
    return model


@torch.no_grad()
def block_sensitivity(model: nn.Module, candidates: list[str], loss: Callable[[nn.Module], float],
                      progress: Progress | None = None, time_budget: float | None = None) -> dict[str, float]:
    """{block: loss with that block removed - loss of the model} for each candidate."""
    from slimkit.search import sensitivity, solo_drops

    base = loss(model)

    def removed(name: str, _) -> float:
        return loss(remove_blocks_(copy.deepcopy(model), [name])) - base

    return solo_drops(sensitivity(candidates, ["removed"], removed, progress=progress, time_budget=time_budget,
                                  what="block sensitivity"))
