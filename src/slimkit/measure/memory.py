"""Peak memory of inference.

On CUDA the caching allocator's own peak counter is used. On the CPU, where no allocator
statistic exists, every tensor an operator allocates is tracked at the dispatcher (a
``TorchDispatchMode``): its storage bytes count as live from creation until its last Python
reference dies, so the peak is the weights plus the largest set of activations alive at once.
"""

from __future__ import annotations

import weakref
from typing import Sequence

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from slimkit.core.io import tensors_for_saving


class _LiveTensorBytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {_ptr(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                ptr = _ptr(t)
                if ptr in inputs or ptr in self._tracked or ptr == 0:
                    continue  # a view, alias or in-place result of memory that already exists
                nbytes = t.untyped_storage().nbytes()
                self._tracked[ptr] = nbytes
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._release, ptr)
        return out

    def _release(self, ptr: int) -> None:
        self.live -= self._tracked.pop(ptr, 0)


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def weights_bytes(model: nn.Module) -> int:
    """Bytes the model's parameters and buffers occupy in memory."""
    return sum(t.numel() * t.element_size() for t in tensors_for_saving(model.state_dict()).values())


@torch.no_grad()
def peak_activation_bytes(model: nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    """Largest total of intermediate tensors alive at once during one forward pass."""
    if inputs and inputs[0].is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        model(*inputs)
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    tracker = _LiveTensorBytes()
    with tracker:
        out = model(*inputs)
    del out
    return tracker.peak


def peak_inference_bytes(model: nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    """Weights plus peak activations of one forward pass on ``inputs``."""
    return weights_bytes(model) + peak_activation_bytes(model, inputs)
