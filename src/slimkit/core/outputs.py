"""What slimkit trains, scores and exports from a model's output: the model's one tensor, however
its forward returns it. Users' models return tensors, tuples, dicts or a ``transformers``
``ModelOutput``; a Hugging Face classifier is usable as it comes, without a wrapper."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Sequence

import torch
import torch.nn as nn


def primary_output(out: Any) -> torch.Tensor:
    """The output tensor: the output itself; a tuple's or list's first element; a mapping's
    (``ModelOutput`` included) ``"logits"`` entry, else its first tensor entry."""
    while not isinstance(out, torch.Tensor):
        if isinstance(out, Mapping):
            if "logits" in out:
                out = out["logits"]
            else:
                tensors = [v for v in out.values() if isinstance(v, torch.Tensor)]
                if not tensors:
                    raise TypeError(f"the model returned a {type(out).__name__} with no tensor entry")
                out = tensors[0]
        elif isinstance(out, (tuple, list)) and out:
            out = out[0]
        else:
            raise TypeError(f"the model returned a {type(out).__name__}, not a tensor, tuple or mapping of tensors")
    return out


def returns_tensor(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> nn.Module:
    """``model`` if it returns a tensor on ``example_inputs``, else a wrapper returning its
    ``primary_output``: what an exported artifact computes is the one output slimkit measured.
    The wrapper takes as many positional inputs as the examples (what ``torch.export``'s
    dynamic shapes describe)."""
    with torch.no_grad():
        if isinstance(model(*example_inputs), torch.Tensor):
            return model
    wrappers = {1: _Primary1, 2: _Primary2, 3: _Primary3}
    if len(example_inputs) not in wrappers:
        raise TypeError("a model whose output is not a tensor can be exported with at most 3 inputs")
    return wrappers[len(example_inputs)](model)


class _Primary(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


class _Primary1(_Primary):
    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return primary_output(self.model(a))


class _Primary2(_Primary):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return primary_output(self.model(a, b))


class _Primary3(_Primary):
    def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return primary_output(self.model(a, b, c))
