"""Checks before training starts: one batch fits in memory and the labels fit the model's
classes, so that a run fails in its first second with one line instead of a traceback later."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.errors import ConfigError
from slimkit.data.base import DataSplits, Split

OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "cannot allocate memory", "failed to allocate",
                 "not enough memory", "defaultcpuallocator")


def preflight(model: nn.Module, data: DataSplits, loss, batch_size: int, device: torch.device, what: str) -> None:
    """A dry forward of ``batch_size`` training rows on ``device`` (``what`` names the setting
    that chose the size), then, for a cross-entropy task, every split's labels against the
    model's classes."""
    outputs = dry_forward(model, data.train, batch_size, device, what)
    if loss is F.cross_entropy and isinstance(outputs, torch.Tensor) and outputs.dim() >= 2:
        check_labels(data, outputs.shape[-1])


def dry_forward(model: nn.Module, split: Split, batch_size: int, device: torch.device, what: str) -> torch.Tensor:
    """The model's outputs for ``batch_size`` rows, without gradients; running out of memory is a
    ConfigError naming ``what`` (the batch size setting) and the device."""
    was_training = model.training
    try:
        inputs = tuple(t.to(device) for t in split.example_inputs(batch_size))
        with torch.no_grad():
            return model.to(device).eval()(*inputs)
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{what} = {batch_size}: one batch does not fit in {device} memory ({first[:200]}); "
                          "use a smaller batch") from None
    finally:
        model.train(was_training)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def is_out_of_memory(err: BaseException) -> bool:
    """An allocation failure: torch's OutOfMemoryError, MemoryError, or a RuntimeError saying so."""
    if isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(err).lower()
    return any(key in text for key in OUT_OF_MEMORY)


def check_labels(data: DataSplits, classes: int) -> None:
    """Every label of every split is a class of the model (-1 marks an unlabelled row)."""
    for name in ("train", "val", "test"):
        targets = getattr(data, name).targets
        if targets.dtype.is_floating_point or targets.dim() != 1 or not len(targets):
            continue
        labelled = targets[targets != -1]
        if not len(labelled):
            continue
        low, high = int(labelled.min()), int(labelled.max())
        if low < 0 or high >= classes:
            bad = low if low < 0 else high
            raise ConfigError(f"task data: the {name} split has label {bad}, but the model has {classes} classes "
                              f"(labels 0 to {classes - 1})")
