"""measure_model's API: a mapping config like run_recipe's, and the caller's train/eval mode kept."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from slimkit.core.errors import ConfigError
from slimkit.data.base import DataSplits, Split
from slimkit.measure.model import measure_model

CFG = {"batch_n": 4, "repeats": 3, "warmup": 1, "max_seconds": 1.0, "threads": 1, "memory": False}


def _task():
    split = Split((torch.randn(8, 4),), torch.zeros(8, dtype=torch.long))
    return SimpleNamespace(data=DataSplits(split, split, split), evaluate=lambda out, targets: {"quality": 0.5})


@pytest.mark.parametrize("training", [True, False])
def test_measure_model_takes_a_mapping_and_restores_the_mode(training):
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3)).train(training)
    metrics = measure_model(model, _task(), CFG)
    assert metrics["batch_N"] == 4 and metrics["quality"] == 0.5
    assert model.training is training and model[1].training is training


def test_measure_model_names_a_bad_mapping_field():
    with pytest.raises(ConfigError, match="measure: unknown field 'batchn'"):
        measure_model(nn.Linear(4, 3), _task(), {"batchn": 4})


def test_public_measure_model_takes_a_mapping():
    import slimkit

    task = slimkit.build_task("digits-mlp")
    model = task.build_model().train()
    assert slimkit.measure_model(model, task, CFG)["batch_N"] == 4 and model.training


def test_public_measure_task_takes_a_mapping():
    import slimkit

    metrics = slimkit.measure_task("digits-mlp", CFG, train={"epochs": 1})
    assert metrics["batch_N"] == 4
