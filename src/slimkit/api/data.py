"""A user's data, as slimkit's steps take it: any iterable of batches becomes an in-memory ``Split``.

NNCF takes ``nncf.Dataset(loader, transform_fn)``; slimkit takes the same two things. Each item
the iterable yields (after ``transform_fn``, if given) is one batch in one of these shapes:

- a tensor: the model's one input, no targets;
- ``(inputs, targets)``: ``inputs`` a tensor or a tuple/list of tensors (the model's positional
  inputs, in order), ``targets`` a tensor, or None;
- a mapping with a ``"labels"`` entry (a transformers batch) is refused with the fix: a
  ``transform_fn`` that returns ``((input_ids, attention_mask), labels)`` in the order the
  model's ``forward`` takes them.

Rows are concatenated along the first dimension. Where the inputs hold token ids and an attention
mask (``infer_mask_input``: integer ``[rows, positions]`` inputs of one shape, one of them all 0/1
with a token first), the split knows its mask: training batches are cut to their longest row, and
calibration statistics count real tokens only. ``max_samples`` caps how many are kept (the
first ones, in the iterable's order): calibration needs hundreds, not a dataset.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch

from slimkit.core.errors import ConfigError
from slimkit.data.base import Split
from slimkit.data.positions import infer_mask_input

TransformFn = Callable[[Any], Any]


def as_split(data: Iterable[Any] | Split, *, transform_fn: TransformFn | None = None,
             max_samples: int | None = None, what: str = "data") -> tuple[Split, bool]:
    """``data`` as one ``Split`` and whether it carries targets (a split of inputs only has zero
    placeholders as targets, which training refuses to read)."""
    if isinstance(data, Split):
        return (data if max_samples is None else data.head(max_samples)), True
    if isinstance(data, torch.Tensor):
        raise ConfigError(f"{what}: a bare tensor is ambiguous (one batch or rows?); pass [tensor] for one batch "
                          "or a DataLoader")
    inputs: list[tuple[torch.Tensor, ...]] = []
    targets: list[torch.Tensor | None] = []
    rows = 0
    for i, item in enumerate(data):
        batch_inputs, batch_targets = _batch(transform_fn(item) if transform_fn is not None else item, i, what)
        if inputs and len(batch_inputs) != len(inputs[0]):
            raise ConfigError(f"{what}: batch {i} has {len(batch_inputs)} inputs, batch 0 had {len(inputs[0])}")
        if targets and (batch_targets is None) != (targets[0] is None):
            raise ConfigError(f"{what}: batch {i} {'has no' if batch_targets is None else 'has'} targets, "
                              f"batch 0 {'had' if targets[0] is not None else 'had none'}")
        inputs.append(batch_inputs)
        targets.append(batch_targets)
        rows += len(batch_inputs[0])
        if max_samples is not None and rows >= max_samples:
            break
    if not inputs:
        raise ConfigError(f"{what}: the iterable yielded no batch")
    try:
        columns = tuple(torch.cat([b[k] for b in inputs]) for k in range(len(inputs[0])))
    except RuntimeError as err:
        raise ConfigError(f"{what}: batches do not stack along the first dimension ({err}); pad them to one "
                          "shape in transform_fn") from None
    labelled = targets[0] is not None
    labels = torch.cat(targets) if labelled else torch.zeros(len(columns[0]), dtype=torch.long)
    if max_samples is not None:
        columns, labels = tuple(c[:max_samples] for c in columns), labels[:max_samples]
    return Split(columns, labels, mask_input=infer_mask_input(columns)), labelled


def _batch(item: Any, index: int, what: str) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    if isinstance(item, torch.Tensor):
        return (item,), None
    if isinstance(item, Mapping):
        raise ConfigError(f"{what}: batch {index} is a mapping ({', '.join(map(str, list(item)[:4]))}); pass "
                          "transform_fn=lambda b: ((b['input_ids'], b['attention_mask']), b['labels']) with the "
                          "inputs in the order the model's forward takes them")
    if isinstance(item, (tuple, list)) and len(item) == 2:
        inputs, targets = item
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
        if (isinstance(inputs, (tuple, list)) and inputs and all(isinstance(t, torch.Tensor) for t in inputs)
                and (targets is None or isinstance(targets, torch.Tensor))):
            n = len(inputs[0])
            if any(len(t) != n for t in inputs) or (targets is not None and len(targets) != n):
                raise ConfigError(f"{what}: batch {index}'s inputs and targets have different numbers of rows")
            return tuple(inputs), targets
    raise ConfigError(f"{what}: batch {index} is a {type(item).__name__}; expected a tensor or (inputs, targets) "
                      "with inputs a tensor or a tuple of tensors (use transform_fn to convert)")
