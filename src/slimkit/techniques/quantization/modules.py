"""Quantized layers that ship as QDQ graphs.

Integer codes, scales and zero points are buffers (so a quantized model is a plain state dict,
saved as safetensors); the forward pass is written with PyTorch's ``quantized_decomposed`` ops
(the pt2e reference representation), which ``torch.export`` keeps and ``torch.onnx`` lowers to
ONNX ``QuantizeLinear`` / ``DequantizeLinear``. ONNX Runtime and OpenVINO fuse those patterns
into integer kernels (``QLinearConv``, ``QGemm``, int8 MaxPool), so the exported model runs in
int8 while eager PyTorch runs the same arithmetic as a float reference (fake quantization).

- ``ActQuant``: a per-tensor activation quantizer. While ``calibrating`` it only observes; then
  ``freeze()`` turns the observer's range into ``scale`` and ``zero_point``.
- ``QuantConv2d`` / ``QuantLinear``: int8 per-output-channel weights, an input ``ActQuant``, an
  optional output ``ActQuant`` (the consumer of a conv is often a pool or an add, and ONNX
  Runtime needs the quantize node right after the conv to run it on integers), and an optional
  activation fused in between.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers torch.ops.quantized_decomposed
import torch.nn as nn
import torch.nn.functional as F

from slimkit.encoding.dense import dense_conv2d, dense_linear
from slimkit.encoding.integer import ActivationQuantizer
from slimkit.encoding.layer import EncodedLayer, tensor_bytes
from slimkit.encoding.twins import take_conv_geometry
from slimkit.techniques.quantization.observers import ObserverName, make_observer
from slimkit.techniques.quantization.qscheme import QuantSpec, quantize

_QD = torch.ops.quantized_decomposed
_DTYPES = {(8, True): torch.int8, (8, False): torch.uint8}
# symmetric b-bit weight codes in [-weight_max, weight_max], held in int8: 127 (8-bit), 63 (7-bit), ..., 1 (ternary)
WEIGHT_MAXES = tuple(2 ** (b - 1) - 1 for b in range(8, 1, -1))


def vnni_available() -> bool | None:
    """Whether this x86 CPU has VNNI (AVX512-VNNI, AVX-VNNI or AMX): int8 dot products without
    int16 saturation. None when it cannot be told (not Linux); False on CPUs that are not x86."""
    import platform

    from slimkit.core.hardware import cpu_flags

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    flags = cpu_flags()
    return None if flags is None else bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def default_weight_max() -> int:
    """127 where integer kernels cannot saturate (VNNI x86, ARM); 63 (7-bit) on other x86 CPUs."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return 127
    return 127 if vnni_available() else 63


def _dtype(spec: QuantSpec) -> torch.dtype:
    try:
        return _DTYPES[(spec.bits, spec.symmetric)]
    except KeyError:
        raise ValueError(f"QDQ export supports 8-bit codes only, got {spec.bits} bits") from None


class ActQuant(ActivationQuantizer):
    """Per-tensor activation quantize-dequantize with a calibrated (scale, zero point)."""

    def __init__(self, spec: QuantSpec | None = None, observer: ObserverName = "minmax") -> None:
        super().__init__()
        self.spec = spec or QuantSpec(bits=8, symmetric=False)
        if self.spec.axis is not None or self.spec.group_size is not None:
            raise ValueError("activations are quantized per tensor")
        self.observer_name = observer
        self.observer = make_observer(observer)
        # buffers carry (scale, zero point) through state dicts and safetensors; the forward pass
        # reads them as Python numbers so that export bakes them into the graph as constants
        # (ONNX Runtime fuses QDQ only around constant quantization parameters)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))
        self.calibrating = True
        self.in_place = False  # see ``in_place_fake_quant``
        self._qparams = (1.0, 0)
        self.register_load_state_dict_post_hook(lambda module, _: module._frozen_from_buffers())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observer.observe(x)
            return x
        s, dt = self.spec, _dtype(self.spec)
        scale, zp = self._qparams
        if self.in_place and x.dtype == torch.float32 and not torch.is_grad_enabled():
            # the decomposed ops' arithmetic, step for step, on one buffer: the same values
            return (x * (1.0 / scale)).round_().add_(zp).clamp_(s.qmin, s.qmax).sub_(zp).mul_(scale)
        q = _QD.quantize_per_tensor(x, scale, zp, s.qmin, s.qmax, dt)
        return _QD.dequantize_per_tensor(q, scale, zp, s.qmin, s.qmax, dt)

    def _frozen_from_buffers(self) -> None:
        self._qparams = (float(self.scale), int(self.zero_point))
        self.calibrating = False
        self.observer = None

    @torch.no_grad()
    def freeze(self) -> None:
        """Set (scale, zero point) from what the observer saw; afterwards the module quantizes."""
        if self.observer.lo is None:
            raise RuntimeError("ActQuant.freeze: no calibration data reached this quantizer")
        scale, zero_point = self.observer.qparams(self.spec)
        self.scale.copy_(scale.reshape(()))
        self.zero_point.copy_(zero_point.reshape(()))
        self._frozen_from_buffers()

    def extra_repr(self) -> str:
        kind = "symmetric" if self.spec.symmetric else "asymmetric"
        return f"{self.spec.bits}-bit {kind}, observer={self.observer_name}" + (
            "" if self.calibrating else f", scale={float(self.scale):.4g}, zero_point={int(self.zero_point)}")


