"""The integer graph a microcontroller runs, lowered from slimkit's int8 (QDQ) model.

slimkit's static int8 model (``quantize``) holds int8 per-channel weights and per-tensor
activation scales, and runs them in eager PyTorch as fake quantization. ``lower`` turns it into an
``IntGraph``: every tensor int8 with one (scale, zero point), every op integer arithmetic only:

- conv / linear: int8 x int8 products summed in int32 with an int32 bias
  (``round(b / (s_in s_w))``), requantized per output channel by a fixed-point multiplier and
  shift (``fixedpoint``), the fused ReLU/ReLU6 as the clamp bounds;
- max-pool (picks values: same scale), global or unpadded average pooling, residual add (TFLite's
  20-bit scheme), ReLU, a requantize where a consumer's input scale differs from its producer's;
- flatten, reshape, dropout and identity are aliases (tensors are CHW, batch 1, as PyTorch lays
  them out, so flattening moves nothing).

Scales come from the model's own quantizers: a layer's output quantizer, or, for a tensor that
has none (an add, a pooling), the input quantizer of the layers that consume it. The classifier
whose output the model keeps float (``keep_model_outputs_float``) writes int32 at one scale for
all classes, so argmax needs no float and loses nothing to int8 ties. Activations are int8
(uint8 codes of slimkit's asymmetric quantizers shift by 128, the same real values). A model
with anything else (a Hardswish, a concatenation, float layers left by the mixed-precision
search) is refused with the op and where it is.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from slimkit.backends.tinyml.fixedpoint import quantize_multiplier, quantize_multipliers
from slimkit.core.errors import UnsupportedModelError
from slimkit.encoding.integer import IntegerTracer, integer_layers, is_conv
from slimkit.encoding.layer import EncodedLayer


@dataclass
class QTensor:
    """A batch-1 tensor in the arena: ``shape`` without the batch, int8 (or int32: a float
    output of the model) with real value ``scale * (q - zero_point)``."""

    name: str
    shape: tuple[int, ...]
    scale: float
    zero_point: int
    dtype: str = "int8"

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.numel * (4 if self.dtype == "int32" else 1)


@dataclass
class Op:
    """One integer kernel call: ``kind`` names the kernel, ``attrs`` its constants."""

    kind: str  # conv, linear, maxpool, avgpool, add, relu, requantize
    inputs: list[str]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the model's module or function this came from

    def macs(self, tensors: dict[str, QTensor]) -> int:
        if self.kind == "patch_stage":  # the stage's own MACs (``executed_macs``: with halos recomputed)
            return sum(op.macs(tensors) for op in self.attrs["ops"])
        if self.kind == "conv":
            w = self.attrs["weight"]
            return int(tensors[self.output].numel * int(np.prod(w.shape[1:])))
        if self.kind == "linear":
            return int(self.attrs["weight"].size)
        return 0

    def const_bytes(self) -> int:
        """Bytes of the op's constant arrays (flash): int8 weights, int32 bias, multipliers, shifts."""
        if self.kind == "patch_stage":  # its sub-ops' constants and its window table
            return sum(op.const_bytes() for op in self.attrs["ops"]) + int(self.attrs["windows"].nbytes)
        return sum(int(v.nbytes) for v in self.attrs.values() if isinstance(v, np.ndarray))


@dataclass
class IntGraph:
    tensors: dict[str, QTensor]
    ops: list[Op]
    input: str
    output: str

    def macs(self) -> int:
        return sum(op.macs(self.tensors) for op in self.ops)

    def const_bytes(self) -> int:
        return sum(op.const_bytes() for op in self.ops)

    @property
    def input_tensor(self) -> QTensor:
        return self.tensors[self.input]

    @property
    def output_tensor(self) -> QTensor:
        return self.tensors[self.output]


# --- lowering ----------------------------------------------------------------------------------

def _aten(name: str, overload: str = "default"):
    return getattr(getattr(torch.ops.aten, name), overload)


_ALIAS_MODULES = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)
# ATen ops of an exported graph that keep the bytes in CHW order (batch 1)
_ATEN_ALIASES = {_aten("view"), _aten("reshape"), _aten("_unsafe_view"), _aten("flatten", "using_ints"),
                 _aten("clone"), _aten("contiguous"), _aten("alias"), _aten("detach"), _aten("dropout"),
                 _aten("dropout_")}
