"""slimkit's training-time techniques driven from a hand-written PyTorch loop."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import slimkit.api as sk
from slimkit.core.errors import ConfigError
from slimkit.encoding import is_encoded
from slimkit.techniques.quantization.modules import QuantConv2d, QuantLinear



def _loader(split, shuffle: bool = False) -> DataLoader:
    return DataLoader(TensorDataset(*split.inputs, split.targets), batch_size=32, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(0))


def _accuracy(model, split) -> float:
    with torch.no_grad():
        return float((model.eval()(split.inputs[0]).argmax(-1) == split.targets).float().mean())


def test_gradual_pruning_in_a_plain_loop(trained, tmp_path):
    task, base = trained
    model = copy.deepcopy(base).train()
    loader = _loader(task.data.train, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    epochs = 3
    hooks = sk.prune_hooks(model, optimizer, total_steps=epochs * len(loader), sparsity=0.8, schedule="cubic")
    seen = []
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            hooks.after_backward()
            optimizer.step()
            hooks.after_step()
        seen.append(hooks.callbacks[0].current)
        hooks.end_epoch()
    pruned = hooks.finish()
    assert seen[0] < seen[-1] <= 0.8 + 1e-9  # the schedule raised sparsity as the loop ran
    (entry,) = sk.history(pruned)
    assert entry["technique"] == "prune" and entry["info"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert is_encoded(pruned, ("sparse",))
    test = task.data.test
    assert _accuracy(pruned, test) >= _accuracy(base, test) - 0.05
    loaded = sk.load(sk.save(pruned, tmp_path / "p.safetensors"), task.build_model)
    with torch.no_grad():
        assert torch.equal(loaded(test.inputs[0][:16]), pruned.eval()(test.inputs[0][:16]))
    with pytest.raises(RuntimeError, match="finished"):
        hooks.after_step()
    with pytest.raises(ConfigError, match="finetune"):
        sk.prune_hooks(model, optimizer, total_steps=10, sparsity=0.5, finetune={"epochs": 1})


def test_qat_in_a_plain_loop_converts_to_the_steps_layers(trained):
    task, base = trained
    qmodel = sk.prepare_qat(base, _loader(task.data.train), weight_bits=4, calibration_samples=128)
    trainable = [n for n, p in qmodel.named_parameters() if p.requires_grad]
    assert any(n.endswith(".step") for n in trainable)  # LSQ step sizes learn too
    optimizer = torch.optim.Adam(qmodel.parameters(), lr=1e-3)
    qmodel.train()
    for x, y in _loader(task.data.train, shuffle=True):
        optimizer.zero_grad()
        F.cross_entropy(qmodel(x), y).backward()
        optimizer.step()
    q = sk.convert_qat(qmodel)
    layers = [n for n, m in q.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    by_step = sk.qat(base, task.data.train, val_data=task.data.val, weight_bits=4, calibration_samples=128,
                     finetune={"epochs": 1})
    assert layers == [n for n, m in by_step.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert sk.history(q)[0]["technique"] == "qat" and sk.history(q)[0]["info"]["weight_bits"] == 4
    assert _accuracy(q, task.data.test) >= _accuracy(base, task.data.test) - 0.1
    with pytest.raises(ConfigError, match="did not come from slimkit.prepare_qat"):
        sk.convert_qat(base)


def test_distillation_loss_in_a_plain_loop(trained):
    task, teacher = trained
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    kd = sk.distill_loss(student, teacher, task.data.train.inputs[0][:2], logits={"temperature": 2.0})
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    first = last = None
    for epoch in range(4):
        total = 0.0
        for x, y in _loader(task.data.train, shuffle=True):
            optimizer.zero_grad()
            out = student(x)
            soft = kd(x, out)
            (F.cross_entropy(out, y) + soft).backward()
            optimizer.step()
            total += float(soft.detach())
        first = total if first is None else first
        last = total
    assert last < first  # the student moves toward the teacher's soft targets
    assert not any(p.requires_grad for p in teacher.parameters())  # the teacher is frozen
    agree = (student(task.data.test.inputs[0]).argmax(-1) == teacher(task.data.test.inputs[0]).argmax(-1))
    assert float(agree.float().mean()) > 0.7
