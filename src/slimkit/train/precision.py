"""Mixed precision in the one loop (``TrainConfig.precision``).

``bf16`` and ``fp16`` run each forward pass under ``torch.autocast``: matrix products and
convolutions compute in the low precision, the weights stay fp32 (master weights: the optimizer
updates fp32 values, autocast casts them per op), and the loss is computed in fp32 from the
model's outputs cast up. Normalisation layers (BatchNorm, LayerNorm, GroupNorm) run in fp32 on
fp32 inputs, so their statistics are not accumulated in bf16: autocast's CPU policy does not
list them. ``fp16``, whose range is narrow, adds dynamic loss scaling (``torch.amp.GradScaler``):
the loss is multiplied before backward, the gradients divided before anything reads them, and a
step whose gradients overflowed is skipped with the scale halved.

Where each precision runs: bf16 on CUDA GPUs that have it and on CPUs that compute bf16 natively
(AVX512-BF16, AMX, ARM BF16: elsewhere PyTorch emulates it, slower than fp32); fp16 on CUDA only
(on CPU fp16 matmuls are emulated, seconds for 1024^3 on the machines measured). Anything else is
refused with the reason, as ``deploy`` refuses a precision a runtime cannot run.
"""

from __future__ import annotations

import types
from typing import Any, ContextManager, Literal

import torch
import torch.nn as nn

from slimkit.core.errors import ConfigError
from slimkit.train.callbacks import Callback, FitState

Precision = Literal["fp32", "bf16", "fp16"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def check_training_precision(precision: str, device: torch.device | str) -> None:
    """Refuse, with the reason, a training precision ``device`` cannot compute."""
    device = torch.device(device)
    if precision == "fp32":
        return
    if precision not in DTYPES:
        raise ConfigError(f"precision: {precision!r} is not one of fp32, bf16, fp16")
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"precision: bf16 needs a GPU that computes it ({torch.cuda.get_device_name(device)} "
                              "does not); use fp16")
        return
    if device.type == "cpu":
        from slimkit.core.hardware import cpu_capability, cpu_has_native_bf16

        if precision == "fp16":
            raise ConfigError("precision: fp16 trains on CUDA only (on CPU PyTorch emulates fp16 matmuls, far "
                              "slower than fp32); use bf16 on a CPU that computes it natively")
        if not cpu_has_native_bf16():
            raise ConfigError(f"precision: bf16 needs a CPU that computes it natively (this one: "
                              f"{cpu_capability()}); emulated bf16 is slower than fp32, so train in fp32")
        return
    raise ConfigError(f"precision: {precision} training is supported on cpu and cuda, not {device.type}")


class MixedPrecision(Callback):
    """The loop's hooks for ``precision``: autocast around each forward pass and loss, fp32
    normalisation layers, and (fp16) dynamic loss scaling. ``skipped_steps`` counts optimizer
    steps skipped for non-finite gradients."""

    def __init__(self, precision: Precision, device: torch.device | str) -> None:
        check_training_precision(precision, device)
        self.precision = precision
        self.device_type = torch.device(device).type
        self.scaler = torch.amp.GradScaler(self.device_type) if precision == "fp16" else None
        self.skipped_steps = 0
        self._patched: list[nn.Module] = []

    def on_fit_start(self, state: FitState) -> None:
        for module in state.model.modules():
            if isinstance(module, _NORMS) and "forward" not in module.__dict__:
                module.forward = types.MethodType(_fp32_forward(type(module).forward, self.device_type), module)
                self._patched.append(module)

    def on_fit_end(self, state: FitState) -> None:
        for module in self._patched:
            del module.forward
        self._patched.clear()

    def forward_context(self, state: FitState) -> ContextManager[Any]:
        return torch.autocast(self.device_type, dtype=DTYPES[self.precision])

    def scale_loss(self, state: FitState, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def unscale_gradients_(self, state: FitState) -> bool:
        if self.scaler is None:
            return True
        self.scaler.unscale_(state.optimizer)
        finite = all(bool(torch.isfinite(p.grad).all()) for group in state.optimizer.param_groups
                     for p in group["params"] if p.grad is not None)
        if not finite:
            self.skipped_steps += 1
        return finite

    def on_step_end(self, state: FitState) -> None:
        if self.scaler is not None:
            self.scaler.update()  # halves the scale after a skipped step, grows it after a run of good ones


def _fp32_forward(forward, device_type: str):
    """A normalisation layer's forward on fp32 input with autocast off (its output stays fp32;
    the next matmul autocasts it down again)."""
    def run(self, x, *args, **kwargs):
        if not torch.is_autocast_enabled(device_type):
            return forward(self, x, *args, **kwargs)
        with torch.autocast(device_type, enabled=False):
            return forward(self, x.float() if x.is_floating_point() else x, *args, **kwargs)
    return run

