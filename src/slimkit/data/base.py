"""The one in-memory data shape every task hands to training and measurement.

A ``Split`` is a tuple of input tensors (what the model's ``forward`` takes, in order) and one
target tensor (labels, or reference outputs for tasks scored by agreement). Everything built in
is small enough to live in memory, which keeps loading deterministic and fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from slimkit.core.errors import ConfigError


@dataclass(frozen=True)
class Split:
    inputs: tuple[torch.Tensor, ...]
    targets: torch.Tensor
    # Index of an attention-mask input (1 = token, right-padded). When set, training and
    # evaluation batches are cut to their longest row (dynamic padding); example_inputs keep
    # the full padded length so timings use one stated shape.
    mask_input: int | None = None

    def __post_init__(self) -> None:
        n = len(self.targets)
        for i, t in enumerate(self.inputs):
            if len(t) != n:
                raise ConfigError(f"split input {i} has {len(t)} rows but targets have {n}")

    def __len__(self) -> int:
        return len(self.targets)

    def head(self, n: int) -> "Split":
        return Split(tuple(t[:n] for t in self.inputs), self.targets[:n], self.mask_input)

    def trim(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Cut padded sequence inputs of a batch to the batch's longest row."""
        if self.mask_input is None:
            return inputs
        length = max(int(inputs[self.mask_input].sum(1).max()), 1)
        return tuple(t[:, :length] if t.dim() == 2 else t for t in inputs)

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """The first ``batch_size`` rows, repeated if the split is smaller: real data for timing."""
        idx = torch.arange(batch_size) % len(self)
        return tuple(t[idx] for t in self.inputs)

    def batches(self, batch_size: int) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
        """In-order batches for evaluation."""
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield self.trim(tuple(t[start:stop] for t in self.inputs)), self.targets[start:stop]

    def loader(self, batch_size: int, *, shuffle: bool, seed: int) -> DataLoader:
        """A DataLoader whose shuffling is fixed by ``seed``; batches are (inputs tuple, targets)."""
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(_SplitDataset(self), batch_size=batch_size, shuffle=shuffle,
                          generator=generator, collate_fn=self._collate)

    def _collate(self, items):
        inputs = tuple(torch.stack([it[0][k] for it in items]) for k in range(len(items[0][0])))
        return self.trim(inputs), torch.stack([it[1] for it in items])


@dataclass(frozen=True)
class DataSplits:
    train: Split
    val: Split
    test: Split

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


class _SplitDataset(Dataset):
    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):  # type: ignore[override]
        return tuple(t[i] for t in self.split.inputs), self.split.targets[i]


def stratified_split(
    x: np.ndarray, y: np.ndarray, *, val: float, test: float, seed: int
) -> DataSplits:
    """Fixed stratified train/val/test split of a classification set (scikit-learn's splitter)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    rest, test_idx = train_test_split(idx, test_size=test, stratify=y, random_state=seed)
    train_idx, val_idx = train_test_split(
        rest, test_size=val / (1.0 - test), stratify=y[rest], random_state=seed
    )

    def split(ix: np.ndarray) -> Split:
        return Split((torch.from_numpy(np.ascontiguousarray(x[ix], dtype=np.float32)),),
                     torch.from_numpy(y[ix].astype(np.int64)))

    return DataSplits(split(train_idx), split(val_idx), split(test_idx))
