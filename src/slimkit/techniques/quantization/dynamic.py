"""Dynamic int8: int8 weights, activations quantized at run time from their own range.

No calibration: each call measures its input's range and quantizes it, so the scale fits every
input (tokens of any length, outliers that calibration never saw). Two granularities:

- ``token`` (default): one symmetric scale per token (per row of the last dimension),
  ``s = max|x| / 127``, codes ``round(x / s)`` in [-127, 127], carried as uint8 with zero point
  128. A transformer's tokens differ in range by orders of magnitude, and a per-tensor scale
  spends its levels on the largest one.
- ``tensor``: one asymmetric scale and zero point per call, ONNX's ``DynamicQuantizeLinear``
  (what ONNX Runtime's ``quantize_dynamic`` writes).

Weights are symmetric per output channel, ``[-weight_max, weight_max]`` in int8 (7-bit on x86
CPUs without VNNI, where ONNX Runtime's u8 x s8 kernels add product pairs in int16 and saturate).

Exported to ONNX, a layer is ``MatMulInteger`` on the uint8 codes and the int8 weight, followed
by one float rescale (``acc * s_x * s_w + bias``): ONNX Runtime runs it on its integer GEMM.
OpenVINO reads the same graph but computes ``MatMulInteger`` in float (measured: its runtime
graph has an f32 FullyConnected), so dynamic int8 buys speed on ONNX Runtime only; OpenVINO users
want static int8 or weight-only. In eager PyTorch the layer computes exactly what the integer
kernel does: the integer products are summed in float32, exact while the sum stays below 2^24
(``in_features * 255 * weight_max``; MiniLM's widest layer reaches 12.4M with 7-bit weights).

PyTorch's own CPU int8 matmul (``torch._int_mm``) is far slower than float here, and
``torch.ao``'s dynamic linear quantizes per tensor with 7-bit activations and is deprecated in
favour of torchao; neither is used (``benchmarks/torch_int8.py`` measures both).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn

from slimkit.encoding.dense import dense_linear
from slimkit.encoding.export import export_target
from slimkit.encoding.layer import EncodedLayer, tensor_bytes
from slimkit.encoding.twins import plain_type

Granularity = Literal["token", "tensor"]
log = logging.getLogger("slimkit.quantize")


class DynamicQuantLinear(EncodedLayer):
    """A linear with int8 per-channel weights whose input is quantized at run time."""

    kind = "dynamic_int8"

    def __init__(self, linear: nn.Linear, granularity: Granularity = "token", weight_max: int = 127,
                 smoothing: torch.Tensor | None = None) -> None:
        super().__init__()
        if granularity not in ("token", "tensor"):
            raise ValueError(f"dynamic granularity must be 'token' or 'tensor', got {granularity!r}")
        if not 1 <= weight_max <= 127:
            raise ValueError(f"weight_max must be in [1, 127], got {weight_max}")
        w = linear.weight.detach().float()
        if smoothing is not None:  # SmoothQuant: column j times s_j here, input channel j divided by it at run time
            w = w * smoothing.to(w)
        scale = (w.abs().amax(dim=1) / weight_max).clamp_min(1e-12)
        self.register_buffer("weight_int8", torch.round(w / scale[:, None]).clamp(-weight_max, weight_max)
                             .to(torch.int8))
        self.register_buffer("weight_scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.granularity = granularity
        self.weight_max = weight_max
        self.register_buffer("_token_zero_point", torch.tensor(128, dtype=torch.uint8), persistent=False)
        self.register_buffer("input_smoothing", None if smoothing is None else (1.0 / smoothing.float()))

    def quantize_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(uint8 codes as float, scale, zero point) of ``x``, broadcastable against it."""
        x = x.float()
        if self.granularity == "token":
            scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 127
            return torch.round(x / scale).clamp(-127, 127) + 128, scale, torch.full_like(scale, 128.0)
        # ONNX DynamicQuantizeLinear: the range always includes 0; round half to even throughout
        lo, hi = x.amin().clamp_max(0), x.amax().clamp_min(0)
        scale = ((hi - lo) / 255).clamp_min(1e-12)
        zero_point = torch.round(-lo / scale).clamp(0, 255)
        return torch.round(x / scale).add(zero_point).clamp(0, 255), scale, zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_smoothing is not None:
            x = x * self.input_smoothing
        if export_target() in ("onnx", "onnxruntime", "openvino"):
            return self._matmul_integer(x)
        codes, scale, zero_point = self.quantize_input(x)
        return self._rescale(torch.matmul(codes - zero_point, self.weight_int8.float().t()), scale)

    def _rescale(self, acc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``acc * s_x * s_w + bias``. Per token, the weight scale is applied first: ONNX Runtime
        (1.32) fuses ``Cast -> Mul(s_x * s_w) -> Add(bias)`` into ``MatMulIntegerToFloat``, whose
        kernel drops the bias when ``s_x`` is per row (measured: every output off by its bias);
        this order is not fused and stays exact. Eager uses the same order, so both agree."""
        y = acc * self.weight_scale * scale if self.granularity == "token" else acc * (scale * self.weight_scale)
        return y if self.bias is None else y + self.bias

    def _matmul_integer(self, x: torch.Tensor) -> torch.Tensor:
        """The ONNX graph: runtime quantization, ``MatMulInteger`` (int32), one float rescale."""
        shape = (*x.shape[:-1], self.out_features)
        if self.granularity == "token":
            codes, scale, _ = self.quantize_input(x)
            codes, zero_point = codes.to(torch.uint8), self._token_zero_point
        else:
            codes, scale, zero_point = torch.onnx.ops.symbolic_multi_out(
                "DynamicQuantizeLinear", [x], {}, dtypes=(torch.uint8, torch.float32, torch.uint8),
                shapes=(x.shape, (), ()), version=11)
        acc = torch.onnx.ops.symbolic("MatMulInteger", [codes, self.weight_int8.t(), zero_point], {},
                                      dtype=torch.int32, shape=shape, version=10)
        return self._rescale(acc.float(), scale)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return tuple(self.weight_int8.shape)

    def dense_weight(self) -> torch.Tensor:
        """The dequantized weight acting on the unsmoothed input (SmoothQuant's factors folded back)."""
        w = self.weight_int8.float() * self.weight_scale[:, None]
        return w if self.input_smoothing is None else w * self.input_smoothing

    def densify(self) -> nn.Linear:
        """The float linear on the dequantized weight (no run-time rounding of the input)."""
        return dense_linear(self.dense_weight(), self.bias)

    def stored_bytes(self) -> int:
        return tensor_bytes(self.weight_int8, self.weight_scale, self.input_smoothing)

    def extra_repr(self) -> str:
        return (f"{self.in_features} -> {self.out_features}, int8 weights (max {self.weight_max}), "
                f"activations per {self.granularity} at run time"
                + (", SmoothQuant input factors" if self.input_smoothing is not None else ""))


@dataclass
class DynamicReport:
    granularity: str
    weight_max: int
    layers: dict[str, dict] = field(default_factory=dict)  # name -> bytes, fp32_bytes
    skipped: list[dict[str, str]] = field(default_factory=list)
    smoothed: list[str] = field(default_factory=list)  # layers whose input SmoothQuant rescales

    def to_dict(self) -> dict:
        stored = sum(v["bytes"] for v in self.layers.values())
        fp32 = sum(v["fp32_bytes"] for v in self.layers.values())
        return {"granularity": self.granularity, "layers_quantized": len(self.layers), "skipped": list(self.skipped),
                "smoothed": len(self.smoothed),
                "quantized_bytes": stored, "quantized_fp32_bytes": fp32,
                "quantized_ratio": stored / fp32 if fp32 else None}


@torch.no_grad()
def quantize_dynamic(model: nn.Module, *, granularity: Granularity = "token", weight_max: int = 127,
                     skip: list[str] | tuple[str, ...] = (), smoothquant: float | None = None,
                     batches: list[tuple[torch.Tensor, ...]] | None = None,
                     smoothed: list[str] | tuple[str, ...] = ()) -> tuple[nn.Module, DynamicReport]:
    """A copy of ``model`` whose ``nn.Linear`` layers (all but ``skip``) are dynamic int8.

    Convolutions and embeddings are left in float (dynamic quantization pays where a matmul's
    cost dominates and activations vary per input: transformers and MLPs; for CNNs use static
    int8) and listed as skipped with the reason.

    ``smoothquant`` (alpha) with calibration ``batches``: SmoothQuant before dynamic quantization.
    Each linear's input is divided per channel by factors from the calibration inputs' maxima
    (shared by linears reading one tensor) and its weight columns absorb them, so one scale per
    tensor no longer spends its range on a transformer's outlier channels (MiniLM: per-tensor
    dynamic int8 with alpha 0.8 keeps cosine above per-token's, at per-tensor's cost; see
    docs/quantization.md). ``smoothed`` names layers to give placeholder factors (restore)."""
    q = copy.deepcopy(model).eval()
    modules = dict(q.named_modules())
    unknown = [name for name in skip if name not in modules]
    if unknown:
        from slimkit.core.errors import ConfigError

        raise ConfigError(f"quantize (dynamic): skip names no module: {unknown}")
    report = DynamicReport(granularity=granularity, weight_max=weight_max)
    factors: dict[str, torch.Tensor] = {}
    linears = {n: m for n, m in modules.items() if plain_type(m) is nn.Linear and n not in skip}
    if smoothquant is not None:
        from slimkit.techniques.quantization.smoothing import input_statistics, smoothing_factors

        if not batches:
            raise ValueError("quantize_dynamic: smoothquant needs calibration batches")
        absmax, groups = input_statistics(q, linears, batches)
        for group in groups:
            shared = smoothing_factors(absmax[group[0]], [linears[n].weight for n in group], smoothquant)
            factors.update({n: shared for n in group})
    for name in smoothed:
        if name not in linears:
            raise ValueError(f"smoothed names {name!r}, which is not a Linear to quantize")
        factors[name] = torch.ones(linears[name].in_features)
    for name, module in list(modules.items()):
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)):
            report.skipped.append({"module": name, "reason": f"{type(module).__name__}: dynamic quantization "
                                                             "covers Linear layers (use static int8 or weight-only)"})
            continue
        if plain_type(module) is not nn.Linear:
            continue
        if name in skip:
            report.skipped.append({"module": name, "reason": "listed in skip"})
            continue
        twin = DynamicQuantLinear(module, granularity, weight_max, smoothing=factors.get(name))
        if name in factors:
            report.smoothed.append(name)
        parent, _, child = name.rpartition(".")
        setattr(modules[parent] if parent else q, child, twin)
        report.layers[name] = {"bytes": twin.stored_bytes(), "fp32_bytes": 4 * module.weight.numel()}
    for item in report.skipped:
        log.info("dynamic int8: %s kept in float (%s)", item["module"], item["reason"])
    return q, report
