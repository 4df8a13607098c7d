"""Measure one model on one task: every figure of a results.json step comes from here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from slimkit.data.base import DataSplits
from slimkit.measure.config import MeasureConfig
from slimkit.measure.contention import latency_warning
from slimkit.measure.latency import measure_latency, measure_latency_over_rows
from slimkit.measure.macs import count_macs
from slimkit.measure.memory import peak_inference_bytes
from slimkit.measure.per_row import has_input_dependent_cost, spread_rows, per_row_macs
from slimkit.measure.quality import predict
from slimkit.measure.size import count_nonzero_params, count_params, dense_fp32_bytes, file_bytes, serialized_bytes


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda' (an error if absent) or 'auto' (cuda when present)."""
    from slimkit.core.errors import BackendUnavailableError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("measure.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def measure_config(cfg: MeasureConfig | dict[str, Any] | None, where: str = "measure") -> MeasureConfig:
    """A MeasureConfig from ``cfg``: a config, a mapping of its fields (as a recipe's ``measure:``) or None."""
    from slimkit.core.config import parse_config

    return cfg if isinstance(cfg, MeasureConfig) else parse_config(MeasureConfig, cfg, where)


def measure_model(model: nn.Module, task: Any, cfg: MeasureConfig | dict[str, Any] | None = None, *,
                  data: DataSplits | None = None, artifact: str | os.PathLike[str] | None = None,
                  backend: str = "eager") -> dict[str, Any]:
    """All metrics of ``model`` on ``task``'s held-out test split.

    ``size_bytes`` is the size of ``artifact`` when given (the file the run wrote), else of the
    model's safetensors serialization. ``task`` is a Task (``slimkit.measure_model`` also takes a
    task name). A model declaring
    ``input_dependent_cost = True`` gets its MACs and batch-1 latency over ``cfg.per_row`` test
    rows, one at a time (``macs`` is then the mean; ``macs_per_row`` summarises them). ``cfg`` may
    be a mapping of MeasureConfig fields. The model is measured in eval mode and handed back in the
    train/eval mode it came in.
    """
    cfg = measure_config(cfg)
    was_training = model.training
    try:
        return _measure(model, task, cfg, data, artifact, backend)
    finally:
        model.train(was_training)


def _measure(model: nn.Module, task: Any, cfg: MeasureConfig, data: DataSplits | None,
             artifact: str | os.PathLike[str] | None, backend: str) -> dict[str, Any]:
    data = data or task.data
    device = resolve_device(cfg.device)
    model = model.to(device).eval()
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    x1 = tuple(t.to(device) for t in data.test.example_inputs(1))
    xn = tuple(t.to(device) for t in data.test.example_inputs(cfg.batch_n))
    timing = dict(warmup=cfg.warmup, repeats=cfg.repeats, threads=cfg.threads, sync=sync,
                  max_seconds=cfg.max_seconds)
    rows = spread_rows(data.test, cfg.per_row, device) if has_input_dependent_cost(model) else None
    lat1 = measure_latency(model, x1, **timing) if rows is None else measure_latency_over_rows(model, rows, **timing)
    latn = measure_latency(model, xn, **timing)
    outputs = predict(model, data.test, cfg.eval_batch_size, device)
    quality = task.evaluate(outputs, data.test.targets)
    size = file_bytes(artifact) if artifact is not None else serialized_bytes(model)
    metrics: dict[str, Any] = {
        "quality": quality["quality"],
        "size_bytes": size,
        "dense_fp32_bytes": dense_fp32_bytes(model),
        "params": count_params(model),
        "nonzero_params": count_nonzero_params(model),
        "macs": count_macs(model, x1) if rows is None else None,
        "latency_ms_b1": lat1.median_ms,
        "latency_ms_bN": latn.median_ms,
        "batch_N": cfg.batch_n,
        "backend": backend,
        "precision": "fp32",
        "device": str(device),
        "latency_b1": lat1.to_dict(),
        "latency_bN": latn.to_dict(),
        "timing_warning": latency_warning(lat1.to_dict(), latn.to_dict()),
        "quality_metrics": {k: v for k, v in quality.items() if k != "quality"},
        "artifact": Path(artifact).name if artifact is not None else None,
    }
    if rows is not None:
        metrics["macs_per_row"] = by_row = per_row_macs(model, rows)
        metrics["macs"] = round(by_row["mean"])
        metrics["latency_b1"]["rows"] = len(rows)
    if cfg.memory:
        metrics["peak_memory_bytes"] = peak_inference_bytes(model, xn)
    return metrics
