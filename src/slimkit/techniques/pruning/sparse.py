"""Sparse storage: a pruned weight as a bitmask of where its nonzeros are plus those values.

``numel / 8`` bytes of mask and 4 bytes per kept weight: at 90% sparsity 0.13x the dense bytes.
The bitmask is little-endian within a byte (element ``8k + i`` is bit ``i`` of byte ``k``), the
values follow the weight's row-major order. ``SparseLinear`` and ``SparseConv2d`` hold that
encoding as buffers, so the step's safetensors checkpoint and every exported file ship it; the
dense weight is rebuilt in the forward pass with plain integer arithmetic, a cumulative sum and a
gather, which ONNX Runtime and OpenVINO constant-fold at load time (they then run a dense layer:
unstructured sparsity buys bytes, not speed, on CPU kernels; structured pruning buys speed).
Eager PyTorch keeps the rebuilt weight cached between calls.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.encoding.bits import pack_bits, unpack_bits
from slimkit.encoding.dense import dense_conv2d, dense_linear
from slimkit.encoding.layer import EncodedLayer, tensor_bytes

def encoded_bytes(numel: int, nnz: int) -> int:
    """Bytes of the bitmask and the float32 kept values."""
    return math.ceil(numel / 8) + 4 * nnz


class _SparseWeight(EncodedLayer):
    """A weight stored as ``weight_bitmask`` (uint8) and ``weight_values`` (float32) buffers."""

    kind = "sparse"

    def __init__(self, weight: torch.Tensor, nnz: int | None = None) -> None:
        super().__init__()
        w = weight.detach().float()
        self.weight_shape = tuple(w.shape)
        mask = w != 0
        if nnz is not None:  # rebuilding for a checkpoint: the shapes matter, the values load
            mask = torch.zeros(w.numel(), dtype=torch.bool)
            mask[:nnz] = True
        self.register_buffer("weight_bitmask", pack_bits(mask))
        self.register_buffer("weight_values", w.flatten()[mask.flatten()].clone() if nnz is None else torch.zeros(nnz))
        self._cache: torch.Tensor | None = None
        self.register_load_state_dict_post_hook(lambda module, _: module._forget())

    def _forget(self) -> None:
        self._cache = None

    @property
    def nnz(self) -> int:
        return self.weight_values.numel()

    def dense_weight(self) -> torch.Tensor:
        """The weight with its zeros back, in the layer's shape."""
        # a weight rebuilt under inference_mode (measurement) cannot enter autograd (training others)
        if self._cache is not None and not torch.compiler.is_compiling() \
                and not (self._cache.is_inference() and not torch.is_inference_mode_enabled()):
            return self._cache
        numel = math.prod(self.weight_shape)
        mask = unpack_bits(self.weight_bitmask, numel)
        if self.nnz == 0:
            dense = torch.zeros(numel, device=mask.device)
        else:
            index = (torch.cumsum(mask.to(torch.int32), 0) - 1).clamp_min(0)
            dense = torch.where(mask, self.weight_values[index], torch.zeros((), device=mask.device))
        dense = dense.reshape(self.weight_shape)
        if not torch.compiler.is_compiling():
            self._cache = dense
        return dense

    def stored_bytes(self) -> int:
        return tensor_bytes(self.weight_bitmask, self.weight_values)

    def nonzero_weights(self) -> int:
        bias = 0 if self.bias is None else int(torch.count_nonzero(self.bias))
        return int(torch.count_nonzero(self.weight_values)) + bias

    def extra_repr(self) -> str:
        numel = math.prod(self.weight_shape)
        return f"{self.weight_shape}, {1 - self.nnz / numel:.1%} zeros, bitmask + values"


class SparseLinear(_SparseWeight):
    def __init__(self, linear: nn.Linear, nnz: int | None = None) -> None:
        super().__init__(linear.weight, nnz)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dense_weight(), self.bias)

    def densify(self) -> nn.Linear:
        return dense_linear(self.dense_weight(), self.bias)


class SparseConv2d(_SparseWeight):
    def __init__(self, conv: nn.Conv2d, nnz: int | None = None) -> None:
        if conv.padding_mode != "zeros":
            raise ValueError(f"SparseConv2d: padding_mode {conv.padding_mode!r} is not supported")
        super().__init__(conv.weight, nnz)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def densify(self) -> nn.Conv2d:
        return dense_conv2d(self.dense_weight(), self.bias, self)


_TWINS = {nn.Linear: SparseLinear, nn.Conv2d: SparseConv2d}


def encode_sparse_(model: nn.Module, names: list[str], nnz: dict[str, int] | None = None) -> dict[str, dict]:
    """Swap the named Linear/Conv2d layers of ``model`` for their bitmask-encoded twins, in place,
    where the encoding is smaller than the dense weight (below 31/32 density); returns
    {name: {kind, nnz, numel, bytes, dense_bytes}} for the layers swapped. ``nnz`` (from a
    checkpoint's structure) rebuilds empty twins of the recorded sizes for the values to load into."""
    modules = dict(model.named_modules())
    done = {}
    for name in names:
        layer = modules[name]
        twin_type = _TWINS.get(type(layer))
        if twin_type is None:
            raise ValueError(f"sparse encoding: {name} is a {type(layer).__name__}, not a Linear or Conv2d")
        numel = layer.weight.numel()
        count = int((layer.weight != 0).sum()) if nnz is None else int(nnz[name])
        if nnz is None and encoded_bytes(numel, count) >= 4 * numel:
            continue
        twin = twin_type(layer, None if nnz is None else count)
        parent, _, child = name.rpartition(".")
        setattr(modules[parent] if parent else model, child, twin)
        done[name] = {"kind": type(layer).__name__, "nnz": count, "numel": numel,
                      "bytes": twin.stored_bytes(), "dense_bytes": 4 * numel}
    return done
