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

from slimkit.encoding.bits import pack_bits, unpack_bits
from slimkit.encoding.layer import EncodedLayer, tensor_bytes
from slimkit.encoding.twins import Conv2dTwin, LinearTwin, swap_twins_

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


class SparseLinear(LinearTwin, _SparseWeight):
    def __init__(self, linear: nn.Linear, nnz: int | None = None) -> None:
        super().__init__(linear.weight, nnz)
        self._take_linear(linear, trainable_bias=False)


class SparseConv2d(Conv2dTwin, _SparseWeight):
    def __init__(self, conv: nn.Conv2d, nnz: int | None = None) -> None:
        self._check_conv(conv)
        super().__init__(conv.weight, nnz)
        self._take_conv(conv, trainable_bias=False)


_TWINS = {nn.Linear: SparseLinear, nn.Conv2d: SparseConv2d}


def encode_sparse_(model: nn.Module, names: list[str], nnz: dict[str, int] | None = None) -> dict[str, dict]:
    """Swap the named Linear/Conv2d layers of ``model`` for their bitmask-encoded twins, in place,
    where the encoding is smaller than the dense weight (below 31/32 density); returns
    {name: {kind, nnz, numel, bytes, dense_bytes}} for the layers swapped. ``nnz`` (from a
    checkpoint's structure) rebuilds empty twins of the recorded sizes for the values to load into."""
    done = {}

    def build(name: str, layer: nn.Module, twin_type) -> nn.Module | None:
        numel = layer.weight.numel()
        count = int((layer.weight != 0).sum()) if nnz is None else int(nnz[name])
        if nnz is None and encoded_bytes(numel, count) >= 4 * numel:
            return None
        twin = twin_type(layer, None if nnz is None else count)
        done[name] = {"kind": type(layer).__name__, "nnz": count, "numel": numel,
                      "bytes": twin.stored_bytes(), "dense_bytes": 4 * numel}
        return twin

    swap_twins_(model, names, _TWINS, "sparse encoding", build)
    return done
