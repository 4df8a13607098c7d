"""The one in-memory data shape every task hands to training and measurement.

A ``Split`` is a tuple of input tensors (what the model's ``forward`` takes, in order) and one
target tensor (labels, or reference outputs for tasks scored by agreement). Everything built in
is small enough to live in memory, which keeps loading deterministic and fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator, Mapping

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
    # Per-row tensors that travel with each training batch but are not model inputs (a
    # teacher's precomputed outputs, for distillation); batched into ``Batch.extras``.
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.targets)
        for i, t in enumerate(self.inputs):
            if len(t) != n:
                raise ConfigError(f"split input {i} has {len(t)} rows but targets have {n}")
        for name, t in self.extras.items():
            if len(t) != n:
                raise ConfigError(f"split extra {name!r} has {len(t)} rows but targets have {n}")

    def __len__(self) -> int:
        return len(self.targets)

    def head(self, n: int) -> "Split":
        return self.select(slice(0, n))

    def select(self, rows: slice | torch.Tensor) -> "Split":
        """The given rows (a slice or an index tensor), extras included."""
        return replace(self, inputs=tuple(t[rows] for t in self.inputs), targets=self.targets[rows],
                       extras={k: t[rows] for k, t in self.extras.items()})

    def with_extras(self, **extras: torch.Tensor) -> "Split":
        return replace(self, extras={**self.extras, **extras})

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
        """A DataLoader whose shuffling is fixed by ``seed``; batches are (inputs tuple, targets,
        extras dict). Shuffled sequence splits (``mask_input`` set) are grouped by length: each
        window of ``LENGTH_GROUP`` batches of a fresh permutation is sorted by length before it is
        cut into batches, and the batches are shuffled, so a batch pads to little more than its
        own rows (2.04x fewer token positions per epoch on the MiniLM training split at batch 32,
        checked by tests/tasks/test_minilm.py) while every epoch still mixes."""
        generator = torch.Generator().manual_seed(seed)
        if shuffle and self.mask_input is not None:
            lengths = self.inputs[self.mask_input].sum(1)
            sampler = _LengthGroupedBatches(lengths, batch_size, generator)
            return DataLoader(_SplitDataset(self), batch_sampler=sampler, collate_fn=self._collate)
        return DataLoader(_SplitDataset(self), batch_size=batch_size, shuffle=shuffle,
                          generator=generator, collate_fn=self._collate)

    def _collate(self, items):
        inputs = tuple(torch.stack([it[0][k] for it in items]) for k in range(len(items[0][0])))
        extras = {name: torch.stack([it[2][name] for it in items]) for name in items[0][2]}
        return self.trim(inputs), torch.stack([it[1] for it in items]), extras


@dataclass(frozen=True)
class DataSplits:
    train: Split
    val: Split
    test: Split
    # Training inputs without labels (their targets are placeholders that nothing reads): what a
    # few-label task keeps back, and what distillation can have the teacher label.
    unlabelled: Split | None = None

    def sizes(self) -> dict[str, int]:
        sizes = {"train": len(self.train), "val": len(self.val), "test": len(self.test)}
        if self.unlabelled is not None:
            sizes["unlabelled"] = len(self.unlabelled)
        return sizes

    def few_labels(self, per_class: int, seed: int) -> "DataSplits":
        """Keep ``per_class`` labelled training rows of each class (drawn with ``seed``); the rest
        of the training split becomes ``unlabelled`` with its labels removed (set to -1)."""
        targets = self.train.targets
        if targets.dtype != torch.int64 or targets.dim() != 1:
            raise ConfigError("labels_per_class needs a classification task (one integer label per row)")
        generator = torch.Generator().manual_seed(seed)
        keep = []
        for label in targets.unique():
            rows = (targets == label).nonzero().flatten()
            if len(rows) < per_class:
                raise ConfigError(f"labels_per_class: class {int(label)} has only {len(rows)} training rows, "
                                  f"fewer than {per_class}")
            keep.append(rows[torch.randperm(len(rows), generator=generator)[:per_class]])
        labelled = torch.cat(keep).sort().values
        rest = torch.ones(len(targets), dtype=torch.bool)
        rest[labelled] = False
        unlabelled = self.train.select(rest.nonzero().flatten())
        unlabelled = replace(unlabelled, targets=torch.full_like(unlabelled.targets, -1))
        return replace(self, train=self.train.select(labelled), unlabelled=unlabelled)


LENGTH_GROUP = 50  # batches per window sorted by length


class _LengthGroupedBatches:
    """Batches of row indices: a random permutation per epoch, cut into windows of
    ``LENGTH_GROUP * batch_size`` rows, each sorted by length and cut into batches, all batches
    then shuffled (the "group by length" sampler of many NLP trainers)."""

    def __init__(self, lengths: torch.Tensor, batch_size: int, generator: torch.Generator) -> None:
        self.lengths, self.batch_size, self.generator = lengths, batch_size, generator
        window = LENGTH_GROUP * batch_size
        n = len(lengths)
        self._len = sum(-(-min(window, n - start) // batch_size) for start in range(0, n, window))

    def __len__(self) -> int:
        return self._len

    def __iter__(self):
        n, window = len(self.lengths), LENGTH_GROUP * self.batch_size
        order = torch.randperm(n, generator=self.generator)
        batches = []
        for start in range(0, n, window):
            chunk = order[start:start + window]
            chunk = chunk[self.lengths[chunk].argsort(descending=True, stable=True)]
            batches += [chunk[i:i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[i]


class _SplitDataset(Dataset):
    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):  # type: ignore[override]
        return (tuple(t[i] for t in self.split.inputs), self.split.targets[i],
                {name: t[i] for name, t in self.split.extras.items()})


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
