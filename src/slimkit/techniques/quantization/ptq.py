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
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from slimkit.data.positions import batch_mask, real_positions, real_rows
from slimkit.encoding.integer import IntegerTracer
from slimkit.encoding.twins import plain_type
from slimkit.techniques.quantization.modules import (ActQuant, QuantConv2d, QuantLinear, _QuantLayer,
                                                     in_place_fake_quant)
from slimkit.techniques.quantization.observers import ObserverName, make_observer
from slimkit.techniques.quantization.qscheme import QuantSpec

_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "silu": nn.SiLU}


@dataclass
class QuantReport:
    quantized: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"module", "reason"}
    float_outputs: list[str] = field(default_factory=list)  # layers whose output is not re-quantized
    shared_scales: list[tuple[str, str]] = field(default_factory=list)  # (producer, consumer)
    smoothed: list[str] = field(default_factory=list)  # linears whose inputs SmoothQuant rescaled
    bias_shifts: dict[str, float] = field(default_factory=dict)  # layer -> largest |shift|
    bn_folds: list[tuple[str, str]] = field(default_factory=list)  # (BatchNorm, layer) folded via torch.export
    attention_outputs: list[str] = field(default_factory=list)  # layers whose output feeds Q @ K^T, quantized

    def to_dict(self) -> dict:
        return {"quantized": list(self.quantized), "skipped": list(self.skipped),
                "float_outputs": list(self.float_outputs),
                "shared_scales": [f"{a} -> {b}" for a, b in self.shared_scales], "smoothed": len(self.smoothed),
                "bias_corrected": len(self.bias_shifts), "max_bias_shift": max(self.bias_shifts.values(), default=0.0),
                "bn_folded_via_export": len(self.bn_folds), "attention_outputs": len(self.attention_outputs)}


def _activation_module(name: str, approximate: str = "none") -> nn.Module:
    return nn.GELU(approximate=approximate) if name == "gelu" else _ACTIVATIONS[name]()


def prepare_static(model: nn.Module, *, observer: ObserverName = "minmax", skip: Iterable[str] = (),
                   weight_max: int = 127, float_outputs: Iterable[str] = (),
                   smoothed: Iterable[str] = (), example: tuple[torch.Tensor, ...] | None = None,
                   bn_folds: Iterable[tuple[str, str]] | None = None,
                   attention_outputs: Iterable[str] = ()) -> tuple[nn.Module, QuantReport]:
    """A fused copy of ``model`` whose Conv2d/Linear layers are quantized twins, observing.

    ``float_outputs``: layers whose output is not re-quantized (see ``keep_model_outputs_float``);
    ``smoothed``: linears given SmoothQuant factors (placeholders, for a checkpoint to load into);
    ``attention_outputs``: layers with a symmetric output quantizer (see ``attention_operands``).
    ``example`` inputs let ``fuse_model`` fold BatchNorms inside modules fx cannot trace (from
    torch.export's dataflow); ``bn_folds``, a previous report's ``bn_folds``, replays those folds."""
    from slimkit.techniques.fusion.fuse import FusedConvAct, FusedLinearAct, fuse_model

    bn_folds = list(bn_folds) if bn_folds is not None else None
    fused, fusion = fuse_model(model, example=example if bn_folds is None else None, folds=bn_folds)
    skip = set(skip)
    report = QuantReport(bn_folds=fusion.dataflow_folds)

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
            if plain_type(layer) is nn.Conv2d:
                if layer.padding_mode != "zeros":
                    report.skipped.append({"module": path, "reason": f"padding_mode {layer.padding_mode!r}"})
                    continue
                setattr(parent, name, QuantConv2d(layer, act, observer=observer, weight_max=weight_max))
                report.quantized.append(path)
            elif plain_type(layer) is nn.Linear:
                setattr(parent, name, QuantLinear(layer, act, observer=observer, weight_max=weight_max))
                report.quantized.append(path)
            elif isinstance(layer, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                report.skipped.append({"module": path, "reason": f"{type(layer).__name__} has no int8 twin here"})
            elif child is layer:
                swap(child, f"{path}.")

    swap(fused, "")
    layers = quantized_layers(fused)
    for name in float_outputs:
        if name not in layers:
            raise ValueError(f"float_outputs names {name!r}, which is not a quantized layer")
        layers[name].output_quant = None
    for name in smoothed:
        if not isinstance(layers.get(name), QuantLinear):
            raise ValueError(f"smoothed names {name!r}, which is not a quantized linear")
        layers[name].register_buffer("input_smoothing", torch.ones(layers[name].float_weight.shape[1]))
    for name in attention_outputs:
        if name not in layers:
            raise ValueError(f"attention_outputs names {name!r}, which is not a quantized layer")
    quantize_attention_operands(fused, attention_outputs, observer)
    report.attention_outputs = list(attention_outputs)
    unknown = sorted(skip - {s["module"] for s in report.skipped})
    if unknown:
        from slimkit.core.errors import ConfigError

        names = [n for n, _ in fused.named_modules() if n]
        raise ConfigError(f"quantize: skip names no module of the (fused) model: {unknown}; "
                          f"modules are {names[:12]}{' ...' if len(names) > 12 else ''}")
    return fused, report


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]]) -> int:
    """Run calibration batches through an observing model; returns how many ran. Observers see
    padding positions too: ranges are extremes, and a padded position's activations (its
    position embedding) cover positions past the calibration sentences' lengths
    (``slimkit.data.positions``)."""
    model.eval()
    n = 0
    for inputs in batches:
        model(*inputs)
        n += 1
    return n


