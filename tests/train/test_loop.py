import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.data.base import DataSplits, Split
from slimkit.train.callbacks import Callback
from slimkit.train.config import TrainConfig
from slimkit.train.loop import fit
from slimkit.train.objectives import TaskLoss


def _toy_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long()  # XOR-like: needs a hidden layer
    split = Split((x,), y)
    return DataSplits(split, split.head(64), split.head(64))


def _model():
    return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))


def test_same_seed_gives_identical_weights():
    data = _toy_data()
    weights = []
    for _ in range(2):
        torch.manual_seed(123)  # model init
        model = _model()
        fit(model, data, TrainConfig(epochs=3, batch_size=16), loss_terms=[TaskLoss(F.cross_entropy)], seed=7)
        weights.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
    torch.manual_seed(123)
    other = _model()
    fit(other, data, TrainConfig(epochs=3, batch_size=16), loss_terms=[TaskLoss(F.cross_entropy)], seed=8)
    assert not torch.equal(weights[0], torch.cat([p.flatten() for p in other.parameters()]))


def test_training_learns_xor():
    data = _toy_data()
    model = _model()
    result = fit(model, data, TrainConfig(epochs=40, batch_size=32, lr=1e-2),
                 loss_terms=[TaskLoss(F.cross_entropy)], seed=0)
    acc = (model(data.test.inputs[0]).argmax(-1) == data.test.targets).float().mean()
    assert acc > 0.9
    assert result.history[-1]["loss"] < result.history[0]["loss"] / 2


def test_loss_terms_are_weighted_and_summed():
    data = _toy_data()
    seen = []

    class L2:
        name, weight = "l2", 0.5

        def __call__(self, batch):
            value = sum((p ** 2).sum() for p in batch.model.parameters())
            seen.append(float(value.detach()))
            return value

    model = _model()
    fit(model, data, TrainConfig(epochs=5, batch_size=64, lr=0.05), loss_terms=[L2()], seed=0)
    assert len(seen) == 20 and seen[-1] < seen[0] / 2  # weights shrink under the L2 term alone


def test_callbacks_see_every_step_and_can_constrain_weights():
    data = _toy_data()
    calls = {"start": 0, "step": 0, "epoch": 0, "end": 0, "backward": 0}

    class ZeroFirstRow(Callback):
        def on_fit_start(self, state):
            calls["start"] += 1

        def after_backward(self, state):
            calls["backward"] += 1

        def on_step_end(self, state):
            calls["step"] += 1
            with torch.no_grad():
                state.model[0].weight[0].zero_()

        def on_epoch_end(self, state):
            calls["epoch"] += 1

        def on_fit_end(self, state):
            calls["end"] += 1

    model = _model()
    fit(model, data, TrainConfig(epochs=2, batch_size=64), loss_terms=[TaskLoss(F.cross_entropy)],
        callbacks=[ZeroFirstRow()], seed=0)
    assert calls == {"start": 1, "step": 8, "epoch": 2, "end": 1, "backward": 8}
    assert torch.count_nonzero(model[0].weight[0]) == 0


def test_keep_best_restores_best_validation_epoch():
    data = _toy_data()
    scores = iter([0.5, 0.9, 0.1])
    best = {}

    def validate(model):
        score = next(scores)
        if score == 0.9:
            best["w"] = model[0].weight.detach().clone()
        return score

    model = _model()
    result = fit(model, data, TrainConfig(epochs=3, batch_size=64), loss_terms=[TaskLoss(F.cross_entropy)],
                 validate=validate, seed=0)
    assert result.best_epoch == 2 and torch.equal(model[0].weight, best["w"])
    assert result.summary()["val_history"] == [0.5, 0.9, 0.1] and result.summary()["best_val_quality"] == 0.9
