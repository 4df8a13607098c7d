"""A generated token-classification task for text models: sequences of random token ids, labelled
by which quarter of the vocabulary holds most of the sequence's tokens (ties to the lowest)."""

from __future__ import annotations

import torch

from slimkit.data.base import DataSplits, Split

DATA_SEED = 0


def load_token_rule_splits(vocab: int = 64, length: int = 16, rows: tuple[int, int, int] = (1024, 256, 256),
                           classes: int = 4) -> DataSplits:
    """Train/val/test splits of ``[N, length]`` int64 token ids in ``[0, vocab)`` and labels in
    ``[0, classes)``; each row leans towards one quarter so the rule is learnable."""
    g = torch.Generator().manual_seed(DATA_SEED)
    n = sum(rows)
    lean = torch.randint(0, classes, (n, 1), generator=g)
    width = vocab // classes
    leaning = lean * width + torch.randint(0, width, (n, length), generator=g)
    uniform = torch.randint(0, vocab, (n, length), generator=g)
    ids = torch.where(torch.rand(n, length, generator=g) < 0.4, leaning, uniform)
    counts = torch.nn.functional.one_hot(ids // width, classes).sum(1)
    labels = counts.argmax(1)
    cut = [0, rows[0], rows[0] + rows[1], n]
    return DataSplits(*(Split((ids[a:b],), labels[a:b]) for a, b in zip(cut, cut[1:])))
