"""Weight-only quantization: int8 or packed int4 weights with per-channel or per-group scales.

Activations stay in float; only the weights are stored as integer codes, which is what shrinks
a model whose size (or memory bandwidth) is dominated by its weight matrices: transformers and
embedding tables. Codes are unsigned, ``u = q - qmin`` in ``[0, 2^bits - 1]``, with one scale and
one zero point per group of ``group_size`` consecutive input weights of an output row (or per
row when ``group_size`` is None); a symmetric scheme has the fixed zero point ``2^(bits-1)``,
which is not stored. 4-bit codes are packed two to a byte, low nibble first, row by row.

That layout is exactly ONNX Runtime's ``MatMulNBits`` contrib operator's (``B`` as
``[N, blocks, block_size * bits / 8]`` bytes, ``scales`` and packed ``zero_points`` per block),
so a ``WeightOnlyLinear`` exported for ONNX Runtime (``slimkit.encoding.export_target``) becomes one
``MatMulNBits`` node that runs on the packed weights; exported anywhere else (OpenVINO, TVM, or
``torch.export`` in general) it is written with standard ops that unpack and dequantize the
weight, which runtimes fold at load time (the file still ships the packed bytes). Embeddings
gather packed rows and dequantize only those, so they stay small at run time too.

Codes come from round-to-nearest (``rtn``) of min-max ranges, or from GPTQ (``gptq.py``) which
chooses codes that minimise the layer's output error on calibration inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.data.positions import real_rows
from slimkit.encoding.bits import pack_nibbles, unpack_nibbles
from slimkit.encoding.dense import dense_embedding
from slimkit.encoding.export import export_target
from slimkit.encoding.layer import EncodedLayer, tensor_bytes
from slimkit.encoding.twins import Conv2dTwin, LinearTwin, plain_type
from slimkit.techniques.quantization.qscheme import QuantSpec, qparams_from_range


@dataclass(frozen=True)
class WeightOnlySpec:
    """How a weight is stored: bits (4 or 8), group size along the input dimension (None: one
    scale per output row), symmetric (no zero points stored) or asymmetric."""

    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = False

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"weight-only quantization stores 4- or 8-bit codes, got {self.bits} bits")
        if self.group_size is not None and (self.group_size < 16 or self.group_size & (self.group_size - 1)):
            raise ValueError(f"group_size must be a power of two >= 16 (or None: per row), got {self.group_size}")

    @property
    def qspec(self) -> QuantSpec:
        # unsigned codes for both schemes: symmetric is the unsigned range with zero point 2^(b-1)
        return QuantSpec(bits=self.bits, symmetric=False)

    @property
    def levels(self) -> int:
        return 2 ** self.bits - 1


def group_size_for(spec: WeightOnlySpec, in_features: int) -> int:
    """The group size used for a row of ``in_features`` weights: the spec's when it divides the
    row, else the whole row (one group)."""
    g = spec.group_size
    return g if g is not None and in_features % g == 0 and g < in_features else in_features


def group_qparams(w: torch.Tensor, spec: WeightOnlySpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max (scale, zero point) per group of a 2-D weight ``(N, G * group)`` already viewed as
    ``(N, G, group)``: float32 scales and int32 zero points in code space."""
    lo, hi = w.amin(-1), w.amax(-1)
    if spec.symmetric:
        bound = torch.maximum(-lo, hi)
        # codes [0, 2^b - 1] around the zero point 2^(b-1) span [-2^(b-1), 2^(b-1) - 1] steps;
        # the scale spreads +-bound over all 2^b - 1 steps (GPTQ's choice): at most half a step
        # of the positive end is clipped, and no code is wasted
        scale = (2 * bound / spec.levels).clamp_min(1e-12)
        return scale.float(), torch.full_like(scale, 2 ** (spec.bits - 1), dtype=torch.int32)
    return qparams_from_range(lo, hi, spec.qspec)


def quantize_groups(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: WeightOnlySpec) -> torch.Tensor:
    """Unsigned codes of ``w`` viewed ``(N, G, group)`` with per-group ``scale``/``zero_point`` ``(N, G)``."""
    q = torch.round(w.float() / scale.unsqueeze(-1)) + zero_point.unsqueeze(-1)
    return q.clamp(0, spec.levels).to(torch.int32)


