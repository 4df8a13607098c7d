"""Peak memory of inference and of a training step.

On CUDA the caching allocator's own peak counter is used. On the CPU, where no allocator
statistic exists, every tensor an operator allocates is tracked at the dispatcher (a
``TorchDispatchMode``). Inference: a tensor's storage bytes count as live from creation until its
last Python reference dies, so the peak is the weights plus the largest set of activations alive
at once. Training (``StepMemory``): storages are followed by weak reference until the storage
itself dies, which also covers the copies autograd saves for backward.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

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


class _Allocations(TorchDispatchMode):
    """Every storage an operator creates within the mode, as a timeline of (id, +bytes) at its
    creation and (id, -bytes) when its last reference (tensor, view or autograd's saved copy) dies:
    a weak reference to the storage, whose Python object PyTorch keeps alive with the storage."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[int, int]] = []
        self.live_ids: dict[int, int] = {}  # data pointer of a live storage -> its id
        self._refs: dict[int, weakref.ref] = {}
        self._next = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = None
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr == 0 or ptr in self.live_ids:
                    continue  # a view, alias or in-place result of memory tracked already
                if inputs is None:
                    inputs = {x.untyped_storage().data_ptr() for x in tree_leaves((args, kwargs))
                              if isinstance(x, torch.Tensor)}
                if ptr in inputs:
                    continue  # a view of memory that existed before (a parameter's transpose)
                ident, nbytes = self._next, storage.nbytes()
                self._next += 1
                self.live_ids[ptr] = ident
                self.events.append((ident, nbytes))
                self._refs[ident] = weakref.ref(storage, lambda _, ident=ident, ptr=ptr, n=nbytes: self._release(ident, ptr, n))
        return out

    def _release(self, ident: int, ptr: int, nbytes: int) -> None:
        self.events.append((ident, -nbytes))
        if self.live_ids.get(ptr) == ident:
            del self.live_ids[ptr]
        self._refs.pop(ident, None)

    def peak(self, excluding: set[int] = frozenset()) -> int:
        live = top = 0
        for ident, delta in self.events:
            if ident not in excluding:
                live += delta
                top = max(top, live)
        return top


@dataclass
class TrainingMemory:
    """Peak bytes of one training step (forward and backward) above the weights: ``peak_bytes``
    counts everything the step allocated (activations saved for backward, temporaries, parameter
    gradients); ``activation_bytes`` the same without the parameter gradients."""

    peak_bytes: int
    activation_bytes: int
    gradient_bytes: int

    def to_dict(self) -> dict[str, int]:
        return {"peak_bytes": self.peak_bytes, "activation_bytes": self.activation_bytes,
                "gradient_bytes": self.gradient_bytes}


class StepMemory:
    """A context manager that measures the allocations of what runs inside it (one training
    step's forward and backward passes); ``result(model)`` then tells the parameter gradients
    apart. On CUDA the allocator's peak counter; on the CPU ``_Allocations``."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.tracker = None if self.cuda else _Allocations()
        self._base = 0
        self._peak = 0

    def __enter__(self) -> "StepMemory":
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self.tracker.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self._peak = int(torch.cuda.max_memory_allocated() - self._base)
        else:
            self.tracker.__exit__(*exc)

    def result(self, model: nn.Module) -> dict[str, int]:
        """``TrainingMemory`` as a dict: peak bytes, peak without parameter gradients, gradient bytes."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        grad_bytes = sum(g.untyped_storage().nbytes() for g in grads)
        if self.cuda:
            return TrainingMemory(self._peak, self._peak - grad_bytes, grad_bytes).to_dict()
        live = self.tracker.live_ids
        ids = {live[g.untyped_storage().data_ptr()] for g in grads if g.untyped_storage().data_ptr() in live}
        return TrainingMemory(self.tracker.peak(), self.tracker.peak(ids), grad_bytes).to_dict()


def training_step_memory(model: nn.Module, inputs: Sequence[torch.Tensor],
                         loss: Callable[[Any], torch.Tensor]) -> TrainingMemory:
    """Measure one forward pass of ``inputs`` and backward of ``loss(outputs)`` from cleared
    gradients (they are left in the parameters' ``.grad``)."""
    for p in model.parameters():
        p.grad = None
    step = StepMemory(inputs[0].device if inputs else "cpu")
    with step:
        value = loss(model(*inputs))
        value.backward()
        del value
    return TrainingMemory(**step.result(model))