@torch.no_grad()
def quantize_static(model: nn.Module, batches: list[tuple[torch.Tensor, ...]], *, observer: ObserverName = "minmax",
                    skip: Iterable[str] = (), weight_max: int = 127, bias_correction: bool = True,
                    smoothquant: float | None = None, keep_float_weights: bool = False,
                    bn_folds: Iterable[tuple[str, str]] | None = None,
                    attention: bool = True, mask_input: int | None = None) -> tuple[nn.Module, QuantReport]:
    """The whole static int8 recipe on a copy of ``model`` (the ``quantize`` step's algorithm):
    fuse and swap, keep outputs no integer kernel consumes in float, migrate activation outliers
    into the weights (``smoothquant``: its alpha), calibrate on ``batches``, freeze, share scales
    across max-pools and reshapes, correct biases. BatchNorms fx cannot reach are folded from
    torch.export's dataflow on the first batch (or as ``bn_folds`` lists). ``attention``: also
    quantize the operands of attention scores (``attention_operands``), so that runtimes run
    ``Q @ K^T`` on integers. ``mask_input``: the index of the batches' attention mask, for padded
    sequence batches: bias correction's mean errors then count real tokens only (ranges and
    SmoothQuant's maxima, which are extremes, keep every position: ``slimkit.data.positions``)."""
    q, report = prepare_static(model.eval(), observer=observer, skip=skip, weight_max=weight_max,
                               example=batches[0], bn_folds=bn_folds)
    if not report.quantized:
        from slimkit.core.errors import SlimkitError

        raise SlimkitError("quantize: the model has no Conv2d or Linear layer to quantize"
                           + (f" (skipped: {report.skipped})" if report.skipped else ""))
    q = q.to(batches[0][0].device)
    if smoothquant is not None:
        report.smoothed = smooth_linears(q, batches, smoothquant)
    if attention:  # before calibration, so that their output quantizers calibrate with the rest
        report.attention_outputs = attention_operands(q, batches[0])
        quantize_attention_operands(q, report.attention_outputs, observer)
    with _OutputUse(q) as use:  # keep_model_outputs_float, on the first calibration batch
        calibrate(q, batches)
    report.float_outputs = use.keep_float(keep=report.attention_outputs)
    convert(q)
    report.shared_scales = share_quantization_params(q)
    if bias_correction:
        report.bias_shifts = correct_bias(q, batches, release=not keep_float_weights, mask_input=mask_input)
    elif not keep_float_weights:
        release_float_weights(q)
    return q, report


@dataclass
class FloatFallback:
    """What ``choose_float_layers`` found: the layers kept in float, each layer's sensitivity
    (quality drop in points with only that layer quantized), the final drop, the evaluations."""

    float_layers: list[str]
    sensitivity: dict[str, float]
    drop: float
    evaluations: int
    model: nn.Module
    report: QuantReport


