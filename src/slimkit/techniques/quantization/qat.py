"""Quantization-aware training with learned step sizes (LSQ; Esser et al., ICLR 2020).

Round-to-nearest PTQ puts each weight on the nearest point of a grid fixed by its channel's
largest weight; at 2-3 bits that grid is too coarse and accuracy collapses. QAT fine-tunes the
float weights *through* the quantizer (straight-through estimator for the rounding) and learns
each quantizer's step with LSQ's gradient, so the network adapts to its own grid.

- ``prepare_qat`` builds the same layer structure as the ``quantize`` step (``prepare_static``:
  BatchNorm folded, activations fused, the same skip rules and reasons, the same outputs left
  float, the same scales shared across max-pools and reshapes), then replaces each quantized
  layer by a ``QATLayer``: the float Conv2d/Linear (trainable parameters) behind LSQ fake
  quantizers. Steps start from calibration data: per-channel weight steps by ``lsq_initial_step``,
  per-tensor activation steps from the min-max ranges PTQ calibrates at the same weight bits (so
  ``init="minmax"`` starts exactly at PTQ's round-to-nearest model).
- Training runs through the one loop (``ctx.train`` / ``slimkit.train.loop.fit``): the steps are
  parameters like the weights, so no callback or second loop is needed.
- ``convert_qat`` turns the trained model into exactly what PTQ produces (``QuantConv2d`` /
  ``QuantLinear`` with int8 codes in ``[-(2^(b-1)-1), 2^(b-1)-1]``, the learned step as the weight
  scale, frozen ``ActQuant`` activations), so it saves, restores and deploys like PTQ's output.

Choices (see docs/quantization.md for the measurements behind them):

- Weights: symmetric, per output channel, zero-centred codes (``narrow_range``: ternary at 2 bits,
  7 levels at 3). The code ``-2^(b-1)`` would add a level on one side only; the int8 kernels and
  PTQ use the same zero-centred grid, so QAT and PTQ at equal bits are compared like for like.
- Activations: per tensor, unsigned with an integer zero point fixed at initialisation (0 after
  a ReLU, which is then LSQ's unsigned quantizer); only the step is learned. That is exactly the
  uint8 ``ActQuant`` the runtimes execute. Activations must be 8-bit to deploy: ONNX's uint8
  ``QuantizeLinear`` saturates at 0..255, so a narrower code range would run differently there.
"""

from __future__ import annotations

import logging
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.encoding.twins import WrapsLayer
from slimkit.techniques.quantization.modules import WEIGHT_MAXES, ActQuant, QuantConv2d, QuantLinear, _QuantLayer
from slimkit.techniques.quantization.ptq import (QuantReport, _OutputUse, calibrate, convert, prepare_static,
                                                 quantized_layers, share_quantization_params)
from slimkit.techniques.quantization.qscheme import (QuantSpec, StepInit, lsq_fake_quantize, lsq_initial_step,
                                                      qparams_from_range)

log = logging.getLogger("slimkit.quantize")