class _WeightOnly(EncodedLayer):
    """Packed integer weight codes, scales and (asymmetric) zero points as buffers."""

    kind = "weight_only"

    def __init__(self, weight: torch.Tensor, spec: WeightOnlySpec, codes: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None, zero_point: torch.Tensor | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.weight_shape = tuple(weight.shape)
        w2 = weight.detach().float().reshape(weight.shape[0], -1)
        self.out_features, self.in_features = w2.shape
        if spec.bits == 4 and self.in_features % 2:
            raise ValueError(f"4-bit rows are packed two codes a byte: {self.in_features} weights per row is odd")
        self.group = group_size_for(spec, self.in_features)
        self.n_groups = self.in_features // self.group
        wg = w2.reshape(self.out_features, self.n_groups, self.group)
        if codes is None:
            scale, zero_point = group_qparams(wg, spec)
            codes = quantize_groups(wg, scale, zero_point, spec)
        codes = codes.reshape(self.out_features, self.in_features)
        if spec.bits == 4:
            self.register_buffer("weight_packed", pack_nibbles(codes).reshape(self.out_features, self.n_groups, -1))
        else:
            self.register_buffer("weight_packed", codes.to(torch.uint8).reshape(self.out_features, self.n_groups, -1))
        self.register_buffer("weight_scale", scale.float().reshape(self.out_features, self.n_groups).contiguous())
        if spec.symmetric:
            self.weight_zero_point = None
        else:
            zp = zero_point.reshape(self.out_features, self.n_groups).to(torch.int32)
            if spec.bits == 4:  # per row, padded to whole bytes, as MatMulNBits reads them
                zp = torch.stack([pack_nibbles(row) for row in zp])
            else:
                zp = zp.to(torch.uint8)
            self.register_buffer("weight_zero_point", zp.contiguous())

    def codes(self) -> torch.Tensor:
        """Unsigned codes ``(N, in_features)`` as int32."""
        if self.spec.bits == 4:
            return unpack_nibbles(self.weight_packed.reshape(self.out_features, -1))
        return self.weight_packed.reshape(self.out_features, -1).to(torch.int32)

    def zero_points(self) -> torch.Tensor:
        """Per-group zero points ``(N, G)`` as float (the symmetric scheme's are 2^(bits-1))."""
        if self.weight_zero_point is None:
            return torch.full((self.out_features, self.n_groups), float(2 ** (self.spec.bits - 1)),
                              device=self.weight_scale.device)
        if self.spec.bits == 4:  # each row padded to whole bytes
            return unpack_nibbles(self.weight_zero_point)[:, :self.n_groups].float()
        return self.weight_zero_point.float()

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the codes stand for, in the layer's own shape."""
        q = self.codes().float().reshape(self.out_features, self.n_groups, self.group)
        w = (q - self.zero_points().unsqueeze(-1)) * self.weight_scale.unsqueeze(-1)
        return w.reshape(self.weight_shape)

    def dense_weight(self) -> torch.Tensor:
        return self.dequantized_weight()

    def stored_bytes(self) -> int:
        """Bytes of the codes, scales and zero points (what the layer's weight costs on disk)."""
        return tensor_bytes(self.weight_packed, self.weight_scale, self.weight_zero_point)

    def extra_repr(self) -> str:
        scheme = "symmetric" if self.spec.symmetric else "asymmetric"
        return f"{tuple(self.weight_shape)}, {self.spec.bits}-bit {scheme}, group={self.group}"


class WeightOnlyLinear(LinearTwin, _WeightOnly):
    def __init__(self, linear: nn.Linear, spec: WeightOnlySpec, **codes) -> None:
        super().__init__(linear.weight, spec, **codes)
        self._take_linear(linear, trainable_bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if export_target() == "onnxruntime" and self.group >= 16 and self.group & (self.group - 1) == 0:
            return self._matmul_nbits(x)
        return F.linear(x, self.dequantized_weight(), self.bias)

    def _matmul_nbits(self, x: torch.Tensor) -> torch.Tensor:
        """ONNX Runtime's MatMulNBits: integer weights read packed, per-block dequantization
        inside the kernel (``accuracy_level`` 0: float accumulation, matching eager)."""
        inputs = [x, self.weight_packed, self.weight_scale.reshape(-1),
                  None if self.weight_zero_point is None else self.weight_zero_point.reshape(-1)]
        if self.bias is not None:
            inputs += [None, self.bias]  # g_idx (unused), bias
        return torch.onnx.ops.symbolic(
            "com.microsoft::MatMulNBits", inputs,
            {"K": self.in_features, "N": self.out_features, "bits": self.spec.bits, "block_size": self.group},
            dtype=x.dtype, shape=(*x.shape[:-1], self.out_features), version=1)


class WeightOnlyConv2d(Conv2dTwin, _WeightOnly):
    """A conv whose weight ``(out, in/groups, kh, kw)`` is quantized per output channel, in
    groups along its flattened ``in * kh * kw`` elements."""

    def __init__(self, conv: nn.Conv2d, spec: WeightOnlySpec, **codes) -> None:
        self._check_conv(conv)
        super().__init__(conv.weight, spec, **codes)
        self._take_conv(conv, trainable_bias=False)


class WeightOnlyEmbedding(_WeightOnly):
    """An embedding table quantized row by row (groups along the embedding dimension); lookups
    gather packed rows and dequantize only them."""

    def __init__(self, embedding: nn.Embedding, spec: WeightOnlySpec, **codes) -> None:
        if embedding.max_norm is not None:
            raise ValueError("WeightOnlyEmbedding: max_norm renormalises rows at lookup and is not supported")
        super().__init__(embedding.weight, spec, **codes)
        self.padding_idx = embedding.padding_idx
        self.bias = None

    def densify(self) -> nn.Embedding:
        return dense_embedding(self.dense_weight(), self.padding_idx)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if export_target() == "openvino" and self.spec.bits == 8 and self.n_groups == 1:
            # dequantize the constant table, then gather: OpenVINO keeps the table in int8 and
            # gathers from it compressed (its CPU plugin's compressed Gather)
            codes = self.weight_packed.reshape(self.out_features, -1)
            zp = self.zero_points().reshape(-1, 1)
            table = (codes.float() - zp) * self.weight_scale.reshape(-1, 1)
            return F.embedding(ids, table, self.padding_idx)
        packed = self.weight_packed[ids]  # (..., G, bytes per group)
        q = unpack_nibbles(packed) if self.spec.bits == 4 else packed
        scale = self.weight_scale[ids].unsqueeze(-1)
        zp = self.zero_points()[ids].unsqueeze(-1)
        return ((q.float() - zp) * scale).reshape(*ids.shape, self.in_features)


def float_weight_bytes(module: nn.Module) -> int:
    """FP32 bytes of the weight a weight-only layer replaced (for size ratios)."""
    return 4 * math.prod(module.weight_shape) if isinstance(module, _WeightOnly) else 4 * module.weight.numel()


@dataclass
class WeightOnlyReport:
    method: str = "rtn"
    layers: dict[str, dict] = field(default_factory=dict)  # name -> kind, bits, group, method, bytes, fp32_bytes
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"module", "reason"}

    def to_dict(self) -> dict:
        stored = sum(v["bytes"] for v in self.layers.values())
        fp32 = sum(v["fp32_bytes"] for v in self.layers.values())
        return {"method": self.method, "layers_quantized": len(self.layers), "skipped": list(self.skipped),
                "quantized_bytes": stored, "quantized_fp32_bytes": fp32,
                "quantized_ratio": stored / fp32 if fp32 else None,
                "bits_per_layer": {name: v["bits"] for name, v in self.layers.items()}}


_KINDS = {"linear": nn.Linear, "conv": nn.Conv2d, "embedding": nn.Embedding}
_TWINS = {nn.Linear: WeightOnlyLinear, nn.Conv2d: WeightOnlyConv2d, nn.Embedding: WeightOnlyEmbedding}


def layers_of_kinds(model: nn.Module, kinds: tuple[str, ...]) -> list[str]:
    """Names of the modules of ``model`` that weight-only ``kinds`` (linear, conv, embedding) cover."""
    unknown = sorted(set(kinds) - set(_KINDS))
    if unknown:
        raise ValueError(f"weight-only kinds must be among {sorted(_KINDS)}, got {unknown}")
    types = tuple(_KINDS[k] for k in kinds)
    return [n for n, m in model.named_modules() if plain_type(m) in types]


def forward_order(model: nn.Module, inputs: tuple[torch.Tensor, ...], types: tuple[type, ...]) -> list[str]:
    """Names of the ``types`` modules of ``model`` in the order one forward pass calls them."""
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: order.append(name) if name not in order else None)
             for name, m in model.named_modules() if plain_type(m) in types]
    try:
        with torch.no_grad():
            model.eval()(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return order


@torch.no_grad()
def quantize_weight_only(model: nn.Module, spec: WeightOnlySpec = WeightOnlySpec(), *, method: str = "rtn",
                         batches: list[tuple[torch.Tensor, ...]] | None = None, kinds: tuple[str, ...] = ("linear",),
                         skip: tuple[str, ...] | list[str] = (), damp: float = 0.01,
                         bits: dict[str, int | None] | None = None,
                         mask_input: int | None = None) -> tuple[nn.Module, WeightOnlyReport]:
    """A copy of ``model`` whose layers of ``kinds`` (linear, conv, embedding) hold weight-only
    codes. ``method``: ``rtn`` (round to nearest, no data needed) or ``gptq`` (linears; needs
    calibration ``batches``; convs and embeddings fall back to rtn, and the report says so).
    ``bits``: per-layer overrides of ``spec.bits`` (4, 8, or None: keep the layer in float).
    ``mask_input``: the batches' attention mask (GPTQ's Hessians from real tokens only).

    GPTQ runs sequentially: each linear's input Hessian is collected from the model whose earlier
    layers are already quantized, so later layers compensate the error that reaches them.
    """
    import copy
    import logging

    if method not in ("rtn", "gptq"):
        raise ValueError(f"weight-only method must be 'rtn' or 'gptq', got {method!r}")
    if method == "gptq" and not batches:
        raise ValueError("GPTQ needs calibration batches")
    log = logging.getLogger("slimkit.quantize")
    q = copy.deepcopy(model).eval()
    candidates = layers_of_kinds(q, kinds)
    types = tuple(_KINDS[k] for k in kinds)
    modules = dict(q.named_modules())
    report = WeightOnlyReport(method=method)
    for name in [*skip, *(bits or {})]:
        if name not in modules:
            raise ValueError(f"weight-only skip or bits names no module: {name!r}")
    order = forward_order(q, batches[0], types) if batches else candidates
    order += [n for n in candidates if n not in order]  # layers the calibration pass never reached
    for name in order:
        layer = modules[name]
        layer_spec = spec
        if bits and name in bits:
            if bits[name] is None:
                report.skipped.append({"module": name, "reason": "kept in float (mixed precision)"})
                continue
            layer_spec = WeightOnlySpec(bits[name], spec.group_size, spec.symmetric)
        if name in skip:
            report.skipped.append({"module": name, "reason": "listed in skip"})
            continue
        reason = _unsupported(layer, layer_spec)
        if reason:
            log.info("weight-only: %s kept in float (%s)", name, reason)
            report.skipped.append({"module": name, "reason": reason})
            continue
        codes = {}
        if method == "gptq" and plain_type(layer) is nn.Linear:
            codes = _gptq_codes(q, layer, batches, layer_spec, damp, mask_input)
        twin = _TWINS[plain_type(layer)](layer, layer_spec, **codes)
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else q, child, twin)
        modules[name] = twin
        report.layers[name] = {"kind": type(layer).__name__, "bits": layer_spec.bits, "group": twin.group,
                               "method": "gptq" if codes else "rtn", "bytes": twin.stored_bytes(),
                               "fp32_bytes": float_weight_bytes(twin)}
    return q, report


