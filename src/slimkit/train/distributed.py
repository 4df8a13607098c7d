"""Data-parallel training on torchrun: the one loop under ``torchrun --nproc-per-node N``.

``torchrun`` starts N copies of the same command and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each; ``init_from_env`` joins them into one
process group (gloo on CPU, NCCL on CUDA, each rank on ``cuda:LOCAL_RANK``). Without those
variables nothing changes: the same recipe runs in one process.

How ``fit`` trains then (``DataParallel``):

- every rank draws the same global batches (the same seeded shuffle) and takes its own contiguous
  share of each batch's rows, so N ranks see what one process with the same ``batch_size`` sees;
- the model is wrapped in ``DistributedDataParallel``, which averages gradients across ranks in
  backward; each rank's loss is weighted by its share of the batch's rows, so the averaged
  gradient is exactly the gradient of the whole batch's mean loss, also when a batch does not
  split evenly (the same weights as one process, within float rounding: tested);
- every rank validates on the whole validation split (the weights are identical, so are the
  keep-best decisions), and only rank 0 writes files (the runner gives other ranks a scratch
  folder).

BatchNorm under DDP normalises with each rank's own rows (PyTorch's ``SyncBatchNorm`` runs on
GPUs only), so a model with BatchNorm trains like one with a per-rank batch: close to, not equal
to, one process. Multi-node: the same command on every machine with ``--nnodes M
--node-rank K --rdzv-backend c10d --rdzv-endpoint HOST:PORT`` (docs/training.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from slimkit.core.distributed import is_main, rank, world_size  # noqa: F401 - re-exported


def init_from_env(device: str | torch.device = "cpu") -> torch.device:
    """Join torchrun's process group if this process was started by it (``WORLD_SIZE`` > 1);
    returns the device this rank trains on (``cuda:LOCAL_RANK`` for CUDA)."""
    device = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def active() -> bool:
    """Whether ``fit`` trains data-parallel: a process group of more than one rank is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass
class DataParallel:
    """What ``fit`` needs to train one rank's share: the DDP-wrapped model it runs forward passes
    through, and each batch's rows for this rank with the loss weight that makes DDP's average
    the whole batch's mean."""

    module: nn.Module
    wrapped: nn.Module
    rank: int
    size: int

    @classmethod
    def wrap(cls, model: nn.Module, device: torch.device) -> "DataParallel":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # find_unused_parameters: models whose forward skips parameters on some batches (exits,
        # gates, sub-nets) would otherwise stall the gradient reduction
        wrapped = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
        return cls(model, wrapped, dist.get_rank(), dist.get_world_size())

    def share(self, rows: int) -> slice:
        """This rank's contiguous rows of a global batch of ``rows``; a batch of fewer rows than
        ranks is computed whole by every rank (the average of identical gradients is the same)."""
        if rows < self.size:
            return slice(0, rows)
        return slice(self.rank * rows // self.size, (self.rank + 1) * rows // self.size)

    def loss_weight(self, rows: int) -> float:
        """The factor on this rank's mean loss: its share of the rows, times the world size that
        DDP's gradient average divides by."""
        if rows < self.size:
            return 1.0
        mine = self.share(rows)
        return (mine.stop - mine.start) * self.size / rows

    def all_sum(self, *values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()


def split_batch(inputs: tuple[torch.Tensor, ...], targets: torch.Tensor, extras: dict[str, Any],
                part: slice) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, dict[str, Any]]:
    return tuple(t[part] for t in inputs), targets[part], {k: v[part] for k, v in extras.items()}
