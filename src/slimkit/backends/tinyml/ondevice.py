"""On-device learning for an int8 model, TinyTL style (Cai et al. 2020): train only the biases
and/or the last layer, because what training must keep in SRAM is what limits a microcontroller.

``training_memory`` counts the bytes a batch-1 SGD step needs on the device with the planner's
accounting (tensor bytes and lifetimes over the integer graph): the inference arena during the
forward pass; what the forward pass keeps for the backward pass (a weight gradient needs its
layer's int8 input; going back through a ReLU/ReLU6 clamp needs one bit per element, through a
max-pool one byte per output for the winner's position; biases need nothing, which is TinyTL's
point); the float32 gradients live during the backward pass (reverse lifetimes); and float32
master copies, gradients and optimizer state of the trained parameters. Frozen int8 weights stay
in flash. ``train_on_device`` then trains exactly that set in Python on the int8 model itself:
activation quantizers pass gradients straight through, trained weights are float32 masters
fake-quantized per channel in the forward pass, and at the end the int8 codes, scales and biases
are written back, so the result lowers to C like any int8 model.
"""

from __future__ import annotations

import math
import types
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

import torch
import torch.nn as nn

from slimkit.backends.tinyml.graph import IntGraph

MODES = ("bias", "last", "bias+last", "full")
OPTIMIZER_STATE = {"sgd": 0, "sgd-momentum": 1, "adam": 2, "adamw": 2}  # float32 values per trained parameter


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    from slimkit.encoding.integer import integer_layers

    layers = integer_layers(model)
    if not layers:
        from slimkit.core.errors import UnsupportedModelError

        raise UnsupportedModelError("on-device training: the model has no int8 layers; quantize it first")
    return layers


def trained_sets(model: nn.Module, mode: str) -> tuple[list[str], list[str]]:
    """(layers whose weights train, layers whose biases train) for ``mode``."""
    if mode not in MODES:
        raise ValueError(f"unknown on-device training mode {mode!r} (known: {', '.join(MODES)})")
    layers = _layers(model)
    names = list(layers)
    with_bias = [n for n in names if layers[n].bias is not None]
    weights = {"bias": [], "last": names[-1:], "bias+last": names[-1:], "full": names}[mode]
    biases = {"bias": with_bias, "last": [n for n in names[-1:] if n in with_bias], "bias+last": with_bias,
              "full": with_bias}[mode]
    return weights, biases


@dataclass
class TrainingMemory:
    mode: str
    trained_params: int
    param_bytes: int  # float32 masters + gradients + optimizer state of the trained parameters
    saved_bytes: int  # what the forward pass keeps for the backward pass
    gradient_bytes: int  # peak of float32 activation gradients during the backward pass
    arena_bytes: int  # the inference arena (the forward pass)
    total_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def _clamps(op) -> bool:
    """Whether going back through ``op`` needs its activation's mask (a fused or standalone ReLU/ReLU6)."""
    return op.kind == "relu" or op.attrs.get("activation") is not None