@torch.no_grad()
def choose_float_layers(model: nn.Module, batches: list[tuple[torch.Tensor, ...]], evaluate, max_drop: float, *,
                        progress=None, time_budget: float | None = None, **kwargs) -> FloatFallback:
    """Static int8 with the fewest layers left in float such that the quality drop (points of
    ``evaluate(model) -> quality``, e.g. on the validation split) stays within ``max_drop``.

    One calibrated model (without bias correction, float weights kept) serves the search: a
    layer's ``bypass`` makes it compute in float. Sensitivity: every layer bypassed but one.
    Then the most sensitive layers are bypassed, fewest first by bisection; the final model is
    quantized afresh (``quantize_static(**kwargs)``, bias correction included) with those layers
    skipped, and checked; if it is over budget, one more layer goes to float. ``progress`` is
    ``slimkit.search.sensitivity``'s callback.
    """
    from slimkit.search import fewest_promotions, most_sensitive_first, sensitivity, solo_drops, tighten

    reference = evaluate(model)
    count = [1]

    def drop(m: nn.Module) -> float:
        count[0] += 1
        return 100 * (reference - evaluate(m))

    search_kwargs = {**kwargs, "bias_correction": False, "keep_float_weights": True}
    q, first_report = quantize_static(model, batches, **search_kwargs)
    kwargs["bn_folds"] = first_report.bn_folds  # export once; every later build replays the folds
    layers = quantized_layers(q)
    names = list(layers)

    def bypass(floats: set[str]) -> nn.Module:
        for n, layer in layers.items():
            layer.bypass = n in floats
        return q

    table = sensitivity(names, ["int8"], lambda n, _: drop(bypass(set(names) - {n})), progress=progress,
                        time_budget=time_budget, what="choose_float_layers")
    order = most_sensitive_first(solo_drops(table))
    first = fewest_promotions(len(order), lambda k: drop(bypass(set(order[:k]))), max_drop)
    skip = list(kwargs.pop("skip", ()))

    def verify(k: int) -> tuple[float, nn.Module, QuantReport]:
        if k == len(order):  # every layer in float: the reference itself
            return 0.0, model, QuantReport(skipped=[{"module": n, "reason": "kept in float (mixed precision)"}
                                                    for n in order])
        final, report = quantize_static(model, batches, skip=[*skip, *order[:k]], **kwargs)
        return drop(final), final, report

    k, (d, final, report) = tighten(range(first, len(order) + 1), verify, lambda v: v[0] <= max_drop)
    return FloatFallback(float_layers=order[:k], sensitivity=solo_drops(table), drop=d, evaluations=count[0],
                         model=final, report=report)


class _Ignore:
    """An observer that keeps nothing."""

    lo = None

    def observe(self, x: torch.Tensor) -> None:
        pass


_IGNORE = _Ignore()


@torch.no_grad()
def smooth_linears(model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]], alpha: float = 0.5) -> list[str]:
    """SmoothQuant on every quantized linear: per input channel j, ``s_j = max|X_j|^alpha /
    max|W_j|^(1 - alpha)`` from the calibration inputs, then ``QuantLinear.smooth(s)``.

    ``alpha`` sets how much of the activations' range moves into the weights (0.5 in the paper;
    higher for models with stronger outliers). Linears that read the same tensor (a
    transformer's query, key and value projections) get one set of factors, from the largest
    weight column among them (as NNCF does), so their smoothed inputs and calibrated quantizers
    are identical and a runtime computes them once. Runs before calibration, while quantizers
    calibrate (they are identities then, so the pass sees float inputs; they observe nothing in
    it, and start afresh). Returns the layers smoothed.
    """
    from slimkit.techniques.quantization.smoothing import input_statistics, smoothing_factors

    if not 0 <= alpha <= 1:
        raise ValueError(f"smoothquant alpha must be in [0, 1], got {alpha}")
    linears = {n: m for n, m in quantized_layers(model).items() if isinstance(m, QuantLinear)
               and m.float_weight is not None and m.input_smoothing is None}
    quantizers = [m for m in model.modules() if isinstance(m, ActQuant) and m.calibrating]
    for quantizer in quantizers:  # this pass sees unsmoothed inputs: what it observed would be dropped
        quantizer.observer = _IGNORE
    try:
        absmax, groups = input_statistics(model, linears, batches)
    finally:
        for quantizer in quantizers:  # calibration starts afresh
            quantizer.observer = make_observer(quantizer.observer_name)
    smoothed = []
    for group in groups:
        factors = smoothing_factors(absmax[group[0]], [linears[n].float_weight for n in group], alpha)
        for name in group:
            linears[name].smooth(factors)
            smoothed.append(name)
    return sorted(smoothed, key=list(linears).index)


