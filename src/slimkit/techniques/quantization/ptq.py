"""Static post-training int8 quantization: fuse, swap layers for QDQ twins, calibrate, freeze.

``prepare_static`` folds BatchNorm and fuses activations (the ``fuse`` step's passes), then
replaces every Conv2d and Linear (with its fused activation) by ``QuantConv2d`` / ``QuantLinear``
whose quantizers observe. Running calibration batches through the model fills the observers;
``convert`` freezes them into scales and zero points. Layers that cannot be quantized (a
padding mode other than zeros, a ConvTranspose, a 3-D conv) are left in float and listed in the
report with the reason, never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn as nn

from slimkit.techniques.quantization.modules import ActQuant, QuantConv2d, QuantLinear, _QuantLayer
from slimkit.techniques.quantization.observers import ObserverName

_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "silu": nn.SiLU}


@dataclass
class QuantReport:
    quantized: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"module", "reason"}

    def to_dict(self) -> dict:
        return {"quantized": list(self.quantized), "skipped": list(self.skipped)}


def _activation_module(name: str, approximate: str = "none") -> nn.Module:
    return nn.GELU(approximate=approximate) if name == "gelu" else _ACTIVATIONS[name]()


def prepare_static(model: nn.Module, *, observer: ObserverName = "minmax", skip: Iterable[str] = (),
                   weight_max: int = 127) -> tuple[nn.Module, QuantReport]:
    """A fused copy of ``model`` whose Conv2d/Linear layers are quantized twins, observing."""
    from slimkit.techniques.fusion.fuse import FusedConvAct, FusedLinearAct, fuse_model

    fused, _ = fuse_model(model)
    skip = set(skip)
    report = QuantReport()

    def swap(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            path = f"{prefix}{name}"
            if path in skip:
                report.skipped.append({"module": path, "reason": "listed in skip"})
                continue
            layer, act = child, None
            if isinstance(child, (FusedConvAct, FusedLinearAct)):
                layer = getattr(child, child.layer_name)
                act = _activation_module(child.activation, child.approximate)
            if type(layer) is nn.Conv2d:
                if layer.padding_mode != "zeros":
                    report.skipped.append({"module": path, "reason": f"padding_mode {layer.padding_mode!r}"})
                    continue
                setattr(parent, name, QuantConv2d(layer, act, observer=observer, weight_max=weight_max))
                report.quantized.append(path)
            elif type(layer) is nn.Linear:
                setattr(parent, name, QuantLinear(layer, act, observer=observer, weight_max=weight_max))
                report.quantized.append(path)
            elif isinstance(layer, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                report.skipped.append({"module": path, "reason": f"{type(layer).__name__} has no int8 twin here"})
            elif child is layer:
                swap(child, f"{path}.")

    swap(fused, "")
    unknown = sorted(skip - {s["module"] for s in report.skipped})
    if unknown:
        from slimkit.core.errors import ConfigError

        names = [n for n, _ in fused.named_modules() if n]
        raise ConfigError(f"quantize: skip names no module of the (fused) model: {unknown}; "
                          f"modules are {names[:12]}{' ...' if len(names) > 12 else ''}")
    return fused, report


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]]) -> int:
    """Run calibration batches through an observing model; returns how many ran."""
    model.eval()
    n = 0
    for inputs in batches:
        model(*inputs)
        n += 1
    return n


def convert(model: nn.Module) -> nn.Module:
    """Freeze every observer into (scale, zero point); the model then quantizes (in place)."""
    for name, module in model.named_modules():
        if isinstance(module, ActQuant) and module.calibrating:
            if module.observer.lo is None:
                from slimkit.core.errors import SlimkitError

                raise SlimkitError(f"quantize: no calibration data reached {name!r} (is that layer used in "
                                   "forward?); list it under 'skip' to keep it in float")
            module.freeze()
    return model


def quantized_layers(model: nn.Module) -> dict[str, _QuantLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _QuantLayer)}