def training_memory(graph: IntGraph, model: nn.Module, mode: str, optimizer: str = "sgd") -> TrainingMemory:
    """SRAM bytes of one on-device SGD step in ``mode`` (see the module docstring); ``graph`` is
    the model's integer graph (whole maps), ``optimizer`` one of ``OPTIMIZER_STATE``."""
    from slimkit.backends.tinyml.planner import plan_memory

    if optimizer not in OPTIMIZER_STATE:
        raise ValueError(f"unknown optimizer {optimizer!r} (known: {', '.join(OPTIMIZER_STATE)})")
    weights, biases = trained_sets(model, mode)
    layers = _layers(model)
    params = sum(layers[n].weight_int8.numel() for n in weights) + sum(layers[n].bias.numel() for n in biases)
    trained_ops = [i for i, op in enumerate(graph.ops) if op.source in set(weights) | set(biases)]
    if not trained_ops:
        raise ValueError(f"on-device training: no op of the graph trains in mode {mode!r}")
    first = min(trained_ops)
    saved = 0
    for i, op in enumerate(graph.ops[first:], start=first):
        if op.source in weights:  # a weight gradient needs the layer's input
            saved += graph.tensors[op.inputs[0]].nbytes
        out = graph.tensors[op.output]
        if _clamps(op):  # gradients reach this op's parameters or its input through its activation
            saved += math.ceil(out.numel / 8)
        elif op.kind == "maxpool" and i > first:
            saved += out.numel
    # float32 activation gradients, live from the backward step that writes them to the one that reads them
    producer = {op.output: i for i, op in enumerate(graph.ops)}
    live = {graph.output: 4 * graph.output_tensor.numel}
    peak = sum(live.values())
    for i in range(len(graph.ops) - 1, first - 1, -1):
        op = graph.ops[i]
        live.pop(op.output, None)
        if i > first:
            for name in op.inputs:
                if producer.get(name, -1) >= first:
                    live[name] = 4 * graph.tensors[name].numel
        peak = max(peak, sum(live.values()) + (4 * graph.tensors[op.output].numel))
    param_bytes = 4 * params * (2 + OPTIMIZER_STATE[optimizer])
    arena = plan_memory(graph).peak
    total = param_bytes + max(arena + saved, saved + peak)
    return TrainingMemory(mode, int(params), int(param_bytes), int(saved), int(peak), int(arena), int(total))


def _fake_quant_ste(w: torch.Tensor, weight_max: int) -> torch.Tensor:
    """Per-output-channel symmetric fake quantization with a straight-through gradient."""
    scale = (w.detach().abs().amax(dim=tuple(range(1, w.dim())), keepdim=True) / weight_max).clamp_min(1e-12)
    q = torch.clamp(torch.round(w / scale), -weight_max, weight_max) * scale
    return w + (q - w).detach()


@contextmanager
def on_device_training(model: nn.Module, mode: str) -> Iterator[list[nn.Parameter]]:
    """Within the block, ``model`` (an int8 model) trains the parameters of ``mode`` and nothing
    else: activation quantizers keep quantizing but pass gradients straight through, trained
    weights are float32 masters fake-quantized per channel. On leaving, the trained weights'
    int8 codes and scales are written back and the model is frozen again."""
    from slimkit.encoding.integer import ActivationQuantizer

    weights, biases = trained_sets(model, mode)
    layers = _layers(model)
    for p in model.parameters():
        p.requires_grad_(False)
    quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    for m in quantizers:
        m.forward = types.MethodType(lambda self, x: x + (type(self).forward(self, x.detach()) - x).detach(), m)
    masters = {}
    for name in weights:
        layer = layers[name]
        masters[name] = nn.Parameter(layer.dequantized_weight().detach().clone())
        layer.register_parameter("trained_weight", masters[name])
        layer.dequantized_weight = types.MethodType(
            lambda self: _fake_quant_ste(self.trained_weight, self.weight_max), layer)
    for name in biases:
        layers[name].bias.requires_grad_(True)
    try:
        yield [*masters.values(), *(layers[n].bias for n in biases)]
    finally:
        with torch.no_grad():
            for name, master in masters.items():
                layer = layers[name]
                del layer.dequantized_weight
                del layer._parameters["trained_weight"]
                layer.set_weight_(master.detach())
        for m in quantizers:
            del m.forward
        for p in model.parameters():
            p.requires_grad_(False)


def train_on_device(model: nn.Module, ctx, mode: str, cfg) -> tuple[nn.Module, dict]:
    """Train ``mode``'s parameters of the int8 ``model`` in place with ``cfg`` (a ``TrainConfig``)
    on ``ctx``'s training rows through the one training loop; the model and the fit's record."""
    with on_device_training(model, mode) as trained:
        fit = ctx.train(model, cfg, description=f"on-device ({mode})")
    return model.eval(), {"trained_params": sum(p.numel() for p in trained), "epochs": cfg.epochs,
                          "best_epoch": getattr(fit, "best_epoch", None)}