_ATEN_ADDS = {_aten("add", "Tensor"), _aten("add_", "Tensor")}

# torch.export inlines modules; for a model fx cannot trace, each quantized layer is exported as one
# call of this op (its index into _EXPORTED), so the graph keeps the layers whole
_EXPORTED: dict[int, nn.Module] = {}


@torch.library.custom_op("slimkit_tinyml::layer", mutates_args=())
def _layer_op(x: torch.Tensor, index: int) -> torch.Tensor:
    layer = _EXPORTED[index]
    return type(layer).forward(layer, x).clone()


@_layer_op.register_fake
def _(x: torch.Tensor, index: int) -> torch.Tensor:
    layer = _EXPORTED[index]
    return type(layer).forward(layer, x)


_LAYER_OP = torch.ops.slimkit_tinyml.layer.default


def _exported(model: nn.Module, example: torch.Tensor, fx_error: Exception) -> fx.GraphModule:
    """``model``'s graph from torch.export (batch dimension dynamic), each quantized layer one
    ``slimkit_tinyml::layer`` call; the reason in one line when that fails too."""
    layers = list(integer_layers(model).values())
    start = max(_EXPORTED, default=-1) + 1
    for i, layer in enumerate(layers):
        _EXPORTED[start + i] = layer
        layer.forward = (lambda index: (lambda x: _LAYER_OP(x, index)))(start + i)
    try:
        x = example[:1].repeat(2, *([1] * (example.dim() - 1)))
        program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    except Exception as err:  # noqa: BLE001 - both tracers failed: say why, in their words
        raise UnsupportedModelError(
            f"tinyml: neither torch.fx ({type(fx_error).__name__}: {str(fx_error).splitlines()[0][:120]}) nor "
            f"torch.export ({type(err).__name__}: {str(err).strip().splitlines()[0][:120]}) can trace the model; the "
            f"C generator needs its graph") from err
    finally:
        for layer in layers:
            del layer.forward
    return program.module()
_ALIAS_FUNCTIONS = {torch.flatten, torch.reshape, F.dropout}
_ALIAS_METHODS = {"view", "reshape", "flatten", "contiguous"}
_ADD = {operator.add, torch.add, operator.iadd}
_RELU_FUNCTIONS = {F.relu, torch.relu, F.relu6}


def _int8_params(quant: nn.Module) -> tuple[float, int]:
    """(scale, zero point) of a frozen ``ActQuant`` in the int8 domain."""
    if quant.calibrating:
        raise UnsupportedModelError("tinyml: the model has an activation quantizer that was never calibrated")
    spec = quant.spec
    if spec.bits != 8:
        raise UnsupportedModelError(f"tinyml: {spec.bits}-bit activations; the kernels are int8")
    offset = -128 if spec.qmin == 0 else 0
    return float(quant.scale), int(quant.zero_point) + offset


def _clamp_for(activation: nn.Module | None, scale: float, zero_point: int, where: str) -> tuple[int, int]:
    """The int8 clamp bounds a fused activation becomes (real 0 is ``zero_point``)."""
    if activation is None:
        return -128, 127
    if isinstance(activation, nn.ReLU):
        return max(-128, zero_point), 127
    if isinstance(activation, nn.ReLU6):
        six = int(torch.round(torch.tensor(6.0, dtype=torch.float32) * (1.0 / torch.tensor(scale)))) + zero_point
        return max(-128, zero_point), min(127, six)
    raise UnsupportedModelError(f"tinyml: {where} fuses {type(activation).__name__}, which has no integer kernel "
                                f"here (ReLU, ReLU6 or none)")


