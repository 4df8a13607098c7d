"""HashedNets (Chen et al. 2015): a layer's virtual weight matrix whose entry n is
``sign(n) · w[h(n)]`` for a small real parameter vector ``w``; the hash and the sign come from
the entry's index, so only ``w`` (and a seed) is stored.

The hashes are universal hashes of the flat index with integer multiply, add and remainder
(``((a·n + b) mod p) mod K`` with p = 2³¹ − 1), computed in the forward pass: the checkpoint and
the ONNX file hold ``w`` alone, ONNX Runtime constant-folds the index arithmetic at load, eager
PyTorch caches it. The gradient of ``w[k]`` is the signed sum of the gradients of the entries
hashed to it (autograd of the gather), as in the paper.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from slimkit.encoding.layer import EncodedLayer, tensor_bytes
from slimkit.encoding.twins import Conv2dTwin, LinearTwin, swap_twins_

PRIME = 2**31 - 1


def _coefficients(seed: int) -> tuple[int, int, int, int]:
    g = torch.Generator().manual_seed(seed)
    a, b, c, d = (int(x) for x in torch.randint(1, PRIME, (4,), generator=g))
    return a, b, c, d


def hash_indices(numel: int, stored: int, seed: int, device=None,
                 coefficients: tuple[int, int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(bucket in [0, stored), sign ±1 as float) of each of ``numel`` flat entries."""
    a, b, c, d = coefficients or _coefficients(seed)
    n = torch.arange(numel, dtype=torch.int64, device=device)
    bucket = torch.remainder(torch.remainder(n * a + b, PRIME), stored)
    sign = torch.remainder(torch.remainder(n * c + d, PRIME), 2).float() * 2 - 1
    return bucket, sign


class _HashedWeight(EncodedLayer):
    """A weight of ``weight_shape`` backed by ``hashed_weight`` (``stored`` values)."""

    kind = "hashed"

    def __init__(self, weight_shape: tuple[int, ...], stored: int, seed: int) -> None:
        super().__init__()
        self.weight_shape, self.stored, self.seed = tuple(weight_shape), stored, seed
        self.hashed_weight = nn.Parameter(torch.zeros(stored))
        self.coefficients = _coefficients(seed)  # Python ints: the traced graph holds them as constants
        self._index: tuple[torch.Tensor, torch.Tensor] | None = None

    def index(self) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.hashed_weight.device
        if self._index is not None and self._index[0].device == device and not torch.compiler.is_compiling():
            return self._index
        index = hash_indices(math.prod(self.weight_shape), self.stored, self.seed, device, self.coefficients)
        if not torch.compiler.is_compiling():
            self._index = index
        return index

    def project_(self, weight: torch.Tensor) -> None:
        """Set ``w`` to the least-squares fit of ``weight``: the mean of sign·weight per bucket."""
        bucket, sign = self.index()
        flat = weight.detach().flatten().to(bucket.device) * sign
        sums = torch.zeros(self.stored, device=flat.device).index_add_(0, bucket, flat)
        counts = torch.bincount(bucket, minlength=self.stored).clamp_min(1)
        with torch.no_grad():
            self.hashed_weight.copy_(sums / counts)

    def init_(self, fan_in: int, generator: torch.Generator | None = None) -> None:
        """Fresh weights: the virtual matrix gets Kaiming-uniform's scale (as nn.Linear's)."""
        bound = 1 / math.sqrt(fan_in)
        with torch.no_grad():
            self.hashed_weight.copy_(torch.rand(self.stored, generator=generator) * 2 * bound - bound)

    def dense_weight(self) -> torch.Tensor:
        bucket, sign = self.index()
        return (self.hashed_weight[bucket] * sign).reshape(self.weight_shape)

    def stored_bytes(self) -> int:
        return tensor_bytes(self.hashed_weight)

    def extra_repr(self) -> str:
        return f"{self.weight_shape}, {self.stored} stored values (1/{math.prod(self.weight_shape) / self.stored:.1f})"


class HashedLinear(LinearTwin, _HashedWeight):
    def __init__(self, linear: nn.Linear, stored: int, seed: int) -> None:
        super().__init__(tuple(linear.weight.shape), stored, seed)
        self._take_linear(linear, trainable_bias=True)


class HashedConv2d(Conv2dTwin, _HashedWeight):
    def __init__(self, conv: nn.Conv2d, stored: int, seed: int) -> None:
        self._check_conv(conv)
        super().__init__(tuple(conv.weight.shape), stored, seed)
        self._take_conv(conv, trainable_bias=True)


TWINS = {nn.Linear: HashedLinear, nn.Conv2d: HashedConv2d}


def hash_(model: nn.Module, layers: dict[str, dict[str, int]]) -> dict[str, nn.Module]:
    """Swap the named layers ({name: {stored, seed}}) for hashed twins (weights zero), in place."""
    return swap_twins_(model, list(layers), TWINS, "hashing",
                       lambda name, layer, twin: twin(layer, int(layers[name]["stored"]), int(layers[name]["seed"])))
