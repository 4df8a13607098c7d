"""Gradient checkpointing with the planner: same gradients, measured memory under the budget."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.errors import ConfigError
from slimkit.data.base import DataSplits, Split
from slimkit.measure.memory import training_step_memory
from slimkit.train.checkpointing import (CheckpointConfig, apply_plan, cheapest_plan, find_segments, make_plan,
                                         plan_within_budget, predicted_bytes, profile_segments, sqrt_plan)
from slimkit.train.config import TrainConfig
from slimkit.train.loop import fit
from slimkit.train.objectives import TaskLoss


class _Block(nn.Module):
    def __init__(self, width, dropout=0.0, norm=False):
        super().__init__()
        self.up, self.down = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.BatchNorm1d(width) if norm else nn.Identity()

    def forward(self, x):
        return self.norm(x + self.drop(self.down(F.gelu(self.up(x)))))


def _mlp(blocks=16, width=32, dropout=0.0, norm=False):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, width), *[_Block(width, dropout, norm) for _ in range(blocks)], nn.Linear(width, 3))


def _loss(out):
    return out.square().mean()


def _grads(model, x):
    torch.manual_seed(1)  # dropout masks
    for p in model.parameters():
        p.grad = None
    _loss(model(x)).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("strategy", ["plan", "sqrt", "all"])
def test_checkpointed_gradients_and_batchnorm_statistics_equal_the_unplanned_ones(strategy):
    model = _mlp(dropout=0.2, norm=True).train()
    x = torch.randn(64, 8)
    reference = copy.deepcopy(model)
    expected = _grads(reference, x)
    segments = find_segments(model)
    assert segments.container == "" and len(segments.names) == 18 and segments.chained
    plan = make_plan(profile_segments(model, segments, (x,)), segments, strategy, 0.25)
    assert plan.checkpointed
    applied = apply_plan(model, segments, plan)
    got = _grads(model, x)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)  # running stats updated once
    applied.remove()
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert list(model.state_dict()) == list(reference.state_dict())


def test_the_plan_keeps_measured_activation_memory_under_a_quarter():
    model = _mlp(blocks=64, width=64).train()
    x = torch.randn(256, 8)
    unplanned = training_step_memory(model, (x,), _loss)
    segments = find_segments(model)
    profile = profile_segments(model, segments, (x,))
    assert profile.total_bytes == pytest.approx(unplanned.activation_bytes, rel=0.25)  # the profile sees what is saved
    fitted = plan_within_budget(model, segments, (x,), "plan", 0.25)
    assert fitted.unplanned_bytes == unplanned.activation_bytes
    assert fitted.planned_bytes <= 0.25 * unplanned.activation_bytes and not fitted.plan.notes
    applied = apply_plan(model, segments, fitted.plan)
    planned = training_step_memory(model, (x,), _loss)  # measured again, independently
    applied.remove()
    assert planned.activation_bytes == fitted.planned_bytes
    assert planned.gradient_bytes == unplanned.gradient_bytes
    assert all(p.grad is not None for p in model.parameters())


def test_the_planner_recomputes_no_more_than_sqrt_at_sqrts_memory():
    model = _mlp(blocks=36, width=32).train()
    # uneven segments: every third block is wide (large activations, cheap to recompute relative to its memory)
    for k in range(1, 37, 3):
        model[k] = nn.Sequential(nn.Linear(32, 256), nn.GELU(), nn.Linear(256, 32))
    x = torch.randn(128, 8)
    segments = find_segments(model)
    profile = profile_segments(model, segments, (x,))
    sqrt = sqrt_plan(profile, chained=True)
    plan = cheapest_plan(profile, sqrt.predicted_bytes, chained=True)
    assert plan.predicted_bytes <= sqrt.predicted_bytes
    assert plan.recompute_seconds <= sqrt.recompute_seconds
    assert predicted_bytes(profile, plan.groups) == plan.predicted_bytes
    covered = [k for a, b, _ in plan.groups for k in range(a, b)]
    assert covered == list(range(len(segments.names)))


def test_module_lists_are_checkpointed_layer_by_layer():
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(_Block(16) for _ in range(6))
            self.head = nn.Linear(16, 2)

        def forward(self, x, scale):
            for layer in self.layers:
                x = layer(x) * scale
            return self.head(x)

    torch.manual_seed(0)
    model = Encoder()
    x = torch.randn(32, 16)
    segments = find_segments(model)
    assert segments.container == "layers" and not segments.chained
    plan = make_plan(profile_segments(model, segments, (x, 0.5)), segments, "plan", 0.4)
    assert all(b - a == 1 for a, b in plan.checkpointed)
    reference = copy.deepcopy(model)
    applied = apply_plan(model, segments, plan)
    for p, q in zip(model.parameters(), reference.parameters()):
        p.grad = q.grad = None
    model(x, 0.5).square().mean().backward()
    reference(x, 0.5).square().mean().backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-6)
    applied.remove()


def test_bad_segment_names_are_clear_errors():
    model = _mlp()
    with pytest.raises(ConfigError, match="no module named"):
        find_segments(model, "encoder.layer")
    with pytest.raises(ConfigError, match="at least two"):
        find_segments(model, ["1"])
    with pytest.raises(ConfigError, match="no Sequential or ModuleList"):
        find_segments(nn.Linear(2, 2))


def test_fit_with_checkpointing_reports_the_plan_and_leaves_the_model_plain():
    model = _mlp(blocks=8)
    x = torch.randn(128, 8)
    y = (x[:, 0] > 0).long()
    data = DataSplits(train=Split((x,), y), val=Split((x,), y), test=Split((x,), y))
    reference = copy.deepcopy(model)
    cfg = TrainConfig(epochs=2, batch_size=32, keep_best=False)
    fit(reference, data, cfg, loss_terms=[TaskLoss(F.cross_entropy)])
    result = fit(model, data, cfg.model_copy(update={"checkpointing": CheckpointConfig(budget=0.5)}),
                 loss_terms=[TaskLoss(F.cross_entropy)])
    summary = result.summary()
    assert summary["checkpointing"]["strategy"] == "plan" and summary["checkpointing"]["checkpointed_groups"]
    plan = summary["checkpointing"]
    assert plan["measured_planned_bytes"] <= 0.5 * plan["measured_unplanned_bytes"] and not plan["notes"]
    assert not any("forward" in m.__dict__ for m in model.modules())
    for p, q in zip(model.parameters(), reference.parameters()):  # same training, same weights
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)


def test_a_transformers_encoder_is_checkpointed_layer_by_layer_with_exact_gradients():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                           intermediate_size=64, vocab_size=50)).train()
    ids = torch.randint(0, 50, (4, 16))
    mask = torch.ones_like(ids)
    reference = copy.deepcopy(model)

    def grads(m):
        torch.manual_seed(1)  # dropout masks
        for p in m.parameters():
            p.grad = None
        m(ids, mask).last_hidden_state.square().mean().backward()
        return [p.grad for p in m.parameters() if p.grad is not None]

    expected = grads(reference)
    segments = find_segments(model)
    assert segments.container == "encoder.layer" and not segments.chained
    fitted = plan_within_budget(model, segments, (ids, mask), "plan", 0.5)
    assert fitted.plan.checkpointed and fitted.planned_bytes <= 0.5 * fitted.unplanned_bytes
    applied = apply_plan(model, segments, fitted.plan)
    for a, b in zip(grads(model), expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    applied.remove()
