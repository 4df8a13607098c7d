"""Synthetic sequence tasks for dynamic computation (Graves 2016, "Adaptive Computation Time"):
parity and addition, generated from a seed so every run sees the same rows.

- **Parity** (Graves's section 3.1): a vector of ``size`` entries of which a random number 1..size,
  at random positions, are +1 or -1 (each sign with probability 1/2) and the rest 0. The target is
  the parity of the number of +1 entries (Graves: "1 if there was an odd number of ones"), so
  every nonzero entry matters and the -1 entries are distractors. The difficulty of a row is its
  count of nonzero entries (uniform over 1..size): the more entries, the more sequential work a
  network does to fold them into one bit. Graves used 64 entries and trained for hours; the task
  uses 8 (65,536 training rows), which a 128-unit tanh RNN with ACT learns in a few minutes on one
  CPU thread (16 entries stayed at chance within that budget: a GRU ACT on 16,384 rows, 30 epochs).
- **Addition**, in a smaller form than Graves's (his: five numbers of up to five digits each, the
  running sums written as digit sequences): a sequence of 1..``max_len`` decimal digits, one token
  per step, and the target is the last digit of their sum (sum mod 10, ten classes). Token id 0
  is padding, ids 1..10 are the digits 0..9; rows are right-padded to ``max_len`` with a mask
  input (1 = real token), so a dynamic RNN runs each row for its real length only. The difficulty
  is the length.

Each split carries the difficulty per row as the extra ``difficulty``, for reports that bucket
by it.
"""

from __future__ import annotations

import torch

from slimkit.core.errors import ConfigError
from slimkit.data.base import DataSplits, Split

DATA_SEED = 0  # the split is part of the task definition: fixed, independent of the run seed
PARITY_SIZE = 8
PARITY_ROWS = (65536, 2048, 4096)
ADDITION_MAX_LEN = 10
ADDITION_ROWS = (16384, 2048, 4096)
PAD_ID = 0  # token id of padding in the addition task; digit d is token d + 1


def parity_rows(rows: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rows`` parity rows: inputs ``[rows, size]`` float in {-1, 0, 1}, labels ``[rows]`` (1 when
    the count of +1 entries is odd) and difficulty ``[rows]`` (the count of nonzero entries, 1..size)."""
    if size < 1 or rows < 0:
        raise ConfigError(f"parity needs size >= 1 and rows >= 0, got size={size}, rows={rows}")
    count = torch.randint(1, size + 1, (rows,), generator=generator)
    # a random permutation per row: the positions ranked below `count` are the nonzero ones
    rank = torch.rand(rows, size, generator=generator).argsort(1).argsort(1)
    nonzero = rank < count[:, None]
    signs = torch.randint(0, 2, (rows, size), generator=generator) * 2 - 1
    x = (nonzero * signs).float()
    labels = ((x == 1).sum(1) % 2).long()
    return x, labels, nonzero.sum(1)


def addition_rows(rows: int, max_len: int, generator: torch.Generator) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rows`` addition rows: token ids ``[rows, max_len]`` (digit d as d + 1, right-padded with
    ``PAD_ID``), the mask ``[rows, max_len]`` (1 = real token), labels ``[rows]`` (the sum of the
    digits mod 10) and difficulty ``[rows]`` (the length, 1..max_len)."""
    if max_len < 1 or rows < 0:
        raise ConfigError(f"addition needs max_len >= 1 and rows >= 0, got max_len={max_len}, rows={rows}")
    lengths = torch.randint(1, max_len + 1, (rows,), generator=generator)
    digits = torch.randint(0, 10, (rows, max_len), generator=generator)
    mask = (torch.arange(max_len)[None, :] < lengths[:, None]).long()
    ids = torch.where(mask.bool(), digits + 1, torch.full_like(digits, PAD_ID))
    labels = (digits * mask).sum(1) % 10
    return ids, mask, labels, lengths


def _cut(n: tuple[int, int, int]) -> list[tuple[int, int]]:
    edges = [0, n[0], n[0] + n[1], sum(n)]
    return list(zip(edges, edges[1:]))


def load_parity_splits(size: int = PARITY_SIZE, rows: tuple[int, int, int] = PARITY_ROWS,
                       seed: int = DATA_SEED) -> DataSplits:
    """Train/val/test parity splits (inputs ``[N, size]``), each with its ``difficulty`` extra."""
    x, y, difficulty = parity_rows(sum(rows), size, torch.Generator().manual_seed(seed))
    return DataSplits(*(Split((x[a:b],), y[a:b], extras={"difficulty": difficulty[a:b]}) for a, b in _cut(rows)))


def load_addition_splits(max_len: int = ADDITION_MAX_LEN, rows: tuple[int, int, int] = ADDITION_ROWS,
                         seed: int = DATA_SEED) -> DataSplits:
    """Train/val/test addition splits (inputs: token ids and mask ``[N, max_len]``, the mask as
    ``mask_input``), each with its ``difficulty`` extra (the length)."""
    ids, mask, y, lengths = addition_rows(sum(rows), max_len, torch.Generator().manual_seed(seed))
    return DataSplits(*(Split((ids[a:b], mask[a:b]), y[a:b], mask_input=1, extras={"difficulty": lengths[a:b]})
                        for a, b in _cut(rows)))