@contextmanager
def in_place_fake_quant(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s frozen activation quantizers quantize-dequantize float32
    inputs without gradients by the same float ops as the ``quantized_decomposed`` pair, done in
    place on one buffer: the same values, about 4x faster (no integer tensor, no temporaries). For
    passes that only compute (bias correction), never around an export, which needs the
    decomposed ops as graph nodes."""
    quantizers = [m for m in model.modules() if isinstance(m, ActQuant)]
    for m in quantizers:
        m.in_place = True
    try:
        yield
    finally:
        for m in quantizers:
            m.in_place = False


class _QuantLayer(EncodedLayer):
    """A conv or linear layer with int8 per-channel weights (buffers) and quantized input/output."""

    kind = "quantized"

    def __init__(self, layer: nn.Conv2d | nn.Linear, activation: nn.Module | None, act_spec: QuantSpec,
                 observer: ObserverName, quantize_output: bool, weight_max: int = 127,
                 weight_scale: torch.Tensor | None = None) -> None:
        super().__init__()
        if weight_max not in WEIGHT_MAXES:
            raise ValueError(f"weight_max must be 2^(b-1) - 1 for b-bit codes, one of {WEIGHT_MAXES} (127: int8, "
                             f"63: 7-bit 'reduced range'), got {weight_max}")
        w = layer.weight.detach().float()
        self.w_spec = QuantSpec(bits=8, symmetric=True, axis=0)
        self.weight_max = weight_max
        # symmetric weights in [-weight_max, weight_max], scale = max|w| / weight_max. 127: the
        # code -128 has no positive twin and kernels expect it unused. 63 ("reduced range"): on
        # x86 CPUs without VNNI, ONNX Runtime's u8 x s8 kernels add pairs of products in int16
        # (VPMADDUBSW), which saturates with 8-bit weights (measured: 24 output LSBs off); 7-bit
        # weights cannot saturate, and the integer outputs match this module within 1 LSB. Fewer
        # bits (quantization-aware training) use narrower codes in the same int8 container, with
        # the step QAT learned as ``weight_scale`` (weights beyond it are clipped to the top code).
        scale = (w.abs().amax(dim=tuple(range(1, w.dim()))) / weight_max).clamp_min(1e-12) if weight_scale is None \
            else weight_scale.detach().float().reshape(-1).clone()
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        self.register_buffer("weight_int8", quantize(w, scale, zero_point, self.w_spec)
                             .clamp(-weight_max, weight_max).to(torch.int8))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", zero_point.to(torch.int64))
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        # the float weight, kept (outside the state dict) only until ``correct_bias`` has compared
        # the quantized layer with it; a layer loaded from a checkpoint never needs it
        self.float_weight: torch.Tensor | None = w
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "float_weight", None))
        self.activation = activation
        self.bypass = False  # mixed-precision search: compute in float with ``float_weight``
        self.register_buffer("input_smoothing", None)  # SmoothQuant's 1/s per input channel, once ``smooth`` ran
        self.input_quant = ActQuant(act_spec, observer)
        self.output_quant = ActQuant(act_spec, observer) if quantize_output else None

    def dequantized_weight(self) -> torch.Tensor:
        return _QD.dequantize_per_channel(self.weight_int8, self.weight_scale, self.weight_zero_point, 0,
                                          -self.weight_max, self.weight_max, torch.int8)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return tuple(self.weight_int8.shape)

    def dense_weight(self) -> torch.Tensor:
        """The dequantized weight acting on the unsmoothed input (SmoothQuant's factors folded back)."""
        w = self.dequantized_weight()
        return w if self.input_smoothing is None else w * self.input_smoothing

    def stored_bytes(self) -> int:
        return tensor_bytes(self.weight_int8, self.weight_scale, self.weight_zero_point, self.input_smoothing)

    def _with_activation(self, layer: nn.Module) -> nn.Module:
        """``layer`` followed by the fused activation, if any: the float twin of this layer
        (its output differs from this layer's only by the rounding of activations)."""
        return layer if self.activation is None else nn.Sequential(layer, copy.deepcopy(self.activation))

    def _apply_layer(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    channel_dim = 1  # where the output channels are (``QuantLinear``: the last dimension)

    def smooth_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the quantizer sees it: divided per channel by the SmoothQuant factors."""
        return x if self.input_smoothing is None else x * self.input_smoothing

    @torch.no_grad()
    def smooth(self, factors: torch.Tensor) -> None:
        """SmoothQuant's migration (Xiao et al. 2023): input channel j is divided by ``factors[j]``
        and weight column j multiplied by it, so the product is unchanged while activation
        outliers shrink and the weights (quantized per output channel) absorb them. The division
        is an explicit per-channel multiply before the input quantizer (a post-LayerNorm
        transformer cannot fold it into the LayerNorm, whose output also feeds the residual)."""
        if self.float_weight is None or not isinstance(self, QuantLinear):
            raise RuntimeError("smooth needs a linear layer that still holds its float weight")
        self.float_weight = self.float_weight * factors.to(self.float_weight)
        self.set_weight_(self.float_weight)
        self.register_buffer("input_smoothing", (1.0 / factors).float())

    def set_weight_(self, w: torch.Tensor) -> None:
        """Quantize the float weight ``w`` into this layer's codes and per-channel scales."""
        scale = (w.abs().amax(dim=tuple(range(1, w.dim()))) / self.weight_max).clamp_min(1e-12)
        self.weight_scale.copy_(scale)
        self.weight_int8.copy_(quantize(w, scale, torch.zeros_like(scale, dtype=torch.int32), self.w_spec)
                               .clamp(-self.weight_max, self.weight_max).to(torch.int8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bypass:
            y = self._apply_layer(self.smooth_input(x), self.float_weight)
            return self.activation(y) if self.activation is not None else y
        y = self._apply_layer(self.input_quant(self.smooth_input(x)), self.dequantized_weight())
        if self.activation is not None:
            y = self.activation(y)
        return self.output_quant(y) if self.output_quant is not None else y


class QuantConv2d(_QuantLayer):
    def __init__(self, conv: nn.Conv2d, activation: nn.Module | None = None, *, act_spec: QuantSpec | None = None,
                 observer: ObserverName = "minmax", quantize_output: bool = True, weight_max: int = 127,
                 weight_scale: torch.Tensor | None = None) -> None:
        if conv.padding_mode != "zeros":
            raise ValueError(f"QuantConv2d: padding_mode {conv.padding_mode!r} is not supported")
        super().__init__(conv, activation, act_spec or QuantSpec(bits=8, symmetric=False), observer, quantize_output,
                         weight_max, weight_scale)
        take_conv_geometry(self, conv)

    def _apply_layer(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def densify(self) -> nn.Module:
        return self._with_activation(dense_conv2d(self.dense_weight(), self.bias, self))


class QuantLinear(_QuantLayer):
    channel_dim = -1

    def __init__(self, linear: nn.Linear, activation: nn.Module | None = None, *, act_spec: QuantSpec | None = None,
                 observer: ObserverName = "minmax", quantize_output: bool = True, weight_max: int = 127,
                 weight_scale: torch.Tensor | None = None) -> None:
        super().__init__(linear, activation, act_spec or QuantSpec(bits=8, symmetric=False), observer, quantize_output,
                         weight_max, weight_scale)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def _apply_layer(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w, self.bias)

    def densify(self) -> nn.Module:
        return self._with_activation(dense_linear(self.dense_weight(), self.bias))
