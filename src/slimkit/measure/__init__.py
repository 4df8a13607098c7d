"""The only place numbers come from: size, MACs, latency, memory and quality, with units.

``measure_model`` measures a model on a task the same way for the baseline and every step.
"""

from slimkit.measure.config import MeasureConfig
from slimkit.measure.latency import LatencyStats, measure_latency
from slimkit.measure.macs import count_macs
from slimkit.measure.memory import peak_inference_bytes
from slimkit.measure.model import measure_model
from slimkit.measure.size import count_nonzero_params, count_params, dense_fp32_bytes, serialized_bytes

__all__ = [
    "LatencyStats", "MeasureConfig", "count_macs", "count_nonzero_params", "count_params",
    "dense_fp32_bytes", "measure_latency", "measure_model", "peak_inference_bytes", "serialized_bytes",
]
