"""Mixed precision in the one loop: autocast forward, fp32 weights, norms and loss; fp16 loss scaling."""

import pytest
import torch
import torch.nn as nn

from slimkit.core.errors import ConfigError
from slimkit.core.hardware import cpu_has_native_bf16
from slimkit.data.base import DataSplits, Split
from slimkit.train import precision as precision_module
from slimkit.train.config import TrainConfig
from slimkit.train.loop import fit
from slimkit.train.objectives import TaskLoss


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4].sum(1) > 0).long() + 2 * (x[:, 4:8].sum(1) > 0).long()
    split = Split((x,), y)
    return DataSplits(train=split, val=split, test=split)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.LayerNorm(64), nn.ReLU(), nn.Linear(64, 64), nn.BatchNorm1d(64),
                         nn.ReLU(), nn.Linear(64, 4))


def _accuracy(model, data):
    with torch.no_grad():
        return float((model.eval()(*data.test.inputs).argmax(1) == data.test.targets).float().mean())


def test_precisions_a_device_cannot_compute_are_refused_with_the_reason(monkeypatch):
    precision_module.check_training_precision("fp32", "cpu")
    with pytest.raises(ConfigError, match="fp16 trains on CUDA only"):
        precision_module.check_training_precision("fp16", "cpu")
    monkeypatch.setattr("slimkit.core.hardware.cpu_has_native_bf16", lambda: False)
    with pytest.raises(ConfigError, match="natively"):
        precision_module.check_training_precision("bf16", "cpu")
    with pytest.raises(ConfigError, match="fp32"):
        fit(_model(), _data(), TrainConfig(epochs=1, precision="bf16"), loss_terms=[TaskLoss(nn.functional.cross_entropy)])


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16")
def test_bf16_runs_products_in_bf16_and_keeps_weights_norms_and_loss_in_fp32():
    data = _data()
    model = _model()
    seen: dict[str, torch.dtype] = {}
    def record(module, args, out, name):
        if module.training:
            seen.setdefault(name, out.dtype)

    for name, m in model.named_modules():
        if name:
            m.register_forward_hook(lambda mod, a, out, name=name: record(mod, a, out, name))
    losses: list[torch.dtype] = []

    def loss(out, y):
        losses.append(out.dtype)
        return nn.functional.cross_entropy(out, y)

    result = fit(model, data, TrainConfig(epochs=8, batch_size=32, lr=3e-3, precision="bf16"),
                 loss_terms=[TaskLoss(loss)])
    assert seen["0"] == seen["3"] == seen["6"] == torch.bfloat16  # linears compute in bf16
    assert seen["1"] == seen["4"] == torch.float32  # LayerNorm and BatchNorm in fp32
    assert set(losses) == {torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert "forward" not in model[1].__dict__  # the fp32 norm override is gone after the fit
    reference = _model()
    fit(reference, data, TrainConfig(epochs=8, batch_size=32, lr=3e-3), loss_terms=[TaskLoss(nn.functional.cross_entropy)])
    assert _accuracy(model, data) > 0.8 and abs(_accuracy(model, data) - _accuracy(reference, data)) < 0.05
    summary = result.summary()
    assert summary["precision"] == "bf16" and len(summary["epoch_seconds"]) == 8
    assert summary["step_memory"]["peak_bytes"] > 0
    # the bf16 model really differs from the fp32 one (not a no-op)
    assert not torch.allclose(model[0].weight, reference[0].weight)


def test_fp16_loss_scaling_skips_overflowing_steps_and_halves_the_scale(monkeypatch):
    """fp16 trains on CUDA only; its loss-scaling logic is exercised here with CPU autocast."""
    monkeypatch.setattr(precision_module, "check_training_precision", lambda precision, device: None)
    model = nn.Sequential(nn.Linear(16, 4))
    mixed = precision_module.MixedPrecision("fp16", "cpu")
    calls = [0]

    def loss(out, y):
        calls[0] += 1
        # the first step: a finite loss whose scaled gradient (x 65536) overflows fp16 in backward
        return out.sum() * 1e3 if calls[0] == 1 else nn.functional.cross_entropy(out, y)

    before = [p.detach().clone() for p in model.parameters()]
    changed_after_first = []

    class Watch(precision_module.Callback):
        def on_step_end(self, state):
            if state.step == 0:
                changed_after_first.append(any(not torch.equal(a, b) for a, b in zip(before, model.parameters())))

    data = _data(64)
    monkeypatch.setattr(precision_module, "MixedPrecision", lambda p, d: mixed)
    result = fit(model, data, TrainConfig(epochs=1, batch_size=16, precision="fp16", keep_best=False),
                 loss_terms=[TaskLoss(loss)], callbacks=[Watch()])
    assert result.skipped_steps == 1 and changed_after_first == [False]  # the overflowing step changed nothing
    assert mixed.scaler.get_scale() == 2.0 ** 16 / 2  # halved once from GradScaler's initial 65536
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the later steps trained
