import torch
import torch.nn as nn

from slimkit.core.io import state_dict_bytes
from slimkit.measure.size import count_nonzero_params, count_params, dense_fp32_bytes, serialized_bytes, tensors_bytes


def test_counts_of_a_known_model():
    model = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 2))
    assert count_params(model) == 10 * 5 + 5 + 5 * 2 + 2
    with torch.no_grad():
        model[0].weight[:, :4] = 0  # 5 rows x 4 columns zeroed
        model[2].bias.zero_()
    assert count_nonzero_params(model) == count_params(model) - 20 - 2


def test_dense_fp32_bytes_counts_float_buffers_not_int_ones():
    bn = nn.BatchNorm2d(8)  # weight, bias, running_mean, running_var (float) + num_batches_tracked (int64)
    assert dense_fp32_bytes(bn) == 4 * 8 * 4


def test_bytes_of_known_tensors():
    state = {"a": torch.zeros(3, 4, dtype=torch.float32), "b": torch.zeros(10, dtype=torch.int8),
             "c": torch.zeros(2, dtype=torch.float16)}
    assert tensors_bytes(state) == 48 + 10 + 4
    blob = state_dict_bytes(state)
    header = int.from_bytes(blob[:8], "little")
    assert len(blob) == 8 + header + 62  # safetensors: 8-byte length, JSON header, raw payload


def test_serialized_bytes_tracks_dtype():
    model = nn.Linear(256, 256)
    fp32 = serialized_bytes(model)
    half = serialized_bytes(model.half())
    assert fp32 - half == 2 * (256 * 256 + 256)


def test_shared_parameters_counted_once():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, lin)
    assert count_params(model) == 20


def test_encoded_layers_count_the_weights_of_the_dense_layer_they_stand_for():
    from slimkit.techniques.quantization.modules import QuantLinear
    from slimkit.techniques.quantization.weight_only import WeightOnlyLinear, WeightOnlySpec

    layer = QuantLinear(nn.Linear(10, 5))  # int8 codes, scales and zero points as buffers, activation quantizers
    assert count_params(layer) == 10 * 5 + 5
    with torch.no_grad():
        layer.weight_int8[:2] = 0
    assert count_nonzero_params(layer) == 55 - 20
    assert dense_fp32_bytes(layer) == 4 * 55  # the float layer's weight and bias, nothing of the encoding
    packed = nn.Sequential(WeightOnlyLinear(nn.Linear(64, 8), WeightOnlySpec(bits=4, group_size=32)), nn.ReLU())
    assert count_params(packed) == 64 * 8 + 8 and dense_fp32_bytes(packed) == 4 * (64 * 8 + 8)