@torch.no_grad()
def keep_model_outputs_float(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[str]:
    """Stop re-quantizing outputs that no integer kernel consumes; returns the layers changed.

    A layer's output quantizer only pays when the next op runs on integers: ONNX Runtime runs a
    convolution as ``QLinearConv`` (and the pool after it in int8) only with a quantize node
    right after it, so convolutions keep theirs. Quantizing what leaves the model (a
    classifier's logits) or what feeds float ops (a transformer's residual adds, LayerNorms,
    attention reshapes) only adds rounding error: a Linear keeps its output quantizer only when
    its output goes straight into another quantized layer, and no layer re-quantizes the
    model's output. (On MiniLM, quantizing every Linear's output gave mean cosine 0.937 to
    FP32; leaving those outputs float, 0.991.)

    Runs ``inputs`` through the model while it calibrates (its quantizers are then identities,
    so tensors can be followed by identity from producer to consumer; its observers see them).
    ``quantize_static`` follows its first calibration batch instead (``_OutputUse``).
    """
    with _OutputUse(model) as use:
        model.eval()(*inputs)
    return use.keep_float()


class _OutputUse:
    """Hooks that follow the model's first forward pass while they are registered: which
    quantized layer's output feeds which quantized layer, and what leaves the model;
    ``keep_float()`` then applies ``keep_model_outputs_float``'s rule."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.layers = model, quantized_layers(model)
        if any(m.input_quant is not None and not m.input_quant.calibrating for m in self.layers.values()):
            raise RuntimeError("keep_model_outputs_float runs before convert (while the model calibrates)")
        self.produced: dict[int, str] = {}
        self.consumed: set[int] = set()
        self.outputs: set[int] | None = None  # set once the first pass ends
        self.alive: list[torch.Tensor] = []  # held so that no id is reused by a later tensor during that pass
        self.hooks: list = []

    def __enter__(self) -> "_OutputUse":
        def on_input(module, args):
            # a smoothed linear rescales its input in float before quantizing it: its producer's
            # integer output would only add a second rounding
            if self.outputs is None and args and isinstance(args[0], torch.Tensor) and module.input_smoothing is None:
                self.consumed.add(id(args[0]))
                self.alive.append(args[0])

        def on_output(module, args, out, name):
            if self.outputs is None:
                self.produced[id(out)] = name
                self.alive.append(out)

        def on_model_output(module, args, out):
            if self.outputs is None:
                self.outputs = {id(o) for o in (out if isinstance(out, (tuple, list)) else [out])
                                if isinstance(o, torch.Tensor)}
                self.alive.clear()  # nothing more is recorded: ids may be reused from here on

        self.hooks = [h for name, m in self.layers.items() for h in (
            m.register_forward_pre_hook(on_input),
            m.register_forward_hook(lambda mod, args, out, name=name: on_output(mod, args, out, name)))]
        self.hooks.append(self.model.register_forward_hook(on_model_output))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.hooks:
            h.remove()

    def keep_float(self, keep: Iterable[str] = ()) -> list[str]:
        """Drop the output quantizers the rule says to (all but ``keep``'s); returns the layers changed."""
        keep = set(keep)
        if self.outputs is None:
            raise RuntimeError("keep_model_outputs_float: the model never ran")
        changed = []
        for out_id, name in self.produced.items():
            layer = self.layers[name]
            if layer.output_quant is None or name in keep:
                continue
            if out_id in self.outputs or (isinstance(layer, QuantLinear) and out_id not in self.consumed):
                layer.output_quant = None
                changed.append(name)
        return sorted(changed, key=list(self.layers).index)


# ops that move or select values without computing new ones: a tensor keeps its producer through them
_VIEW_OPS = {"view", "reshape", "transpose", "permute", "contiguous", "flatten", "unflatten", "squeeze", "unsqueeze",
             "split", "chunk", "unbind", "__getitem__", "t", "expand", "narrow", "movedim", "swapaxes"}
_MATMUL_OPS = {"matmul", "bmm", "__matmul__"}


@torch.no_grad()
def attention_operands(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[str]:
    """Quantized layers whose output, through reshapes and transposes only, is an operand of a
    product of two activations whose other operand also comes from a quantized layer: a
    transformer's query and key projections, whose scores ``Q @ K^T`` (or
    ``scaled_dot_product_attention``'s) can then run on integers.

    OpenVINO fuses attention into one kernel that runs in int8 when both operands arrive
    quantized (NNCF's transformer preset quantizes them: ``slimkit int8-coverage`` shows its
    attention subgraphs in i8); the softmax side (``P @ V``) stays float, so a value projection
    is not listed. Found by following the data of one forward pass (``TorchFunctionMode``), so
    it needs no graph capture and works inside any module. Runs while the model calibrates."""
    from torch.overrides import TorchFunctionMode

    layers = quantized_layers(model)
    producer: dict[int, str] = {}
    alive: list[torch.Tensor] = []  # no id is reused by a later tensor during the pass
    found: set[str] = set()

    def name_of(func) -> str:
        return getattr(func, "__name__", "")

    class Follow(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = name_of(func)
            first = args[0] if args else None
            if name in _VIEW_OPS and isinstance(first, torch.Tensor) and id(first) in producer:
                outs = out if isinstance(out, (tuple, list)) else [out]
                for o in outs:
                    if isinstance(o, torch.Tensor):
                        producer[id(o)] = producer[id(first)]
                        alive.append(o)
            elif name in _MATMUL_OPS or name == "scaled_dot_product_attention":
                operands = [a for a in args[:2] if isinstance(a, torch.Tensor)]
                sources = [producer.get(id(a)) for a in operands]
                if len(sources) == 2 and all(sources) and not any(isinstance(a, nn.Parameter) for a in operands):
                    found.update(sources)
            return out

    def on_output(module, args, out, name):
        if isinstance(out, torch.Tensor):
            producer[id(out)] = name
            alive.append(out)

    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: on_output(mod, args, out, name))
             for name, m in layers.items()]
    try:
        with Follow():
            model.eval()(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return [n for n in layers if n in found]


def quantize_attention_operands(model: nn.Module, names: Iterable[str], observer: ObserverName = "minmax") -> None:
    """Give each named layer a symmetric int8 output quantizer (attention operands: zero-centred
    values; OpenVINO's int8 attention takes i8 codes without a zero point)."""
    layers = quantized_layers(model)
    for name in names:
        layers[name].output_quant = ActQuant(QuantSpec(bits=8, symmetric=True), observer)


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


# ops whose output values are a subset of their input's (a max picks one; shapes just move them)
_SAME_VALUES_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                        nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)
_SAME_VALUES_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, F.max_pool1d, F.max_pool2d,
                          F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.dropout}
_SAME_VALUES_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze"}


class _QuantTracer(IntegerTracer):
    """Quantized layers and activation quantizers kept whole (the integer protocol's tracer)."""


def _same_values(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _SAME_VALUES_MODULES)
    if node.op == "call_function":
        return node.target in _SAME_VALUES_FUNCTIONS
    return node.op == "call_method" and node.target in _SAME_VALUES_METHODS


@torch.no_grad()
def share_quantization_params(model: nn.Module) -> list[tuple[str, str]]:
    """Give a layer's input quantizer its producer's output (scale, zero point) when only
    max-pools and reshapes lie between them; returns the (producer, consumer) pairs.

    Quantize-dequantize pairs with one scale around a max-pool or a reshape are what lets ONNX
    Runtime run those ops in int8 and keep the layout transforms fused (OpenVINO likewise keeps
    the tensor in int8); two independently calibrated scales force a float round trip between
    the layers. Sharing loses nothing: those ops only pick or move values, so the producer's
    range covers the consumer's input. Needs a model fx can trace (a fused CNN is one); any
    other model is left as it is.
    """
    try:
        graph = _QuantTracer().trace(model)
    except Exception:  # noqa: BLE001 - untraceable models simply keep their own scales
        return []
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        consumer = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(consumer, _QuantLayer) or not node.args or consumer.input_quant.calibrating \
                or consumer.input_smoothing is not None:  # its quantizer sees rescaled values
            continue
        src = node.args[0]
        while isinstance(src, fx.Node) and _same_values(src, modules) and src.args:
            src = src.args[0]
        producer = modules.get(src.target) if isinstance(src, fx.Node) and src.op == "call_module" else None
        if not isinstance(producer, _QuantLayer) or producer.output_quant is None \
                or producer.output_quant.spec != consumer.input_quant.spec:
            continue
        consumer.input_quant.scale.copy_(producer.output_quant.scale)
        consumer.input_quant.zero_point.copy_(producer.output_quant.zero_point)
        consumer.input_quant._frozen_from_buffers()
        pairs.append((src.target, node.target))
    return pairs


class _Reached(Exception):
    """Raised by a hook to end a forward pass once the layer of interest has seen its input."""


@torch.no_grad()
def feed_layer(model: nn.Module, layer: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]], fn,
               mask_input: int | None = None) -> None:
    """Run each batch through ``model`` only until ``layer`` receives its input, and call
    ``fn(layer, args)`` with it (the rest of the pass is skipped): how layer-by-layer algorithms
    (bias correction, GPTQ) see what the model, as quantized so far, feeds a layer. With
    ``mask_input``, ``fn`` runs inside ``real_positions`` (its ``real_rows`` are real tokens)."""
    def hook(module, args):
        fn(module, args)
        raise _Reached

    handle = layer.register_forward_pre_hook(hook)
    try:
        for inputs in batches:
            try:
                with real_positions(batch_mask(inputs, mask_input)):
                    model(*inputs)
            except _Reached:
                pass
    finally:
        handle.remove()


