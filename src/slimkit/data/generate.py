"""Inputs made from others, for any step that trains on more than its labelled rows.

- ``generate(pool, "mixup" | "splice", count)``: convex mixes of two float inputs (Beyer et al.
  2022 match a teacher on mixup'ed images), or the head of one token sequence joined to another's
  tail (sentence encoders). Targets are placeholders (-1): a teacher labels them.
- ``concat``: rows of several splits with the same inputs.
- Inputs made from a model alone (no data): ``data.synthetic.deep_inversion``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal, Sequence

import torch

from slimkit.core.errors import ConfigError
from slimkit.data.base import Split


def concat(splits: Sequence[Split]) -> Split:
    """Rows of several splits with the same inputs (extras dropped)."""
    first = splits[0]
    if len(splits) == 1:
        return replace(first, extras={})
    shapes = {tuple(tuple(t.shape[1:]) for t in s.inputs) for s in splits}
    if len(shapes) > 1 or len({s.mask_input for s in splits}) > 1:
        raise ConfigError(f"distill: training inputs of different shapes cannot be combined ({sorted(shapes)})")
    inputs = tuple(torch.cat([s.inputs[k] for s in splits]) for k in range(len(first.inputs)))
    targets = torch.cat([s.targets.to(first.targets.dtype) for s in splits])
    return Split(inputs, targets, first.mask_input)


def generate(pool: Split, method: Literal["mixup", "splice"], count: int, alpha: float = 1.0, seed: int = 0) -> Split:
    """``count`` new inputs made from ``pool``'s (targets are placeholders, -1)."""
    generator = torch.Generator().manual_seed(seed)
    if len(pool) < 2:
        raise ConfigError("distill: generating inputs needs at least two training rows")
    a = torch.randint(len(pool), (count,), generator=generator)
    b = (a + torch.randint(1, len(pool), (count,), generator=generator)) % len(pool)  # never a row with itself
    if method == "mixup":
        inputs = _mixup(pool, a, b, alpha, generator)
    else:
        inputs = _splice(pool, a, b, generator)
    placeholder = torch.full((count, *pool.targets.shape[1:]), -1, dtype=pool.targets.dtype)
    return Split(inputs, placeholder, pool.mask_input)


def _mixup(pool: Split, a: torch.Tensor, b: torch.Tensor, alpha: float, generator: torch.Generator):
    if not all(t.is_floating_point() for t in pool.inputs):
        raise ConfigError("distill: generate mixup mixes float inputs; token ids cannot be mixed (use splice)")
    import numpy as np

    rng = np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=generator)))
    lam = torch.from_numpy(rng.beta(alpha, alpha, size=len(a)))
    out = []
    for t in pool.inputs:
        w = lam.view(-1, *([1] * (t.dim() - 1))).to(t.dtype)
        out.append(w * t[a] + (1 - w) * t[b])
    return tuple(out)


def _splice(pool: Split, a: torch.Tensor, b: torch.Tensor, generator: torch.Generator):
    """Token sequences: keep ``a``'s first token and a random head, then ``b``'s tail after a
    random cut, ending with ``b``'s last real token; the mask marks the new length."""
    m = pool.mask_input
    if m is None:
        raise ConfigError("distill: generate splice joins token sequences; the task's inputs have no attention mask "
                          "(use mixup)")
    mask = pool.inputs[m]
    lengths = mask.sum(1)
    width = mask.shape[1]
    out = [torch.zeros((len(a), *t.shape[1:]), dtype=t.dtype) for t in pool.inputs]
    for row, (i, j) in enumerate(zip(a.tolist(), b.tolist())):
        la, lb = int(lengths[i]), int(lengths[j])
        head = 1 + int(torch.randint(max(la - 2, 1), (1,), generator=generator))  # CLS + >= 1 token (or none)
        cut = 1 + int(torch.randint(max(lb - 2, 1), (1,), generator=generator))  # skip b's CLS, keep >= 1 token
        tail = min(lb - cut, width - head)
        for k, t in enumerate(pool.inputs):
            if k == m:
                continue
            out[k][row, :head] = t[i, :head]
            out[k][row, head:head + tail - 1] = t[j, cut:cut + tail - 1]
            out[k][row, head + tail - 1] = t[j, lb - 1]  # b's closing token (SEP)
        out[m][row, :head + tail] = 1
    return tuple(out)
