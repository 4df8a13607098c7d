"""The integer protocol: what a runtime that computes on integers reads from a static int8 model
(the TinyML code generator), so that backends read it without importing the technique that made it.

- ``ActivationQuantizer``: the base of per-tensor activation quantizers. Attributes: ``spec``
  (``bits``, ``symmetric``, ``qmin``, ``qmax``), buffers ``scale`` and ``zero_point``,
  ``calibrating`` (True until frozen). Its ``forward`` quantizes and dequantizes (float in, float out).
- A static int8 layer is an ``EncodedLayer`` of kind ``"quantized"`` with ``weight_int8`` (the codes,
  symmetric per output channel), ``weight_scale``, ``weight_max`` (the largest code), ``bias`` (float),
  ``input_quant`` and ``output_quant`` (``ActivationQuantizer``; the output one may be None: a float
  output), ``activation`` (the fused ``nn.ReLU``/``nn.ReLU6``/... or None), ``input_smoothing``
  (None unless SmoothQuant rescaled its input), ``bypass`` (True: computing in float); a
  convolution also ``stride``, ``padding``, ``dilation`` and ``groups`` (``nn.Conv2d``'s), a linear
  layer ``in_features`` and ``out_features``. ``dequantized_weight()`` is the float weight its
  forward uses; ``set_weight_(w)`` re-quantizes a float weight into its codes and scales.
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn as nn

from slimkit.encoding.layer import EncodedLayer
from slimkit.encoding.model import encoded_layers


class ActivationQuantizer(nn.Module):
    """Base of per-tensor activation quantizers (see the module docstring)."""


def integer_layers(model: nn.Module) -> dict[str, EncodedLayer]:
    """The static int8 layers of ``model`` by name, in module order."""
    return encoded_layers(model, "quantized")


def is_conv(layer: EncodedLayer) -> bool:
    """Whether an int8 layer stands for a convolution (its codes are out x in/groups x kh x kw)."""
    return layer.weight_int8.dim() == 4


class IntegerTracer(fx.Tracer):
    """torch.fx tracing with int8 layers and activation quantizers kept whole (leaves)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, ActivationQuantizer) or (isinstance(m, EncodedLayer) and m.kind == "quantized") \
            or super().is_leaf_module(m, module_qualified_name)
