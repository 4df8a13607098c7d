"""Which positions of a padded sequence batch are real tokens.

A sequence split pads its rows to one length and carries an attention mask (``Split.mask_input``:
1 = token, 0 = padding). The model still computes every padded position; attention only hides
them from the real ones. On the MiniLM task 62% of a calibration batch's positions are padding.

Which statistics must skip them was checked there (static int8 + SmoothQuant 0.8, cosine to FP32):

- **means** (bias correction's mean output error; also pruning's mean squared activations and
  GPTQ's input Hessians, which are averages of the same kind): padding biases the expectation
  toward rows no real token produces. Real tokens only: cosine 0.9974 -> 0.9983
  (`benchmarks/quantization.py`, before and after).
- **extremes** (quantizer ranges, SmoothQuant's per-channel maxima): keep every position. A
  padded position still carries its position embedding, so padding covers positions past the
  calibration sentences' lengths that longer test sentences reach; SmoothQuant maxima from real
  tokens only lowered cosine in an ad-hoc check.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Sequence

import torch

_MASK: ContextVar[torch.Tensor | None] = ContextVar("slimkit_real_positions", default=None)


@contextmanager
def real_positions(mask: torch.Tensor | None) -> Iterator[None]:
    """Within the block, ``real_rows`` keeps the positions where ``mask`` ([batch, positions])
    is nonzero; ``None`` keeps every position."""
    token = _MASK.set(None if mask is None else mask.bool())
    try:
        yield
    finally:
        _MASK.reset(token)


def batch_mask(inputs: Sequence[torch.Tensor], mask_input: int | None) -> torch.Tensor | None:
    """The attention mask among a batch's inputs (``mask_input``: its index), or None."""
    return None if mask_input is None else inputs[mask_input]


def real_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` ([batch, positions, ...]) as the rows of the real positions only ([tokens, ...]),
    where ``real_positions`` set a mask of x's leading shape; otherwise ``x`` unchanged."""
    mask = _MASK.get()
    if mask is None or x.dim() < 3 or tuple(x.shape[:2]) != tuple(mask.shape):
        return x
    return x[mask.to(x.device)]


def infer_mask_input(inputs: Sequence[torch.Tensor]) -> int | None:
    """The index of an attention mask among a batch's inputs, recognised as transformers lay
    them out: two or more integer inputs of one shape ``[rows, positions]``, exactly one of which
    holds only 0 and 1 and has a token in every row's first position (right padding). None where
    that does not single one out."""
    tokens = [i for i, t in enumerate(inputs) if not t.is_floating_point() and t.dim() == 2 and t.numel()]
    if len(tokens) < 2 or len({tuple(inputs[i].shape) for i in tokens}) != 1:
        return None
    masks = [i for i in tokens if bool(((inputs[i] == 0) | (inputs[i] == 1)).all()) and bool((inputs[i][:, 0] == 1).all())]
    return masks[0] if len(masks) == 1 else None
