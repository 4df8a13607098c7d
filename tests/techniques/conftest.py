import pytest


@pytest.fixture
def ort_optimized_ops(tmp_path):
    """A function: ONNX file -> the op types of the graph ONNX Runtime runs after its
    optimisations (QDQ fusion included), to check what executes on integer kernels."""

    def ops(path) -> list[str]:
        import onnx
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]

    return ops
