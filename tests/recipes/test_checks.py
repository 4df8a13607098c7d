"""What `slimkit validate` checks up front, and the one-line errors a run gives instead of a traceback."""

import textwrap
import uuid

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from slimkit.cli import app
from slimkit.core.errors import ConfigError
from slimkit.core.io import save_state_dict
from slimkit.recipes.schema import load_recipe

runner = CliRunner()
MODULE = """
import numpy as np
import torch.nn as nn

def make_model(hidden=8):
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))

def load_data(top=2):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = np.arange(60) % (top + 1)
    return {"train": (x[:40], y[:40]), "val": (x[40:50], y[40:50]), "test": (x[50:], y[50:])}
"""


def _custom(tmp_path, module_text=MODULE, model="make_model", data="load_data", extra=""):
    name = f"user_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(module_text))
    path = tmp_path / "r.yaml"
    path.write_text(f"task: {{name: custom, model: '{name}:{model}', data: '{name}:{data}', "
                    f"train: {{epochs: 1, batch_size: 8}}}}\nmeasure: {{batch_n: 4, repeats: 3, warmup: 1, threads: 1}}\n{extra}")
    return path


def test_a_custom_module_that_raises_on_import_is_one_line(tmp_path):
    path = _custom(tmp_path, "raise RuntimeError('no GPU driver here')\n")
    with pytest.raises(ConfigError, match=r"importing module 'user_\w+' raised RuntimeError: no GPU driver here"):
        load_recipe(path)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "raised RuntimeError: no GPU driver here" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_custom_model_factory_that_raises_fails_validate(tmp_path):
    path = _custom(tmp_path, MODULE + "\ndef broken():\n    raise ValueError('bad width')\n", model="broken")
    with pytest.raises(ConfigError, match=r"field 'model': user_\w+:broken raised ValueError: bad width"):
        load_recipe(path)


def test_a_custom_factory_must_be_callable(tmp_path):
    path = _custom(tmp_path, MODULE + "\nNOT_A_FUNCTION = 3\n", data="NOT_A_FUNCTION")
    with pytest.raises(ConfigError, match=r"field 'data': 'user_\w+:NOT_A_FUNCTION' is a int, not a function"):
        load_recipe(path)


def test_labels_outside_the_models_classes_fail_before_training(tmp_path):
    from slimkit.recipes.runner import run_recipe

    path = _custom(tmp_path, MODULE.replace("def load_data(top=2)", "def load_data(top=5)"))
    with pytest.raises(ConfigError, match=r"the train split has label 5, but the model has 3 classes \(labels 0 to 2\)"):
        run_recipe(path, tmp_path / "run")


class _Hungry(nn.Module):
    """Runs out of memory at 64 rows or more, as a too large batch would."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        if len(x) >= 64:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.linear(x)


def test_a_batch_that_cannot_fit_is_one_line_before_training():
    from slimkit.data.base import DataSplits, Split
    from slimkit.measure.config import MeasureConfig
    from slimkit.tasks.base import Task
    from slimkit.tasks.context import Context
    from slimkit.train.config import TrainConfig

    split = Split((torch.randn(50, 4),), torch.arange(50) % 3)
    data = DataSplits(split, split, split)
    task = Task(name="t", quality_metric="accuracy", build_model=_Hungry, load_data=lambda: data,
                loss=torch.nn.functional.cross_entropy, baseline_train=None)
    ctx = Context(task=task, measure=MeasureConfig(batch_n=64))
    with pytest.raises(ConfigError, match=r"measure.batch_n = 64: one batch does not fit in cpu memory "
                                          r"\(CUDA out of memory. Tried to allocate 20.00 GiB\)"):
        ctx.preflight(_Hungry(), 8)
    ctx = Context(task=task, measure=MeasureConfig(batch_n=8))
    with pytest.raises(ConfigError, match=r"train batch_size = 64"):
        ctx.preflight(_Hungry(), 64)
    ctx.preflight(_Hungry(), 8)
    ctx.train(_Hungry(), TrainConfig(epochs=1, batch_size=8))


def test_baseline_weights_are_checked_against_the_model(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("task: digits-mlp\nbaseline: {weights: w.safetensors}\n")
    from slimkit.tasks.base import build_task

    model = build_task("digits-mlp").build_model()
    save_state_dict(tmp_path / "w.safetensors", model.state_dict())
    assert load_recipe(path).baseline_weights.name == "w.safetensors"
    state = dict(model.state_dict())
    first = next(iter(state))
    state[first] = torch.zeros(3, 3)
    state["extra.weight"] = torch.zeros(1)
    save_state_dict(tmp_path / "w.safetensors", state)
    with pytest.raises(ConfigError, match=rf"does not fit the model: unexpected \['extra.weight'\]; shape of '{first}' is \(3, 3\)"):
        load_recipe(path)
    (tmp_path / "w.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match=r"baseline field 'weights': .*w.safetensors is not a valid safetensors file"):
        load_recipe(path)


def test_a_deploy_backend_unavailable_here_fails_validate(tmp_path, monkeypatch):
    from slimkit.backends.base import Availability
    from slimkit.core.registry import BACKENDS

    backend = BACKENDS.get("onnxruntime")
    monkeypatch.setattr(backend, "available", classmethod(lambda cls: Availability(False, "no wheel for this CPU")))
    path = tmp_path / "r.yaml"
    path.write_text("task: digits-mlp\nsteps:\n  - deploy: {backend: onnxruntime}\n")
    with pytest.raises(ConfigError, match=r"steps\[0\] 'deploy': backend 'onnxruntime' is not available here: "
                                          r"no wheel for this CPU"):
        load_recipe(path)
