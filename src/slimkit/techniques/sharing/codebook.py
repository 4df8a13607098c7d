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
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.techniques.pruning.sparse import pack_bits, unpack_bits


def code_bits(k: int) -> int:
    return max(1, math.ceil(math.log2(k)))


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes in [0, 2**bits) -> uint8 bytes, ``bits`` bits each, low bit first."""
    flat = codes.flatten().to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits}) for {bits} bits")
    powers = torch.tensor([1 << j for j in range(bits)], dtype=torch.int64)
    planes = torch.remainder(torch.div(flat[:, None], powers, rounding_mode="floor"), 2).bool()
    return pack_bits(planes)


def unpack_codes(packed: torch.Tensor, numel: int, bits: int) -> torch.Tensor:
    """Inverse of ``pack_codes``: the first ``numel`` codes as int64."""
    planes = unpack_bits(packed, numel * bits).reshape(numel, bits).to(torch.int64)
    powers = torch.tensor([1 << j for j in range(bits)], dtype=torch.int64, device=packed.device)
    return (planes * powers).sum(1)


def encoded_bytes(numel: int, k: int) -> int:
    """Packed codes plus the float32 codebook."""
    return math.ceil(numel * code_bits(k) / 8) + 4 * k


class _SharedWeight(nn.Module):
    """A weight stored as ``weight_codes`` (packed uint8 buffer) and ``codebook`` (parameter)."""

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
        return self.weight_codes.numel() + 4 * self.codebook.numel()

    def extra_repr(self) -> str:
        return f"{self.weight_shape}, {self.k} shared values ({self.bits}-bit codes{', 0 fixed' if self.fixed_zero else ''})"


class SharedLinear(_SharedWeight):
    def __init__(self, linear: nn.Linear, k: int, fixed_zero: bool = False) -> None:
        super().__init__(tuple(linear.weight.shape), k, fixed_zero)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dense_weight(), self.bias)


class SharedConv2d(_SharedWeight):
    def __init__(self, conv: nn.Conv2d, k: int, fixed_zero: bool = False) -> None:
        if conv.padding_mode != "zeros":
            raise ValueError(f"SharedConv2d: padding_mode {conv.padding_mode!r} is not supported")
        super().__init__(tuple(conv.weight.shape), k, fixed_zero)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


TWINS = {nn.Linear: SharedLinear, nn.Conv2d: SharedConv2d}


def swap_twins_(model: nn.Module, names: list[str], twins: dict[type, Any], what: str,
                build: Callable[[str, Any], nn.Module]) -> dict[str, nn.Module]:
    """Replace each named Linear / Conv2d by ``build(name, twin class)`` (moved to the layer's
    device), in place; {name: new module}."""
    modules = dict(model.named_modules())
    done = {}
    for name in names:
        layer = modules[name]
        twin_type = twins.get(type(layer))
        if twin_type is None:
            raise ValueError(f"{what}: {name} is a {type(layer).__name__}, not a Linear or Conv2d")
        twin = build(name, twin_type).to(layer.weight.device)
        model.set_submodule(name, twin)
        done[name] = twin
    return done


def share_(model: nn.Module, names: list[str], k: int, fixed_zero: dict[str, bool],
           clusters: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, nn.Module]:
    """Swap the named Linear/Conv2d layers for shared twins with ``k`` values, in place. With
    ``clusters`` ({name: (centroids, codes)}) the twins are filled; without, they are empty
    skeletons of the right sizes for a checkpoint to load into."""
    modules = dict(model.named_modules())

    def build(name: str, twin_type) -> nn.Module:
        twin = twin_type(modules[name], k, fixed_zero[name])
        if clusters is not None:
            centroids, codes = clusters[name]
            twin.set_codes(codes, centroids)
        return twin

    return swap_twins_(model, names, TWINS, "weight sharing", build)


def is_shared(model: nn.Module) -> bool:
    return any(isinstance(m, _SharedWeight) for m in model.modules())
