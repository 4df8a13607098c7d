"""Shared weights: a layer's weight as a codebook of k float32 values and one ``ceil(log2 k)``-bit
code per weight, packed into uint8 bytes.

``SharedLinear`` and ``SharedConv2d`` hold the packed codes as a buffer and the codebook as a
parameter, so the step's safetensors checkpoint and every exported file ship the small encoding,
and training the layer trains the codebook: the gradient of a centroid is the sum of the
gradients of the weights that share it (Han et al.'s centroid fine-tuning), which is exactly what
autograd gives for ``codebook[codes]``. With ``fixed_zero`` (a pruned layer) code 0 is the exact
zero and stays zero, so clustering keeps the pruned weights pruned. The codes are unpacked with
division and remainder only (as the sparse bitmask is), which ONNX Runtime and OpenVINO
constant-fold; eager PyTorch keeps the unpacked codes cached.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from slimkit.encoding.bits import pack_codes, unpack_codes
from slimkit.encoding.layer import EncodedLayer, tensor_bytes
from slimkit.encoding.twins import Conv2dTwin, LinearTwin, swap_twins_


def code_bits(k: int) -> int:
    return max(1, math.ceil(math.log2(k)))


def encoded_bytes(numel: int, k: int) -> int:
    """Packed codes plus the float32 codebook."""
    return math.ceil(numel * code_bits(k) / 8) + 4 * k


class _SharedWeight(EncodedLayer):
    """A weight stored as ``weight_codes`` (packed uint8 buffer) and ``codebook`` (parameter)."""

    kind = "shared"

    def __init__(self, weight_shape: tuple[int, ...], k: int, fixed_zero: bool) -> None:
        super().__init__()
        self.weight_shape, self.k, self.fixed_zero = tuple(weight_shape), k, fixed_zero
        self.bits = code_bits(k)
        numel = math.prod(self.weight_shape)
        self.register_buffer("weight_codes", torch.zeros(math.ceil(numel * self.bits / 8), dtype=torch.uint8))
        self.codebook = nn.Parameter(torch.zeros(k - 1 if fixed_zero else k))
        self._codes: torch.Tensor | None = None
        self.register_load_state_dict_post_hook(lambda module, _: module._forget())

    def _forget(self) -> None:
        self._codes = None

    def set_codes(self, codes: torch.Tensor, centroids: torch.Tensor) -> None:
        """Store ``codes`` (the weight's shape) and the ``centroids`` they index (with
        ``fixed_zero``, centroid 0 is the zero and is not stored)."""
        with torch.no_grad():
            self.weight_codes = pack_codes(codes, self.bits).to(self.weight_codes.device)
            self.codebook.copy_(centroids[1:] if self.fixed_zero else centroids)
        self._forget()

    def codes(self) -> torch.Tensor:
        if self._codes is not None and not torch.compiler.is_compiling():
            return self._codes
        codes = unpack_codes(self.weight_codes, math.prod(self.weight_shape), self.bits)
        if not torch.compiler.is_compiling():
            self._codes = codes
        return codes

    def table(self) -> torch.Tensor:
        if not self.fixed_zero:
            return self.codebook
        return torch.cat([self.codebook.new_zeros(1), self.codebook])

    def dense_weight(self) -> torch.Tensor:
        return self.table()[self.codes()].reshape(self.weight_shape)

    def stored_bytes(self) -> int:
        return tensor_bytes(self.weight_codes, self.codebook)

    def extra_repr(self) -> str:
        return f"{self.weight_shape}, {self.k} shared values ({self.bits}-bit codes{', 0 fixed' if self.fixed_zero else ''})"


class SharedLinear(LinearTwin, _SharedWeight):
    def __init__(self, linear: nn.Linear, k: int, fixed_zero: bool = False) -> None:
        super().__init__(tuple(linear.weight.shape), k, fixed_zero)
        self._take_linear(linear, trainable_bias=True)


class SharedConv2d(Conv2dTwin, _SharedWeight):
    def __init__(self, conv: nn.Conv2d, k: int, fixed_zero: bool = False) -> None:
        self._check_conv(conv)
        super().__init__(tuple(conv.weight.shape), k, fixed_zero)
        self._take_conv(conv, trainable_bias=True)


TWINS = {nn.Linear: SharedLinear, nn.Conv2d: SharedConv2d}


def share_(model: nn.Module, names: list[str], k: int, fixed_zero: dict[str, bool],
           clusters: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, nn.Module]:
    """Swap the named Linear/Conv2d layers for shared twins with ``k`` values, in place. With
    ``clusters`` ({name: (centroids, codes)}) the twins are filled; without, they are empty
    skeletons of the right sizes for a checkpoint to load into."""
    def build(name: str, layer: nn.Module, twin_type) -> nn.Module:
        twin = twin_type(layer, k, fixed_zero[name])
        if clusters is not None:
            centroids, codes = clusters[name]
            twin.set_codes(codes, centroids)
        return twin

    return swap_twins_(model, names, TWINS, "weight sharing", build)