def _unsupported(layer: nn.Module, spec: WeightOnlySpec) -> str | None:
    if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
        return f"padding_mode {layer.padding_mode!r}"
    if isinstance(layer, nn.Embedding) and layer.max_norm is not None:
        return "max_norm renormalises rows at lookup"
    row = layer.weight[0].numel()
    if spec.bits == 4 and row % 2:
        return f"{row} weights per row: 4-bit rows must pack into whole bytes"
    return None


def _gptq_codes(model: nn.Module, layer: nn.Linear, batches, spec: WeightOnlySpec,
                damp: float, mask_input: int | None = None) -> dict[str, torch.Tensor]:
    from slimkit.techniques.quantization.gptq import HessianAccumulator, gptq_quantize
    from slimkit.techniques.quantization.ptq import feed_layer

    acc = HessianAccumulator(layer.in_features)
    feed_layer(model, layer, batches, lambda module, args: acc.add(real_rows(args[0])), mask_input)
    if acc.n == 0:
        return {}
    codes, scale, zero_point = gptq_quantize(layer.weight, acc.h, spec, damp=damp)
    return {"codes": codes, "scale": scale, "zero_point": zero_point}


@dataclass
class MixedPrecision:
    """What ``choose_bits`` found: bits per layer (None: float), each layer's sensitivity (the
    quality drop, in points, when only that layer is quantized at the low bit width), the quality
    drop of the chosen mix, how many configurations were evaluated, and the quantized model."""

    bits: dict[str, int | None]
    sensitivity: dict[str, float]
    drop: float
    evaluations: int
    model: nn.Module
    report: WeightOnlyReport