class LearnedStepQuant(nn.Module):
    """LSQ fake quantizer: ``clamp(round(x / s), qmin - z, qmax - z) * s`` with a learnable step ``s``
    (one per slice along ``spec.axis``, or one per tensor) and a fixed integer zero point ``z``."""

    def __init__(self, spec: QuantSpec, step: torch.Tensor, zero_point: int = 0) -> None:
        super().__init__()
        self.spec, self.zero_point = spec, int(zero_point)
        self.step = nn.Parameter(step.detach().float().clone())

    def scale(self) -> torch.Tensor:
        """The step in use: its magnitude, so an optimizer step past zero cannot flip the grid."""
        return self.step.abs().clamp_min(1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # per tensor (activations) it rounds as the converted ``ActQuant`` will: ``x * (1/s)``
        return lsq_fake_quantize(x, self.scale(), self.spec, self.zero_point, reciprocal=self.spec.axis is None)

    def extra_repr(self) -> str:
        return f"{self.spec.bits}-bit, {'per channel' if self.spec.axis is not None else 'per tensor'}"


class QATLayer(WrapsLayer, nn.Module):
    """A float Conv2d or Linear (its weight and bias train) whose weight, input and output pass
    through LSQ quantizers; the activation fused into it runs before the output quantizer.

    ``input_quant`` is None when the input is already on the producer's output grid (only
    max-pools or reshapes lie between them), where PTQ shares the producer's scale too.
    """

    def __init__(self, layer: nn.Conv2d | nn.Linear, activation: nn.Module | None, weight_quant: LearnedStepQuant,
                 input_quant: LearnedStepQuant | None, output_quant: LearnedStepQuant | None,
                 input_from: str | None = None) -> None:
        super().__init__()
        self.layer, self.activation = layer, activation
        self.weight_quant, self.input_quant, self.output_quant = weight_quant, input_quant, output_quant
        self.input_from = input_from  # the producer whose output quantizer already quantized the input

    def _wrapped(self) -> nn.Module:
        return self.layer

    @property
    def weight(self) -> torch.Tensor:
        """The fake-quantized weight the layer computes with (what third-party code reading
        ``layer.weight`` should see)."""
        return self.weight_quant(self.layer.weight)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        w = self.weight_quant(self.layer.weight)
        if isinstance(self.layer, nn.Conv2d):
            y = self.layer._conv_forward(x, w, self.layer.bias)
        else:
            y = F.linear(x, w, self.layer.bias)
        if self.activation is not None:
            y = self.activation(y)
        return self.output_quant(y) if self.output_quant is not None else y


def weight_spec(bits: int) -> QuantSpec:
    """Symmetric per-output-channel, zero-centred b-bit weight codes (``[-(2^(b-1)-1), 2^(b-1)-1]``)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"weight bits must be in 2..8 (codes are held in int8), got {bits}")
    return QuantSpec(bits=bits, symmetric=True, axis=0, narrow_range=True)


def prepare_qat(model: nn.Module, batches: list[tuple[torch.Tensor, ...]], *, bits_weights: int = 4,
                bits_activations: int = 8, skip: Iterable[str] = (), init: StepInit = "mse",
                learn_steps: bool = True) -> tuple[nn.Module, QuantReport]:
    """A fused copy of ``model`` whose Conv2d/Linear layers are ``QATLayer``s, ready to train.

    ``batches`` (training inputs) set the activation steps and which outputs stay float.
    ``init`` chooses the weight steps (``lsq_initial_step``). ``learn_steps=False`` freezes every
    step at its initial value: plain straight-through QAT with fixed scales (a baseline)."""
    from slimkit.core.errors import SlimkitError

    w_spec = weight_spec(bits_weights)
    if not 2 <= bits_activations <= 8:
        raise ValueError(f"activation bits must be in 2..8, got {bits_activations}")
    # PTQ's structure and decisions at these bits, calibrated like PTQ (with min-max b-bit weights)
    probe, report = prepare_static(model.eval(), skip=skip, weight_max=w_spec.qmax, example=batches[0])
    if not report.quantized:
        raise SlimkitError("qat: the model has no Conv2d or Linear layer to quantize"
                           + (f" (skipped: {report.skipped})" if report.skipped else ""))
    for entry in report.skipped:
        log.info("qat: %s stays in float (%s)", entry["module"], entry["reason"])
    probe = probe.to(batches[0][0].device)
    with _OutputUse(probe) as use:  # which outputs stay float, decided on the first calibration batch
        calibrate(probe, batches)
    report.float_outputs = use.keep_float()
    convert(probe)
    report.shared_scales = share_quantization_params(probe)
    producer_of = {consumer: producer for producer, consumer in report.shared_scales}
    a_spec = QuantSpec(bits=bits_activations, symmetric=False)
    for name, q in quantized_layers(probe).items():
        input_from = producer_of.get(name)
        twin = QATLayer(_float_layer(q), q.activation,
                        LearnedStepQuant(w_spec, lsq_initial_step(q.float_weight, w_spec, init)),
                        None if input_from else _activation_quant(q.input_quant, a_spec),
                        _activation_quant(q.output_quant, a_spec) if q.output_quant is not None else None,
                        input_from)
        _set_submodule(probe, name, twin)
    if not learn_steps:
        for m in probe.modules():
            if isinstance(m, LearnedStepQuant):
                m.step.requires_grad_(False)
    return probe, report


def _float_layer(q: _QuantLayer) -> nn.Conv2d | nn.Linear:
    """The float layer a quantized twin was made from (its float weight and bias, trainable)."""
    w = q.float_weight
    if isinstance(q, QuantConv2d):
        layer = nn.Conv2d(w.shape[1] * q.groups, w.shape[0], tuple(w.shape[2:]), stride=q.stride, padding=q.padding,
                          dilation=q.dilation, groups=q.groups, bias=q.bias is not None)
    else:
        layer = nn.Linear(w.shape[1], w.shape[0], bias=q.bias is not None)
    layer = layer.to(w.device)
    with torch.no_grad():
        layer.weight.copy_(w)
        if q.bias is not None:
            layer.bias.copy_(q.bias)
    return layer


def _activation_quant(calibrated: ActQuant, spec: QuantSpec) -> LearnedStepQuant:
    """An LSQ activation quantizer starting from a calibrated (min-max) ``ActQuant``'s range."""
    scale, zero_point = float(calibrated.scale), int(calibrated.zero_point)
    s8 = calibrated.spec
    if spec != s8:  # fewer bits: the same observed range on the coarser grid
        lo, hi = torch.tensor((s8.qmin - zero_point) * scale), torch.tensor((s8.qmax - zero_point) * scale)
        step, zp = qparams_from_range(lo, hi, spec)
        scale, zero_point = float(step), int(zp)
    return LearnedStepQuant(spec, torch.tensor(scale, device=calibrated.scale.device), zero_point)


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def qat_layers(model: nn.Module) -> dict[str, QATLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QATLayer)}


