"""Models whose cost depends on the input are measured over real test rows, one at a time."""

from types import SimpleNamespace

import torch
import torch.nn as nn

from slimkit.data.base import DataSplits, Split
from slimkit.measure.config import MeasureConfig
from slimkit.measure.macs import count_macs
from slimkit.measure.model import measure_model

EARLY, FULL = 4 * 8 + 8 * 3, 4 * 8 + 8 * 8 + 8 * 3  # MACs of the early exit and of the whole net


class EarlyExit(nn.Module):
    """Returns after the first layer when every row's first feature is positive."""

    input_dependent_cost = True

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(4, 8), nn.Linear(8, 8)
        self.exit_head, self.head = nn.Linear(8, 3), nn.Linear(8, 3)
        self.seen: list[float] = []

    def forward(self, x):
        self.seen += x[:, 1].tolist()
        h = torch.relu(self.first(x))
        if bool((x[:, 0] > 0).all()):
            return self.exit_head(h)
        return self.head(torch.relu(self.second(h)))


def _task(positive_rows, n=12):
    x = torch.randn(n, 4).abs()
    x[:, 1] = torch.arange(n, dtype=torch.float32)  # row ids, to see which rows ran
    negative = torch.ones(n, dtype=torch.bool)
    negative[positive_rows] = False
    x[negative, 0] *= -1
    split = Split((x,), torch.zeros(n, dtype=torch.long))
    return SimpleNamespace(data=DataSplits(split, split, split), evaluate=lambda out, targets: {"quality": 0.0})


CFG = MeasureConfig(per_row=8, batch_n=4, repeats=3, warmup=1, max_seconds=1.0, threads=1, memory=False)


def test_input_dependent_macs_and_latency_are_averaged_over_rows():
    # 8 of 12 rows, spread evenly: 0 2 3 5 6 8 9 11; rows 0, 2 and 5 exit early, the other five run fully
    model, task = EarlyExit(), _task(positive_rows=[0, 2, 5])
    metrics = measure_model(model, task, CFG)
    mean = (3 * EARLY + 5 * FULL) / 8
    assert EARLY < mean < FULL
    assert metrics["macs_per_row"] == {"mean": mean, "min": EARLY, "max": FULL, "rows": 8}
    assert metrics["macs"] == round(mean)
    assert metrics["latency_b1"]["rows"] == 8 and metrics["latency_b1"]["batch_size"] == 1
    assert metrics["latency_b1"]["repeats"] == 8 * 3 and metrics["latency_ms_b1"] == metrics["latency_b1"]["median_ms"]
    ids = torch.tensor(model.seen)
    assert all(int((ids == row).sum()) >= 3 for row in (0, 2, 3, 5, 6, 8, 9, 11))  # every measured row was timed


def test_ordinary_models_keep_the_row_zero_measurement():
    model, task = EarlyExit(), _task(positive_rows=[0, 2, 5])
    model.input_dependent_cost = False
    metrics = measure_model(model, task, CFG)
    assert metrics["macs"] == count_macs(model, (task.data.test.inputs[0][:1],)) == EARLY
    assert "macs_per_row" not in metrics and "rows" not in metrics["latency_b1"]
