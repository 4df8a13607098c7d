"""Encoded layers: the protocol every technique's encoded layer implements, the model-level
helpers built on it, the weight counts measurement reports, the one bit-packing utility and the
export target. Sits below techniques, backends and measure: imports slimkit.core and torch only.
"""

from slimkit.encoding.counts import dense_fp32_bytes, logical_param_count, nonzero_param_count
from slimkit.encoding.export import export_target, exporting_for
from slimkit.encoding.layer import KINDS, QUANTIZED_KINDS, EncodedLayer, encoded_classes, tensor_bytes
from slimkit.encoding.model import densified, densify_, encoded_layers, is_encoded, refuse_encoded

__all__ = [
    "KINDS", "QUANTIZED_KINDS", "EncodedLayer", "dense_fp32_bytes", "densified", "densify_", "encoded_classes",
    "encoded_layers", "export_target", "exporting_for", "is_encoded", "logical_param_count",
    "nonzero_param_count", "refuse_encoded", "tensor_bytes",
]
