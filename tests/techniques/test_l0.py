"""L0 gates: hard-concrete statistics, exact physical removal of closed channels, and the ``l0``
step shrinking a CNN's MACs (channels) or its stored weights (weights)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from slimkit.recipes.runner import run_recipe
from slimkit.techniques.pruning.structured import fixed_width_layers
from slimkit.techniques.sparse_training.l0 import HardConcrete, channel_gates, install_channel_gates, \
    remove_closed_channels_

MEASURE = {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False}


def test_hard_concrete_is_exactly_zero_or_one_with_the_stated_probability():
    gates = HardConcrete(4000, init_keep=0.5)
    with torch.no_grad():
        gates.log_alpha_raw[:2000] = -1.0
        gates.log_alpha_raw[2000:] = 1.5
    z = torch.stack([gates(sample=True) for _ in range(50)])
    nonzero = (z != 0).float().mean(0)
    p = gates.open_probability().detach()
    assert float(nonzero[:2000].mean()) == pytest.approx(float(p[0]), abs=0.01)
    assert float(nonzero[2000:].mean()) == pytest.approx(float(p[-1]), abs=0.01)
    assert ((z == 0) | (z == 1)).float().mean() > 0.3  # the stretched ends: exact zeros and ones
    with torch.no_grad():
        gates.log_alpha_raw.copy_(torch.tensor([-5.0, 5.0]).repeat(2000))
    assert gates(sample=False)[:2].tolist() == [0.0, 1.0]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def test_closed_channels_are_removed_and_the_model_computes_what_the_gated_one_did():
    model = _model()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    x = torch.randn(5, 3, 10, 10)
    inputs = (x[:1],)
    graph, gates = channel_gates(model, inputs, fixed_width_layers(model, inputs), lambda w: HardConcrete(w, 0.9))
    assert len(gates) == 3  # conv0 (gated after its BatchNorm), conv3, linear7; the classifier keeps its width
    sites = {type(s).__name__ for g in gates for s in g.sites}
    assert sites == {"BatchNorm2d", "Conv2d", "Linear"}  # conv0's gate sits after its BatchNorm
    torch.manual_seed(1)
    with torch.no_grad():
        for g in gates:
            g.gates.log_alpha_raw.copy_(torch.randn_like(g.gates.log_alpha_raw) * 3)
    handles = install_channel_gates(gates)
    expected = model(x)
    closed = sum(int((g.gates(sample=False) == 0).sum()) for g in gates)
    for h in handles:
        h.remove()
    removed = remove_closed_channels_(model, graph, gates)
    assert sum(removed.values()) == closed > 0
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert model[0].out_channels + model[3].out_channels + model[7].out_features == 8 + 12 + 16 - closed


def test_l0_channels_step_cuts_macs_keeps_accuracy_and_rebuilds(tmp_path, rebuild_run_step):
    recipe = {"task": "digits-cnn", "seed": 0, "baseline": {"train": {"epochs": 10}}, "measure": MEASURE,
              "steps": [{"l0": {"penalty": 3.0, "finetune": {"epochs": 25}}}]}
    base, gated = run_recipe(recipe, tmp_path / "run").results["steps"]
    assert gated["metrics"]["macs"] < 0.5 * base["metrics"]["macs"]
    assert gated["info"]["macs_after"] == gated["metrics"]["macs"]
    assert gated["metrics"]["quality"] >= base["metrics"]["quality"] - 0.03
    _, quality = rebuild_run_step(tmp_path / "run", "digits-cnn", 1, gated)
    assert quality == pytest.approx(gated["metrics"]["quality"], abs=1e-9)


def test_l0_weights_step_zeros_weights_and_stores_them_sparse(tmp_path, rebuild_run_step):
    recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 10}}, "measure": MEASURE,
              "steps": [{"l0": {"target": "weights", "penalty": 5.0, "finetune": {"epochs": 20}}}]}
    base, gated = run_recipe(recipe, tmp_path / "run").results["steps"]
    assert gated["info"]["sparsity"] >= 0.5
    assert gated["metrics"]["quality"] >= base["metrics"]["quality"] - 0.05
    assert gated["metrics"]["size_bytes"] < 0.7 * base["metrics"]["size_bytes"]
    _, quality = rebuild_run_step(tmp_path / "run", "digits-mlp", 1, gated)
    assert quality == pytest.approx(gated["metrics"]["quality"], abs=1e-9)


def test_closed_heads_are_removed_and_the_encoder_computes_what_the_gated_one_did():
    from transformers import BertConfig, BertModel

    from slimkit.techniques.pruning.structured import find_attention, sync_attention_
    from slimkit.techniques.sparse_training.l0 import HeadGates, head_gates

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=16)
    model = BertModel(config).eval()
    ids = torch.randint(0, 50, (3, 8))
    inputs = (ids[:1],)
    attention = find_attention(model)
    ignore = fixed_width_layers(model, inputs, attention) + [p for a in attention for p in a.projections]
    graph, channels = channel_gates(model, inputs, ignore, lambda w: HardConcrete(w, 0.99))
    heads = head_gates(model, inputs, graph, attention, 0.9)
    assert len(heads) == 2 and all(isinstance(g.gates, HeadGates) for g in heads)
    with torch.no_grad():
        for g in channels:
            g.gates.log_alpha_raw.fill_(10.0)  # FFN neurons stay: this test is about heads
        heads[0].gates.log_alpha_raw.copy_(torch.tensor([-9.0, 0.3, -9.0, 1.0]))  # heads 0, 2 closed, 1 and 3 scaled
        heads[1].gates.log_alpha_raw.fill_(-9.0)  # every head closed: the strongest one is kept (at zero)
        heads[1].gates.log_alpha_raw[2] = -8.0
    gates = channels + heads
    handles = install_channel_gates(gates)
    expected = model(ids).last_hidden_state
    for h in handles:
        h.remove()
    assert not torch.allclose(model(ids).last_hidden_state, expected, atol=1e-3)  # the gates did change the output
    remove_closed_channels_(model, graph, gates)
    assert sync_attention_(attention) == {a.name: n for a, n in zip(attention, (2, 1))}
    assert model.encoder.layer[0].attention.self.query.out_features == 16
    assert model.encoder.layer[0].attention.output.dense.in_features == 16
    assert torch.allclose(model(ids).last_hidden_state, expected, atol=1e-5)