def minmax_params(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of int8 codes covering [lo, hi] widened to include 0: slimkit's min-max
    rule for asymmetric activations (8-bit codes, float32 arithmetic), shifted to int8."""
    lo_t, hi_t = torch.tensor(min(lo, 0.0)), torch.tensor(max(hi, 0.0))
    scale = ((hi_t - lo_t) / 255).clamp_min(1e-12)
    return float(scale), int((-torch.round(lo_t / scale)).clamp(0, 255)) - 128


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _Lowering:
    def __init__(self, model: nn.Module, example: torch.Tensor, calibration: torch.Tensor | None) -> None:
        from torch.fx.passes.shape_prop import ShapeProp

        self.layer_names = {id(m): n for n, m in integer_layers(model).items()}
        try:
            self.gm = fx.GraphModule(model, IntegerTracer().trace(model))
        except Exception as err:  # noqa: BLE001 - third-party code fx cannot trace: torch.export traces it
            self.gm = _exported(model, example, err)
        ShapeProp(self.gm).propagate(example[:1])
        self.modules = dict(model.named_modules())
        self.tensors: dict[str, QTensor] = {}
        self.ops: list[Op] = []
        self.env: dict[fx.Node, str] = {}  # node -> tensor name
        self.output_nodes = self._output_nodes()
        self.calibration = calibration
        self.pads: dict[fx.Node, tuple[int, int, int, int]] = {}  # zero paddings, folded into the conv reading them
        self._ranges: dict[fx.Node, tuple[torch.Tensor, torch.Tensor]] | None = None

    def _observed(self, node: fx.Node) -> tuple[float, int] | None:
        """(scale, zero point) from the range ``node``'s value takes on the calibration rows
        (slimkit's min-max rule, asymmetric), or None without calibration rows."""
        if self.calibration is None:
            return None
        if self._ranges is None:
            self._ranges = _node_ranges(self.gm, self.calibration)
        lo, hi = (float(v) for v in self._ranges[node])
        return minmax_params(lo, hi)

    # which nodes' values the model returns (through aliases)
    def _output_nodes(self) -> set[fx.Node]:
        outs = [n for n in self.gm.graph.nodes if n.op == "output"]
        value = outs[0].args[0]
        if isinstance(value, dict):
            raise UnsupportedModelError(f"tinyml: the model returns a dict ({', '.join(map(str, value))}); one tensor "
                                        f"is supported")
        if isinstance(value, (tuple, list)):
            if len(value) != 1:
                raise UnsupportedModelError(f"tinyml: the model returns {len(value)} values; one is supported")
            value = value[0]
        found = set()
        while isinstance(value, fx.Node):
            found.add(value)
            value = value.args[0] if self._is_alias(value) else None
        return found

    def _quant_layer(self, node: fx.Node):
        if node.op == "call_function" and node.target is _LAYER_OP:
            return _EXPORTED[node.args[1]]
        m = self.modules.get(node.target) if node.op == "call_module" else None
        return m if isinstance(m, EncodedLayer) and m.kind == "quantized" else None

    def _is_alias(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.modules.get(node.target), _ALIAS_MODULES)
        if node.op == "call_function":
            return node.target in _ALIAS_FUNCTIONS or node.target in _ATEN_ALIASES
        return node.op == "call_method" and node.target in _ALIAS_METHODS

    def _keeps_values(self, node: fx.Node) -> bool:
        """Ops whose output has its input's scale: aliases, max-pools, ReLUs."""
        return self._is_alias(node) or self._maxpool(node) is not None or self._relu(node) is not None

    def _consumer_params(self, node: fx.Node) -> tuple[float, int] | None:
        """The input (scale, zero point) of the quantized layers reading ``node``'s value, directly
        or through value-keeping ops (the first one found)."""
        stack, seen = list(node.users), set()
        while stack:
            user = stack.pop(0)
            if user in seen:
                continue
            seen.add(user)
            layer = self._quant_layer(user)
            if layer is not None:
                return _int8_params(layer.input_quant)
            if self._keeps_values(user):
                stack.extend(user.users)
        return None

    def _shape(self, node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise UnsupportedModelError(f"tinyml: {node.format_node()} does not produce one tensor")
        return tuple(int(s) for s in meta.shape[1:])

    def _new(self, node: fx.Node, scale: float, zero_point: int, dtype: str = "int8",
             shape: tuple[int, ...] | None = None) -> str:
        name = f"t{len(self.tensors)}"
        self.tensors[name] = QTensor(name, shape or self._shape(node), float(scale), int(zero_point), dtype)
        return name

    def _where(self, node: fx.Node) -> str:
        layer = self._quant_layer(node)
        if layer is not None:
            return self.layer_names.get(id(layer), node.name)
        if node.op == "call_module":
            return f"{node.target}"
        return f"{node.op} {getattr(node.target, '__name__', node.target)} ({node.name})"

    def _params_for(self, node: fx.Node, what: str) -> tuple[float, int]:
        params = self._consumer_params(node) or self._observed(node)
        if params is None:
            raise UnsupportedModelError(f"tinyml: the output of {what} ({self._where(node)}) has no scale: no "
                                        f"quantized layer reads it; give calibration rows to observe its range (the "
                                        f"`tinyml` step does)")
        return params

    def _input_as(self, node: fx.Node, arg: fx.Node, params: tuple[float, int]) -> str:
        """The tensor of ``arg`` with ``params``: requantized where the producer's scale differs."""
        name = self.env[arg]
        t = self.tensors[name]
        if (np.float32(t.scale), t.zero_point) == (np.float32(params[0]), params[1]):
            return name
        if t.dtype != "int8":
            raise UnsupportedModelError(f"tinyml: {self._where(node)} reads a float output of the model")
        out = self._new(arg, *params, shape=t.shape)
        m0, shift = quantize_multiplier(t.scale / params[0])
        if m0 == 0:
            raise UnsupportedModelError(f"tinyml: {self._where(node)}: its input scale is over 2^31 times its "
                                        f"producer's; the requantization would be a constant")
        self.ops.append(Op("requantize", [name], out, {"multiplier": m0, "shift": shift, "act_min": -128,
                                                       "act_max": 127}, source=self._where(node)))
        return out

    def _maxpool(self, node: fx.Node) -> dict[str, Any] | None:
        if node.op == "call_module" and isinstance(self.modules.get(node.target), nn.MaxPool2d):
            m = self.modules[node.target]
            k, s, p, d, ceil = m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode
        elif node.op == "call_function" and node.target in (F.max_pool2d, _aten("max_pool2d")):
            kw = {**dict(zip(["kernel_size", "stride", "padding", "dilation", "ceil_mode"], node.args[1:])),
                  **node.kwargs}
            k = kw["kernel_size"]
            s, p, d, ceil = kw.get("stride") or k, kw.get("padding", 0), kw.get("dilation", 1), kw.get("ceil_mode", False)
        else:
            return None
        if _pair(d) != (1, 1) or ceil:
            raise UnsupportedModelError(f"tinyml: {self._where(node)}: max-pool with dilation or ceil_mode")
        return {"kernel": _pair(k), "stride": _pair(s if s is not None else k), "padding": _pair(p)}

    def _relu(self, node: fx.Node) -> tuple[float, float] | None:
        """(low, high) real bounds of a standalone ReLU, ReLU6 or hardtanh (a clamp of the codes)."""
        if node.op == "call_module":
            m = self.modules.get(node.target)
            if isinstance(m, nn.ReLU6):
                return (0.0, 6.0)
            if isinstance(m, nn.Hardtanh):
                return (float(m.min_val), float(m.max_val))
            if isinstance(m, nn.ReLU):
                return (0.0, float("inf"))
        if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
            return (0.0, 6.0) if node.target is F.relu6 else (0.0, float("inf"))
        if node.op == "call_function" and node.target in (_aten("relu"), _aten("relu_")):
            return (0.0, float("inf"))
        if node.op == "call_function" and node.target in (F.hardtanh, _aten("hardtanh"), _aten("hardtanh_")):
            lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
            hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
            return (float(lo), float(hi))
        if node.op == "call_method" and node.target in ("relu", "relu_"):
            return (0.0, float("inf"))
        return None

    def _avgpool(self, node: fx.Node) -> dict[str, Any] | None:
        """Window of a global or unpadded average pooling (``None``: not one)."""
        shape_in = self._shape(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        if node.op == "call_module":
            m = self.modules.get(node.target)
            if isinstance(m, nn.AdaptiveAvgPool2d):
                if _pair(m.output_size) != (1, 1):
                    raise UnsupportedModelError(f"tinyml: {node.target}: adaptive average pooling to "
                                                f"{m.output_size}; only to 1x1")
                return {"kernel": shape_in[1:], "stride": shape_in[1:]}
            if isinstance(m, nn.AvgPool2d):
                if _pair(m.padding) != (0, 0) or m.ceil_mode or m.divisor_override:
                    raise UnsupportedModelError(f"tinyml: {node.target}: average pooling with padding, "
                                                f"ceil_mode or a divisor override")
                return {"kernel": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size)}
            return None
        if node.op == "call_function" and node.target is _aten("avg_pool2d"):
            a = list(node.args) + [None] * 7
            kernel, stride, padding = a[1], a[2] or a[1], a[3] or 0
            if _pair(padding) != (0, 0) or a[4] or a[6]:
                raise UnsupportedModelError(f"tinyml: {self._where(node)}: average pooling with padding, "
                                            f"ceil_mode or a divisor override")
            return {"kernel": _pair(kernel), "stride": _pair(stride)}
        if node.op == "call_function" and node.target in (F.adaptive_avg_pool2d, _aten("adaptive_avg_pool2d")):
            if _pair(node.args[1] if len(node.args) > 1 else node.kwargs["output_size"]) != (1, 1):
                raise UnsupportedModelError(f"tinyml: {self._where(node)}: adaptive average pooling beyond 1x1")
            return {"kernel": shape_in[1:], "stride": shape_in[1:]}
        is_mean = (node.op == "call_method" and node.target == "mean") or \
                  (node.op == "call_function" and node.target in (torch.mean, _aten("mean", "dim")))
        if is_mean:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims = tuple(sorted(d % (len(shape_in) + 1) for d in ((dims,) if isinstance(dims, int) else dims)))
            if dims != (2, 3) or len(shape_in) != 3:
                raise UnsupportedModelError(f"tinyml: {self._where(node)}: a mean over {dims}; only over H and W")
            return {"kernel": shape_in[1:], "stride": shape_in[1:]}
        return None

    def run(self) -> IntGraph:
        graph_input = None
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if graph_input is not None:
                    raise UnsupportedModelError("tinyml: the model takes more than one input")
                params = self._params_for(node, "the model's input")
                self.env[node] = graph_input = self._new(node, *params)
            elif node.op == "output" or (node.op == "get_attr" and not node.users) or \
                    (node.op == "call_module" and node.target == "_guards_fn"):  # torch.export's input checks
                continue
            elif node.op == "get_attr":
                raise UnsupportedModelError(f"tinyml: the model reads its tensor {node.target!r} outside any layer "
                                            f"(a functional op, a learned token or embedding table); no integer "
                                            f"kernel takes it")
            else:
                self._lower(node)
        out_node = [n for n in self.gm.graph.nodes if n.op == "output"][0].args[0]
        out_node = out_node[0] if isinstance(out_node, (tuple, list)) else out_node
        return IntGraph(self.tensors, self.ops, graph_input, self.env[out_node])

    def _pad(self, node: fx.Node) -> tuple[int, int, int, int] | None:
        """(left, right, top, bottom) of a zero padding of the last two dimensions."""
        if node.op == "call_module" and isinstance(self.modules.get(node.target), nn.ZeroPad2d):
            return tuple(int(v) for v in self.modules[node.target].padding)
        if node.op != "call_function" or node.target not in (F.pad, _aten("pad"), _aten("constant_pad_nd")):
            return None
        pad = list(node.args[1]) if len(node.args) > 1 else list(node.kwargs["pad"])
        mode = node.args[2] if len(node.args) > 2 and isinstance(node.args[2], str) else node.kwargs.get("mode", "constant")
        value = node.kwargs.get("value", node.args[-1] if len(node.args) > 2 and not isinstance(node.args[-1], str)
                                else 0.0)
        if mode != "constant" or (value or 0.0) != 0.0 or len(pad) != 4 or min(pad) < 0:
            raise UnsupportedModelError(f"tinyml: {self._where(node)}: only a zero padding of height and width "
                                        f"(folded into the convolution that follows) is supported")
        return tuple(int(v) for v in pad)

    def _lower(self, node: fx.Node) -> None:
        layer = self._quant_layer(node)
        for arg in node.all_input_nodes:
            if arg in self.pads and (layer is None or not hasattr(layer, "groups")):
                raise UnsupportedModelError(f"tinyml: {self._where(arg)} pads a tensor that {self._where(node)} reads; "
                                            f"only a padding read by a convolution is supported (folded into it)")
        if layer is not None:
            return self._lower_layer(node, layer)
        pad = self._pad(node)
        if pad is not None:
            self.pads[node] = pad
            self.env[node] = self.env[node.args[0]]
            return
        if self._is_alias(node):
            src = self.tensors[self.env[node.args[0]]]
            shape = self._shape(node)
            if int(np.prod(shape)) != src.numel:
                raise UnsupportedModelError(f"tinyml: {self._where(node)} changes the element count")
            self.env[node] = src.name  # CHW memory order: the same bytes
            return
        pool = self._maxpool(node)
        if pool is not None:
            src = self.tensors[self.env[node.args[0]]]
            self.env[node] = out = self._new(node, src.scale, src.zero_point)
            self.ops.append(Op("maxpool", [src.name], out, {**pool, "in_shape": self._shape(node.args[0])},
                               source=self._where(node)))
            return
        bounds = self._relu(node)
        if bounds is not None:
            src = self.tensors[self.env[node.args[0]]]
            lo, hi = (max(-128, min(127, int(round(b / src.scale)) + src.zero_point)) if abs(b) != float("inf")
                      else (-128 if b < 0 else 127) for b in bounds)
            self.env[node] = out = self._new(node, src.scale, src.zero_point)
            self.ops.append(Op("relu", [src.name], out, {"act_min": lo, "act_max": hi}, source=self._where(node)))
            return
        pool = self._avgpool(node)
        if pool is not None:
            src = self.tensors[self.env[node.args[0]]]
            scale, zp = self._params_for(node, "an average pooling")
            count = pool["kernel"][0] * pool["kernel"][1]
            m0, shift = quantize_multiplier(src.scale / (scale * count))
            self.env[node] = out = self._new(node, scale, zp)
            self.ops.append(Op("avgpool", [src.name], out, {**pool, "multiplier": m0, "shift": shift,
                                                            "in_shape": self._shape(node.args[0])},
                               source=self._where(node)))
            return
        is_add = (node.op == "call_function" and (node.target in _ADD or node.target in _ATEN_ADDS)) or \
                 (node.op == "call_method" and node.target in ("add", "add_"))
        if is_add:
            return self._lower_add(node)
        raise UnsupportedModelError(f"tinyml: no integer kernel for {node.format_node()} "
                                    f"({self._where(node)}); supported: quantized conv/linear, max and average "
                                    f"pooling, add, ReLU/ReLU6, flatten/reshape/dropout")

    def _lower_add(self, node: fx.Node) -> None:
        a, b = node.args[:2]
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)) or node.kwargs.get("alpha", 1) != 1:
            raise UnsupportedModelError(f"tinyml: {self._where(node)}: only the sum of two tensors is supported")
        ta, tb = self.tensors[self.env[a]], self.tensors[self.env[b]]
        if ta.shape != tb.shape:
            raise UnsupportedModelError(f"tinyml: {self._where(node)}: an add that broadcasts {ta.shape} and {tb.shape}")
        scale, zp = self._params_for(node, "an add")
        twice_max = 2.0 * max(ta.scale, tb.scale)
        m1, s1 = quantize_multiplier(ta.scale / twice_max)
        m2, s2 = quantize_multiplier(tb.scale / twice_max)
        mo, so = quantize_multiplier(twice_max / ((1 << 20) * scale))
        self.env[node] = out = self._new(node, scale, zp)
        self.ops.append(Op("add", [ta.name, tb.name], out,
                           {"multiplier_a": m1, "shift_a": s1, "multiplier_b": m2, "shift_b": s2,
                            "multiplier": mo, "shift": so, "act_min": -128, "act_max": 127},
                           source=self._where(node)))

    def _lower_layer(self, node: fx.Node, layer) -> None:
        where = str(node.target)
        if layer.bypass or layer.input_smoothing is not None:
            raise UnsupportedModelError(f"tinyml: {where} computes in float or rescales its input (SmoothQuant)")
        in_params = _int8_params(layer.input_quant)
        x = self._input_as(node, node.args[0], in_params)
        s_in = in_params[0]
        w_scale = layer.weight_scale.detach().double().numpy()
        weight = layer.weight_int8.detach().numpy().astype(np.int8)
        bias = np.zeros(weight.shape[0]) if layer.bias is None else layer.bias.detach().double().numpy()
        acc_scale = s_in * w_scale
        bias_int = np.clip(np.floor(np.abs(bias / acc_scale) + 0.5) * np.sign(bias), -(2 ** 31), 2 ** 31 - 1)
        attrs: dict[str, Any] = {"weight": weight, "bias": bias_int.astype(np.int32)}
        if layer.output_quant is not None:
            scale, zp = _int8_params(layer.output_quant)
            dtype = "int8"
        elif node in self.output_nodes:
            # the model's float output: int32 at the largest channel's accumulator scale (exact
            # ordering of the logits up to that step, no int8 clipping, no ties)
            scale, zp, dtype = float(acc_scale.max()), 0, "int32"
        else:
            scale, zp = self._params_for(node, f"{where} (its output quantizer is off)")
            dtype = "int8"
        m0, shift = quantize_multipliers(acc_scale / scale)
        attrs.update(multiplier=m0, shift=shift,
                     activation=None if layer.activation is None else type(layer.activation).__name__)
        if dtype == "int8":
            attrs["act_min"], attrs["act_max"] = _clamp_for(layer.activation, scale, zp, where)
        elif layer.activation is not None:
            attrs["act_min"], attrs["act_max"] = (0, 2 ** 31 - 1) if isinstance(layer.activation, nn.ReLU) else \
                _fail(f"tinyml: {where}: a float output with {type(layer.activation).__name__}")
        else:
            attrs["act_min"], attrs["act_max"] = -(2 ** 31), 2 ** 31 - 1
        self.env[node] = out = self._new(node, scale, zp, dtype)
        src = self.tensors[x]
        if is_conv(layer):
            if isinstance(layer.padding, str):
                raise UnsupportedModelError(f"tinyml: {where}: padding {layer.padding!r}; give it in pixels")
            arg, (ph, pw) = node.args[0], _pair(layer.padding)
            left, right, top, bottom = self.pads.get(arg, (0, 0, 0, 0))
            in_shape = self._shape(arg.args[0] if arg in self.pads else arg)
            attrs.update(stride=_pair(layer.stride), padding=(ph + top, pw + left), padding_end=(ph + bottom, pw + right),
                         dilation=_pair(layer.dilation), groups=int(layer.groups), in_shape=in_shape)
            if len(in_shape) != 3:
                raise UnsupportedModelError(f"tinyml: {where}: a conv on a tensor of shape {in_shape}")
            self.ops.append(Op("conv", [x], out, attrs, source=where))
        else:
            if src.numel != weight.shape[1]:
                raise UnsupportedModelError(f"tinyml: {where}: a linear applied per position ({src.shape}); "
                                            f"flatten before it")
            self.ops.append(Op("linear", [x], out, attrs, source=where))


@torch.no_grad()
def _node_ranges(gm: fx.GraphModule, rows: torch.Tensor, batch: int = 64) -> dict[fx.Node, tuple[torch.Tensor, torch.Tensor]]:
    """(min, max) of every node's value over ``rows``, running the int8 model's own graph (its
    fake quantization included, so ranges are those the integer graph sees)."""
    ranges: dict[fx.Node, tuple[torch.Tensor, torch.Tensor]] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            value = super().run_node(n)
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                lo, hi = value.min(), value.max()
                old = ranges.get(n)
                ranges[n] = (lo, hi) if old is None else (torch.minimum(old[0], lo), torch.maximum(old[1], hi))
            return value

    for i in range(0, len(rows), batch):
        Recorder(gm).run(rows[i:i + batch])
    return ranges


def _fail(message: str):
    raise UnsupportedModelError(message)


def lower(model: nn.Module, example: torch.Tensor, calibration: torch.Tensor | None = None) -> IntGraph:
    """The integer graph of slimkit's static int8 ``model`` for inputs shaped like ``example``
    (batch dimension first; the graph runs one row). ``calibration``: rows on which to observe
    the range of tensors the model computes in float with no quantizer to take a scale from
    (the input of a first pooling, a residual sum read only by a global pooling). Raises
    ``UnsupportedModelError`` naming the op and module that has no integer kernel here."""
    if not integer_layers(model):
        raise UnsupportedModelError("tinyml: the model has no int8 layers; run a static `quantize` step first")
    registered = set(_EXPORTED)
    try:
        return _Lowering(model.eval(), example, calibration).run()
    finally:  # the exported graph is gone: its layers leave the registry the custom op reads
        for index in set(_EXPORTED) - registered:
            del _EXPORTED[index]
