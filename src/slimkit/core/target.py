"""Where a run's model executes and is measured: its deploy target.

A run starts on eager PyTorch in FP32 on the measurement device; a step that moves the model to
another runtime (``deploy``) returns a new ``Target`` in its result, and the runner measures that
step and every later one there. ``topology`` is the place for how a model is spread over
processes or machines (pipeline stages, a device/server split); ``None`` is one process.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from slimkit.core.config import Config


class Target(Config):
    backend: str = Field("eager", description="the registered backend the model runs on")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="the precision it computes in")
    device: Literal["cpu", "cuda"] = Field("cpu", description="the device it runs on")
    topology: dict[str, Any] | None = Field(None, description="how it is split across processes or machines "
                                                              "(None: one process)")

    @property
    def is_eager(self) -> bool:
        """Runs in this process as eager PyTorch (measured directly, without a worker)."""
        return self.backend == "eager" and self.topology is None

    def describe(self) -> str:
        return f"{self.backend}/{self.precision} on {self.device}"
