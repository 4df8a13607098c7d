"""The ONNX clean-up pass: smaller files, the same outputs, the same integer kernels."""

import numpy as np
import pytest
import torch
import torch.nn as nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from slimkit.backends.onnx_graph import compact  # noqa: E402


def _run(model_proto, feeds):
    session = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _requantize_graph(second_scale: float, second_zero_point: int = 0):
    """x -> Q(0.1, 3) -> DQ -> Q(s2, z2) -> DQ -> Relu -> y."""
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s1"),
             numpy_helper.from_array(np.array(3, np.uint8), "z1"),
             numpy_helper.from_array(np.array(second_scale, np.float32), "s2"),
             numpy_helper.from_array(np.array(second_zero_point, np.uint8), "z2")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s1", "z1"], ["q1"], name="quantize_input"),
             helper.make_node("DequantizeLinear", ["q1", "s1", "z1"], ["d1"]),
             helper.make_node("QuantizeLinear", ["d1", "s2", "z2"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s2", "z2"], ["d2"]),
             helper.make_node("Relu", ["d2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_a_requantization_on_the_same_grid_is_removed_and_outputs_stay_bit_exact():
    model = _requantize_graph(0.1, 3)
    x = {"x": np.array([-1.0, 0.04, 0.26, 30.0], np.float32)}
    before = _run(model, x)
    assert compact(model) == 1
    assert [n.op_type for n in model.graph.node] == ["QuantizeLinear", "DequantizeLinear", "Relu"]
    assert all(not n.name for n in model.graph.node)
    assert [i.name for i in model.graph.input] == ["x"] and [o.name for o in model.graph.output] == ["y"]
    np.testing.assert_array_equal(_run(model, x), before)


@pytest.mark.parametrize("scale, zero_point", [(0.2, 3), (0.1, 4)])
def test_a_requantization_onto_another_grid_is_kept(scale, zero_point):
    model = _requantize_graph(scale, zero_point)
    x = {"x": np.array([-1.0, 0.04, 0.26, 30.0], np.float32)}
    before = _run(model, x)
    assert compact(model) == 0
    assert [n.op_type for n in model.graph.node].count("QuantizeLinear") == 2
    np.testing.assert_array_equal(_run(model, x), before)


def test_a_quantized_cnn_export_shrinks_keeps_its_integer_kernels_and_outputs(tmp_path, ort_optimized_ops):
    from slimkit.backends.onnxruntime import export_onnx
    from slimkit.techniques.quantization.ptq import quantize_static

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    q = quantize_static(model, [(torch.rand(32, 1, 8, 8),) for _ in range(2)], weight_max=63)[0]
    example = (torch.rand(1, 1, 8, 8),)
    raw = tmp_path / "raw.onnx"
    torch.onnx.export(q, example, str(raw), dynamo=True)
    path = export_onnx(q, example, tmp_path / "compact.onnx")
    assert path.stat().st_size < 0.7 * raw.stat().st_size
    raw_ops, compact_ops = ort_optimized_ops(raw), ort_optimized_ops(path)
    assert sorted(raw_ops) == sorted(compact_ops) and compact_ops.count("QLinearConv") == 2
    before, after = onnx.load(str(raw)), onnx.load(str(path))
    count = [sum(n.op_type == "QuantizeLinear" for n in m.graph.node) for m in (before, after)]
    assert count[1] < count[0]  # the conv -> conv and linear -> linear re-quantizations are gone
    for x in np.random.default_rng(0).random((5, 1, 1, 8, 8), dtype=np.float32):
        np.testing.assert_array_equal(_run(after, {after.graph.input[0].name: x}),
                                      _run(before, {before.graph.input[0].name: x}))