@torch.no_grad()
def convert_qat(model: nn.Module) -> nn.Module:
    """Replace every ``QATLayer`` by the integer layer it trained for (in place): ``QuantConv2d`` /
    ``QuantLinear`` with the weight codes on the learned grid and frozen ``ActQuant``s with the
    learned steps. Its eager output is the QAT model's fake-quant output (to float rounding)."""
    layers = qat_layers(model)
    for name, t in layers.items():
        bits = {a.spec.bits for a in (t.input_quant, t.output_quant) if a is not None} - {8}
        if bits:
            raise ValueError(f"convert_qat: {name!r} has {min(bits)}-bit activations; only 8-bit activations "
                             "deploy (ONNX's uint8 QuantizeLinear saturates at 0..255, not at a narrower range)")
    for name, t in layers.items():
        weight_max = t.weight_quant.spec.qmax
        assert weight_max in WEIGHT_MAXES
        kind = QuantConv2d if isinstance(t.layer, nn.Conv2d) else QuantLinear
        q = kind(t.layer, t.activation, quantize_output=t.output_quant is not None, weight_max=weight_max,
                 weight_scale=t.weight_quant.scale())
        source = layers[t.input_from].output_quant if t.input_from else t.input_quant
        _freeze(q.input_quant, source)
        if t.output_quant is not None:
            _freeze(q.output_quant, t.output_quant)
        q.float_weight = None
        _set_submodule(model, name, q.to(t.layer.weight.device))
    return model.eval()


def _freeze(target: ActQuant, source: LearnedStepQuant) -> None:
    target.scale.copy_(source.scale().reshape(()))
    target.zero_point.fill_(source.zero_point)
    target._frozen_from_buffers()
