"""Eager PyTorch: the reference backend every other runtime is compared to."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from slimkit.core.registry import BACKENDS


@BACKENDS.register("eager", summary="eager PyTorch (the reference runtime)")
class EagerBackend:
    name = "eager"

    @staticmethod
    def available() -> bool:
        return True

    @staticmethod
    def compile(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> nn.Module:
        return model.eval()
