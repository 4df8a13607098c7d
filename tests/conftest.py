import os

import pytest
import torch

# Small models train faster on one thread, and tests must not fight each other for cores.
torch.set_num_threads(1)
os.environ.setdefault("SLIMKIT_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "slimkit"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

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


@pytest.fixture
def rebuild_run_step():
    """A function: (run folder, task name, step index, that step's results entry) -> (the model
    rebuilt from the run's checkpoint as resume does, its test quality)."""

    def rebuild(run_dir, task_name: str, index: int, step: dict):
        import json

        from slimkit.core.step import rebuild_model
        from slimkit.measure.quality import predict
        from slimkit.tasks import build_task

        task = build_task(task_name)
        state = json.loads((run_dir / "run-state.json").read_text())
        structures = [(s["technique"], s.get("structure")) for s in state["steps"][:index + 1]]
        model = rebuild_model(task.build_model, structures, str(run_dir / step["artifact"]))
        return model, task.evaluate(predict(model, task.data.test, 256), task.data.test.targets)["quality"]

    return rebuild
