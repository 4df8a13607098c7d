"""A recipe's ``measure:`` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slimkit.core.config import Config


class MeasureConfig(Config):
    batch_n: int = Field(64, ge=1, description="the larger batch size timed beside batch 1")
    repeats: int = Field(30, ge=3, description="timed runs per latency figure (the median is reported)")
    warmup: int = Field(5, ge=0, description="untimed runs before timing")
    max_seconds: float = Field(10.0, gt=0, description="cap on the timed loop of one latency figure")
    threads: int = Field(2, ge=1, description="intra-op threads while timing (and training)")
    eval_batch_size: int = Field(256, ge=1, description="batch size for the quality evaluation")
    memory: bool = Field(True, description="measure peak inference memory at batch_n")
    per_row: int = Field(32, ge=1, description="test rows measured one at a time (MACs, batch-1 latency) for a model "
                                            "whose cost depends on its input (input_dependent_cost = True)")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="where to run: cuda only when asked and present")
