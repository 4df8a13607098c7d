"""Layer skipping: every gate open is the backbone bit for bit and every gate shut is the model with
those blocks removed bit for bit (MACs too); a closed row computes nothing in its block; the compute
penalty moves the executed share toward its target; the step rebuilds from its recorded structure."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from slimkit.measure.macs import count_macs
from slimkit.techniques.dynamic.skipping import (GatedBlock, SkipNetwork, SkipPenalty, attach_gates, block_macs,
                                                 remove_least_used_, skippable_blocks)
from slimkit.techniques.pruning.blocks import remove_blocks_
from slimkit.train.objectives import Batch
from slimkit.zoo.small import cnn_shapes_dws


def _backbone(width: int = 8):
    torch.manual_seed(0)
    return cnn_shapes_dws(num_classes=5, width=width, residual=True, depths=(3, 2, 2)).eval()


@torch.no_grad()
def _input_dependent_gates_(net: SkipNetwork) -> None:
    """Gates that open for about half of random rows (the sign of a weighted channel mean)."""
    torch.manual_seed(1)
    for b in net.gated():
        b.gate[-1].weight.normal_()
        b.gate[-1].bias.zero_()


def test_residual_blocks_are_found_and_a_named_block_must_keep_its_shape():
    model = _backbone()
    x = torch.randn(2, 3, 32, 32)
    assert list(skippable_blocks(model, (x,))) == ["1", "2", "5", "8"]
    assert list(skippable_blocks(model, (x,), ["5", "2"])) == ["2", "5"]  # execution order
    with pytest.raises(ValueError, match="input's shape"):
        skippable_blocks(model, (x,), ["4"])  # 8 -> 16 channels
    with pytest.raises(ValueError, match="no module named"):
        skippable_blocks(model, (x,), ["nope"])
    with pytest.raises(ValueError, match="no residual blocks"):
        skippable_blocks(nn.Sequential(nn.Linear(4, 4)), (torch.randn(1, 4),))


def test_all_open_is_the_backbone_and_all_shut_the_model_without_those_blocks_bit_for_bit():
    model = _backbone()
    x = torch.randn(16, 3, 32, 32)
    removed = remove_blocks_(copy.deepcopy(model), ["1", "2", "5", "8"])
    with torch.no_grad():
        full, without = model(x), removed(x)
    backbone_macs, removed_macs = count_macs(model, (x[:1],)), count_macs(removed, (x[:1],))
    net = attach_gates(model, (x[:1],)).eval()
    _input_dependent_gates_(net)
    with torch.no_grad():
        net.set_thresholds_(-math.inf)
        assert torch.equal(net(x), full) and bool(net.last_executed.all())
        assert count_macs(net, (x[:1],)) == backbone_macs  # no gate ran either
        net.set_thresholds_(math.inf)
        assert torch.equal(net(x), without) and not bool(net.last_executed.any())
        assert count_macs(net, (x[:1],)) == removed_macs
        assert removed_macs < 0.8 * backbone_macs


def test_closed_rows_compute_nothing_in_the_block_and_open_rows_get_the_block():
    model = _backbone()
    x = torch.randn(64, 3, 32, 32)
    net = attach_gates(model, (x[:1],)).eval()
    _input_dependent_gates_(net)
    seen: dict[str, list[int]] = {}
    for name, b in zip(net.names, net.gated()):
        b.block.register_forward_hook(lambda m, a, o, name=name: seen.setdefault(name, []).append(a[0].shape[0]))
    # what each block receives and computes, with every gate deciding on its own input
    inputs: dict[str, torch.Tensor] = {}
    for name, b in zip(net.names, net.gated()):
        b.register_forward_hook(lambda m, a, o, name=name: inputs.update({name: (a[0], o)}))
    with torch.no_grad():
        net(x)
    ran = net.last_executed
    assert 0 < int(ran.sum()) < ran.numel()  # input-dependent: some rows run a block, some do not
    for k, name in enumerate(net.names):
        assert seen.get(name, []) == ([int(ran[:, k].sum())] if ran[:, k].any() else [])  # only the open rows
        block_in, block_out = inputs[name]
        shut = ~ran[:, k]
        assert torch.equal(block_out[shut], block_in[shut])  # shut rows pass x through untouched
        with torch.no_grad():
            expected = net.gated()[k].block(block_in)
        assert torch.allclose(block_out[~shut], expected[~shut], atol=1e-5)
    # a row that skips: its MACs are those of the blocks it ran, plus the gates
    total, blocks, gates = block_macs(net, (x[:1],))
    for i in range(4):
        with torch.no_grad():
            net(x[i:i + 1])
        ran_i = net.last_executed[0]
        expected = total - sum(m for m, r in zip(blocks.values(), ran_i) if not r)
        assert count_macs(net, (x[i:i + 1],)) == expected


def test_stages_give_the_eager_outputs_and_decisions():
    model = _backbone()
    x = torch.randn(32, 3, 32, 32)
    net = attach_gates(model, (x[:1],)).eval()
    _input_dependent_gates_(net)
    with torch.no_grad():
        eager = net(x)
        ran = net.last_executed.clone()
        bodies, blocks = net.stages()
        assert len(bodies) == len(blocks) + 1 == 5
        staged = net.run_stages(bodies, blocks, (x,))
    assert torch.equal(net.last_executed, ran) and torch.equal(staged, eager)


def test_a_model_that_is_not_a_chain_exports_as_one_graph_with_the_same_outputs():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _backbone()

        def forward(self, x):
            return self.body(x)

    model = Wrapped().eval()
    x = torch.randn(16, 3, 32, 32)
    net = attach_gates(model, (x[:1],)).eval()
    assert net.names == ["body.1", "body.2", "body.5", "body.8"]
    _input_dependent_gates_(net)
    with pytest.raises(ValueError, match="stages need"):
        net.stages()
    with torch.no_grad():
        eager = net(x)
        ran = net.last_executed
        assert 0 < int(ran.sum()) < ran.numel()
        exported = torch.export.export(net, (x,)).module()
        assert torch.allclose(exported(x), eager, atol=1e-5)


def _train(net: SkipNetwork, term: SkipPenalty, x: torch.Tensor, y: torch.Tensor, steps: int = 100) -> None:
    """``steps`` Adam steps on cross-entropy plus the weighted skip penalty (seeded)."""
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(steps):
        out = net(x)
        loss = nn.functional.cross_entropy(out, y) + term.weight * term(Batch(net, (x,), y, out))
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_the_penalty_moves_the_executed_share_toward_the_target():
    def train(penalty: float) -> float:
        model = _backbone(4).train()
        x = torch.randn(64, 3, 32, 32)
        y = torch.randint(0, 5, (64,))
        net = attach_gates(model, (x[:1],)).train()
        total, blocks, gates = block_macs(net, (x[:1],))
        term = SkipPenalty(0.6, float(total - sum(gates.values())), [float(blocks[n]) for n in net.names],
                           weight=penalty)
        _train(net, term, x, y)
        net.eval()
        with torch.no_grad():
            net(x)
        ran = net.last_executed.float().mean(0)
        return 1 - sum(m * (1 - float(r)) for m, r in zip(blocks.values(), ran)) / (total - sum(gates.values()))

    untouched, pulled = train(0.0), train(50.0)
    assert untouched > 0.95  # the gates start open and the task loss alone keeps them so
    assert abs(pulled - 0.6) < 0.15 and pulled < untouched - 0.2


def test_the_per_block_target_pulls_every_gate_to_one_rate():
    model = _backbone(4).train()
    x = torch.randn(64, 3, 32, 32)
    y = torch.randint(0, 5, (64,))
    net = attach_gates(model, (x[:1],)).train()
    total, blocks, gates = block_macs(net, (x[:1],))
    backbone, costs = float(total - sum(gates.values())), [float(blocks[n]) for n in net.names]
    term = SkipPenalty(0.6, backbone, costs, weight=50.0, per_block=True)
    # the rate that meets the MACs target when every gated block runs at it
    assert backbone - (1 - term.block_rate) * sum(costs) == pytest.approx(0.6 * backbone)
    out = net(x)
    rates = [float(b.last_gate.mean()) for b in net.gated()]
    expected = sum((r - term.block_rate) ** 2 for r in rates) / len(rates)
    assert float(term(Batch(net, (x,), y, out))) == pytest.approx(expected, rel=1e-5)
    _train(net, term, x, y)
    with torch.no_grad():  # training-mode rates over a few draws: every gate near the one rate, none shut
        draws = []
        for _ in range(10):
            net(x)
            draws.append([float(b.last_gate.mean()) for b in net.gated()])
    for r in torch.tensor(draws).mean(0).tolist():
        assert abs(r - term.block_rate) < 0.15


def test_stochastic_depth_skips_rows_at_the_rate_and_leaves_the_gates_idle():
    torch.manual_seed(0)
    inner = nn.Conv2d(4, 4, 3, padding=1)
    block = GatedBlock(inner, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))).train()
    block.drop_rate = 0.3
    x = torch.randn(2000, 4, 6, 6)
    out = block(x)
    g = block.last_gate
    assert set(g.unique().tolist()) == {0.0, 1.0} and abs(float(g.mean()) - 0.7) < 0.04
    with torch.no_grad():
        full = inner(x)
    torch.testing.assert_close(out[g == 0], x[g == 0], rtol=0, atol=0)  # skipped rows: the input, untouched
    torch.testing.assert_close(out[g == 1], full[g == 1])
    out.sum().backward()
    assert all(p.grad is None for p in block.gate.parameters())  # the gate takes no part
    block.drop_rate = None  # the gate decides again, and learns
    block(x).sum().backward()
    assert block.gate[-1].bias.grad is not None


def test_a_frozen_backbone_trains_only_the_gates():
    model = _backbone(4).train()
    x = torch.randn(64, 3, 32, 32)
    y = torch.randint(0, 5, (64,))
    net = attach_gates(model, (x[:1],)).freeze_backbone_()
    net.train()
    assert all(not m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    gate_keys = {k for k in net.state_dict() if ".gate." in k}
    before = copy.deepcopy(net.state_dict())
    total, blocks, gates = block_macs(net, (x[:1],))
    term = SkipPenalty(0.6, float(total - sum(gates.values())), [float(blocks[n]) for n in net.names], weight=50.0)
    _train(net, term, x, y, steps=10)
    after = net.state_dict()
    for k, v in before.items():  # weights and BatchNorm running statistics alike
        if k not in gate_keys:
            assert torch.equal(after[k], v), k
    assert any(not torch.equal(after[k], before[k]) for k in gate_keys)
    net.freeze_backbone_(False).train()
    assert all(p.requires_grad for p in net.parameters())
    assert all(m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))


def test_remove_least_used_removes_the_rarest_blocks():
    model = _backbone()
    chosen = remove_least_used_(model, {"1": 0.9, "2": 0.1, "5": 0.5, "8": 0.05}, 2)
    assert chosen == ["8", "2"]
    assert type(model[8]).__name__ == "Skip" and type(model[2]).__name__ == "Skip"
    assert type(model[1]).__name__ == "InvertedResidual"


MEASURE = {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False, "per_row": 16}
TASK = {"name": "digits-cnn", "model": "cnn_shapes_dws", "model_args": {"width": 8, "residual": True,
                                                                        "depths": [3, 2, 2]}}


def test_step_skips_toward_the_target_and_rebuilds_from_its_structure(tmp_path, rebuild_run_step):
    from slimkit.recipes.runner import run_recipe
    from slimkit.tasks.base import build_task

    recipe = {"task": TASK, "seed": 0, "baseline": {"train": {"epochs": 4}}, "measure": MEASURE,
              "steps": [{"layer_skip": {"target_macs": 0.6, "penalty": 50.0, "finetune": {"epochs": 4}}}]}
    res = run_recipe(recipe, tmp_path).results["steps"]
    base, skip = res
    info = skip["info"]
    assert info["blocks"] == ["1", "2", "5", "8"] and info["target_macs"] == 0.6
    assert abs(info["calibration"]["val_macs_share"] - 0.6) < 0.05  # the shared threshold meets the target
    assert info["test"]["macs_share"] < 0.75 and info["test"]["blocks_executed_per_row"] < 3.5
    assert sum(info["test"]["skip_histogram"]) == len(build_task(TASK).data.test)
    assert skip["metrics"]["macs"] < base["metrics"]["macs"]
    net, quality = rebuild_run_step(tmp_path, TASK, 1, skip)
    assert isinstance(net, SkipNetwork) and all(isinstance(b, GatedBlock) for b in net.gated())
    assert quality == pytest.approx(skip["metrics"]["quality"], abs=1e-9)