@torch.no_grad()
def correct_bias(model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]],
                 release: bool = True, mask_input: int | None = None) -> dict[str, float]:
    """Empirical bias correction: shift each quantized layer's bias by the mean error that
    quantization adds to its output, so that the error has zero mean per output channel.

    Quantizing weights (and the layer's input) makes ``E[W_q x_q] != E[W x]``: the per-channel
    mean of the error is a bias, and it accumulates through the network (Nagel et al., "Data-Free
    Quantization Through Weight Equalization and Bias Correction", 2019, §4.2; NNCF's "fast bias
    correction" is the empirical form used here). Layer by layer, in forward order, a layer's
    input is what the already-corrected quantized model gives it on the calibration batches, and
    its output with float weight and float input is compared with its output with int8 weight and
    quantized input. Needs a converted model (frozen quantizers) whose layers still hold their
    float weights; layers without a bias, and layers computing in float (``bypass``), are left as
    they are. Returns the largest |shift| per corrected layer.

    One forward pass does it: the batches (split along their first dimension, as
    ``calibration_batches`` makes them) run as one batch, and each layer, when the pass reaches
    it, takes the mean error over all of them, shifts its bias and only then computes its output,
    so every later layer sees the corrected prefix. This is the layer-by-layer algorithm
    (``_correct_bias_layerwise``, one partial pass per layer, used when the batches cannot be
    concatenated) up to float rounding, for the memory of every batch's activations at once.
    Its quantizers compute in place (``in_place_fake_quant``: the same values, faster).

    ``mask_input``: the batches' attention mask; the mean error is then over real tokens only
    (padding is 62% of MiniLM's calibration positions; counting it cost 0.0008 of cosine).
    """
    model.eval()
    batches = list(batches)
    layers = _correctable_layers(model)
    joined = _concatenated(batches)
    if joined is None:
        shifts = _correct_bias_layerwise(model, batches, layers, mask_input)
    else:
        shifts = {}

        def correct(quantizer, args, quantized, name):
            layer = layers[name]
            if name in shifts or not args[0].numel():  # a layer called twice is corrected on its first call
                return
            shift = _mean_output_error(layer, real_rows(args[0]), real_rows(quantized)).to(layer.bias.dtype)
            layer.bias.sub_(shift)  # before the layer computes its output (its input quantizer runs first)
            shifts[name] = float(shift.abs().max())

        hooks = [layer.input_quant.register_forward_hook(
            lambda mod, args, out, name=name: correct(mod, args, out, name)) for name, layer in layers.items()]
        try:
            with in_place_fake_quant(model), real_positions(batch_mask(joined, mask_input)):
                model(*joined)
        finally:
            for h in hooks:
                h.remove()
        shifts = {name: shifts[name] for name in layers if name in shifts}
    if release:
        release_float_weights(model)
    return shifts