@torch.no_grad()
def choose_bits(model: nn.Module, spec: WeightOnlySpec, evaluate, max_drop: float, *,
                kinds: tuple[str, ...] = ("linear",), skip: tuple[str, ...] | list[str] = (),
                quantize=None, progress=None, time_budget: float | None = None) -> MixedPrecision:
    """The smallest mix of per-layer bits (``spec.bits``, 8, float) whose quality drop stays
    within ``max_drop`` points.

    Sensitivity analysis first: each layer alone at ``spec.bits`` (round to nearest), everything
    else float, scored by ``evaluate(model) -> quality`` (higher is better: validation accuracy,
    cosine). Then layers are promoted, most sensitive first, to 8 bits and then (if all at 8 bits
    is still over budget) to float; the fewest promotions that meet the budget with round to
    nearest are found by bisection (all float is the reference, so some count always does).
    ``quantize(bits) -> (model, report)`` makes the final model (e.g. GPTQ with those bits; by
    default round to nearest); if its drop is over budget, promotions continue one at a time.
    ``progress`` is ``slimkit.search.sensitivity``'s callback.
    """
    from slimkit.search import fewest_promotions, most_sensitive_first, sensitivity, solo_drops, tighten

    reference = evaluate(model)
    modules = dict(model.named_modules())
    layers = [n for n in layers_of_kinds(model, kinds) if n not in set(skip) and _unsupported(modules[n], spec) is None]
    count = [1]

    def rtn(bits: dict[str, int | None]) -> tuple[nn.Module, WeightOnlyReport]:
        return quantize_weight_only(model, spec, kinds=kinds, skip=skip, bits=bits)

    def drop(q: nn.Module) -> float:
        count[0] += 1
        return 100 * (reference - evaluate(q))

    def alone(name: str, bits: int) -> float:
        return drop(rtn({m: (bits if m == name else None) for m in layers})[0])

    table = sensitivity(layers, [spec.bits], alone, progress=progress, time_budget=time_budget, what="choose_bits")
    order = most_sensitive_first(solo_drops(table))
    steps = [(n, 8) for n in order if spec.bits < 8] + [(n, None) for n in order]

    def mix(k: int) -> dict[str, int | None]:
        bits: dict[str, int | None] = {n: spec.bits for n in layers}
        for n, b in steps[:k]:
            bits[n] = b
        return bits

    def verify(k: int) -> tuple[float, nn.Module, WeightOnlyReport]:
        q, report = (quantize or rtn)(mix(k))
        return drop(q), q, report

    first = fewest_promotions(len(steps), lambda k: drop(rtn(mix(k))[0]), max_drop)
    k, (d, q, report) = tighten(range(first, len(steps) + 1), verify, lambda v: v[0] <= max_drop)
    return MixedPrecision(bits=mix(k), sensitivity=solo_drops(table), drop=d, evaluations=count[0], model=q,
                          report=report)
