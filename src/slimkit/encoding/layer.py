"""The encoded-layer protocol: a layer whose weight is stored in an encoding (bitmask + values,
codebook + codes, hashed vector, integer codes + scales) and decoded in its forward pass.

Every such layer subclasses ``EncodedLayer``, so steps, backends and measurement ask one
protocol (``densify``, ``stored_bytes``, ``logical_weights``, ``nonzero_weights``, ``kind``)
instead of knowing each technique's classes. Layers made of plain children (low-rank chains,
LoRA) are not encoded: every tool already sees their plain ``nn.Linear`` / ``nn.Conv2d``.
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch
import torch.nn as nn

# every kind of encoding, and how an error message names a model holding it
KINDS = {
    "sparse": "pruned and bitmask-encoded",
    "shared": "shared",
    "hashed": "hashed",
    "quantized": "statically quantized",
    "weight_only": "weight-only quantized",
    "dynamic_int8": "dynamically quantized",
}
QUANTIZED_KINDS = ("quantized", "weight_only", "dynamic_int8")
# encodings that runtimes compute on integer kernels, whose rounding differs from eager's float
# simulation by about an LSB per layer
INTEGER_KINDS = ("quantized", "dynamic_int8")


class EncodedLayer(nn.Module, abc.ABC):
    """A layer standing for a plain dense one whose weight it stores encoded.

    ``kind`` names the encoding (a key of ``KINDS``); ``weight_shape`` is the dense weight's
    shape; ``bias`` (a parameter or None) is the dense layer's bias, stored as it is.
    """

    kind: ClassVar[str]
    weight_shape: tuple[int, ...]
    bias: nn.Parameter | None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        kind = getattr(cls, "kind", None)
        if kind not in KINDS:
            raise TypeError(f"{cls.__name__}: an EncodedLayer's kind must be one of {sorted(KINDS)}, got {kind!r}")

    @abc.abstractmethod
    def dense_weight(self) -> torch.Tensor:
        """The decoded float weight, in ``weight_shape``."""

    @property
    def weight(self) -> torch.Tensor:
        """The decoded weight, as the plain layer's ``weight`` would hold it: third-party forwards
        read ``layer.weight`` (its dtype, device, shape or value), so an encoded layer answers.
        Computed on each read, never stored: the encoding stays the one copy."""
        return self.dense_weight()

    @abc.abstractmethod
    def densify(self) -> nn.Module:
        """The equivalent plain layer (``nn.Linear``, ``nn.Conv2d``, ...) holding the decoded weight."""

    @abc.abstractmethod
    def stored_bytes(self) -> int:
        """Payload bytes of the tensors that encode the weight (the bias, stored as is, excluded)."""

    def logical_weights(self) -> int:
        """Weights of the dense equivalent: the weight's elements plus the bias's."""
        return math.prod(self.weight_shape) + (0 if self.bias is None else self.bias.numel())

    def nonzero_weights(self) -> int:
        """Weights of the dense equivalent that are not exactly zero (what pruning removed is not)."""
        with torch.no_grad():
            kept = int(torch.count_nonzero(self.dense_weight()))
            return kept + (0 if self.bias is None else int(torch.count_nonzero(self.bias)))


def encoded_classes() -> list[type[EncodedLayer]]:
    """Every concrete ``EncodedLayer`` subclass imported so far."""
    found, stack = [], list(EncodedLayer.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if not getattr(cls, "__abstractmethods__", None) and cls not in found:
            found.append(cls)
    return found


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    """Payload bytes of ``tensors`` (None skipped)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