def _correctable_layers(model: nn.Module) -> dict[str, _QuantLayer]:
    layers = {name: m for name, m in quantized_layers(model).items()
              if m.bias is not None and m.float_weight is not None and not m.bypass}
    if any(m.input_quant.calibrating for m in layers.values()):
        raise RuntimeError("correct_bias runs after convert (the input quantizer must be frozen)")
    return layers


def _concatenated(batches: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...] | None:
    """The batches as one (concatenated along the first dimension), or None where their inputs
    differ in count, kind, trailing shape, dtype or device."""
    if len(batches) == 1:
        return tuple(batches[0])
    if not batches or len({len(b) for b in batches}) != 1:
        return None
    joined = []
    for parts in zip(*batches):
        first = parts[0]
        if not all(isinstance(p, torch.Tensor) and p.dim() > 0 and p.shape[1:] == first.shape[1:]
                   and p.dtype == first.dtype and p.device == first.device for p in parts):
            return None
        joined.append(torch.cat(parts))
    return tuple(joined)


def _mean_output_error(layer: _QuantLayer, x: torch.Tensor, x_quantized: torch.Tensor) -> torch.Tensor:
    """Per output channel, the mean over every output position of (int8 weight on the quantized
    input) - (float weight on the float input), before bias and activation.

    The layer is linear in its input, so the inputs are summed over rows (a conv's: over the
    batch) first and the layer runs once on the sums, in float64, as
    ``W_q sum(x_q - x) + (W_q - W) sum(x)``: both terms are small, so float32 sums of the inputs
    lose nothing that matters (more exact than averaging per-row errors computed in float32)."""
    wq = layer.dequantized_weight().double()
    dw = wq - layer.float_weight.to(x.device).double()
    if isinstance(layer, QuantLinear):
        x, x_quantized = x.reshape(-1, x.shape[-1]), x_quantized.reshape(-1, x.shape[-1])
        return (F.linear(_row_sum(x_quantized, x), wq) + F.linear(_row_sum(x), dw)) / x.shape[0]
    if x.dim() == 3:  # an unbatched image
        x, x_quantized = x[None], x_quantized[None]
    error = sum(F.conv2d(t[None], w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
                for t, w in ((_row_sum(x_quantized, x), wq), (_row_sum(x), dw)))
    return error.sum((0, 2, 3)) / (x.shape[0] * error.shape[2] * error.shape[3])


def _row_sum(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """The sum over the first dimension of ``a`` (or ``a - b``), in float64, from float32 sums
    of ~1 MB slices (small temporaries: several times faster than one big difference, and
    more exact)."""
    step = max(1, (1 << 18) // max(1, a[0].numel()))
    total = torch.zeros(a.shape[1:], dtype=torch.float64, device=a.device)
    for start in range(0, a.shape[0], step):
        part = a[start:start + step] if b is None else a[start:start + step] - b[start:start + step]
        total += part.sum(0)
    return total


def _correct_bias_layerwise(model: nn.Module, batches: list[tuple[torch.Tensor, ...]],
                            layers: dict[str, _QuantLayer], mask_input: int | None = None) -> dict[str, float]:
    """``correct_bias`` for batches that cannot run as one: for each layer in turn, the batches
    run up to it (``feed_layer``), so this costs a partial forward pass per layer."""
    shifts: dict[str, float] = {}
    for name, layer in layers.items():
        sums: list[torch.Tensor] = []
        count = [0]

        def measure(module, args, sums=sums, count=count):
            x = module.smooth_input(real_rows(args[0]))
            quantized = module._apply_layer(module.input_quant(x), module.dequantized_weight())
            error = (quantized - module._apply_layer(x, module.float_weight.to(x.device))).movedim(module.channel_dim, -1)
            error = error.reshape(-1, error.shape[-1])
            sums.append(error.sum(0, dtype=torch.float64))
            count[0] += error.shape[0]

        feed_layer(model, layer, batches, measure, mask_input)
        if not count[0]:
            continue
        shift = (torch.stack(sums).sum(0) / count[0]).to(layer.bias.dtype)
        layer.bias.sub_(shift)
        shifts[name] = float(shift.abs().max())
    return shifts


def release_float_weights(model: nn.Module) -> None:
    """Drop the float weights quantized layers keep for ``correct_bias`` (the model then holds
    only its int8 codes)."""
    for layer in quantized_layers(model).values():
        layer.float_weight = None


def quantized_layers(model: nn.Module) -> dict[str, _QuantLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _QuantLayer)}
