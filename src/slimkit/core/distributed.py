"""Which process of a torchrun job this is (every layer may ask; ``train.distributed`` joins the
process group and trains data-parallel). Without torchrun: rank 0 of 1."""

from __future__ import annotations

import os

import torch.distributed as dist


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0: the process that measures and writes the run's files."""
    return rank() == 0
