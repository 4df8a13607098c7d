"""Sparse variational dropout: the KL approximation, the local reparameterisation's moments, the
threshold at evaluation, and the step removing most weights while the model still classifies."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.recipes.runner import run_recipe
from slimkit.techniques.bayesian.variational_dropout import VariationalConv2d, VariationalLinear
from slimkit.techniques.pruning.sparse import SparseConv2d, SparseLinear

MEASURE = {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False}


def test_kl_approximation_falls_with_log_alpha_to_zero():
    layer = VariationalLinear(nn.Linear(3, 1))
    values = []
    for la in (-10.0, -3.0, 0.0, 3.0, 10.0):
        with torch.no_grad():  # log alpha = log sigma^2 - log theta^2, theta = 1
            layer.weight.fill_(1.0)
            layer.log_sigma2.fill_(la)
        values.append(float(layer.kl().detach()) / 3)
    assert values == sorted(values, reverse=True)
    assert values[0] == pytest.approx(0.5 * torch.log1p(torch.tensor(10.0).exp()).item() + 0.63576 - 0.0, abs=0.02)
    assert abs(values[-1]) < 1e-3  # alpha -> infinity: the posterior is the prior's, no cost


def test_local_reparameterisation_samples_have_the_weight_noise_moments():
    torch.manual_seed(0)
    layer = VariationalLinear(nn.Linear(4, 2), threshold=10.0)
    with torch.no_grad():
        layer.log_sigma2.copy_(torch.log(torch.rand(2, 4) * 0.5))
    x = torch.randn(1, 4).expand(20000, 4)
    samples = layer.train()(x)
    expected_var = (x[:1].square() @ layer.log_sigma2.exp().t()).squeeze(0)
    assert torch.allclose(samples.mean(0), layer.eval()(x[:1]).squeeze(0), atol=0.03)
    assert torch.allclose(samples.var(0), expected_var, rtol=0.05)


def test_evaluation_drops_the_weights_above_the_threshold_and_plain_layers_match():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    layer = VariationalConv2d(conv, threshold=3.0)
    with torch.no_grad():
        layer.log_sigma2[:2] = 5.0  # theta^2 ~ 0.01..0.04: log alpha > 3 for the first two filters
    x = torch.randn(2, 3, 8, 8)
    kept = layer.kept()
    assert not kept[:2].any() and kept[2:].all()
    expected = F.conv2d(x, conv.weight * kept, conv.bias, padding=1)
    assert torch.allclose(layer.eval()(x), expected, atol=1e-6)
    assert torch.allclose(layer.to_plain()(x), expected, atol=1e-6)


def test_step_removes_most_weights_and_the_kl_term_is_what_does_it(tmp_path, rebuild_run_step):
    def run(kl_weight: float, name: str):
        recipe = {"task": "digits-mlp", "seed": 0, "baseline": {"train": {"epochs": 15}}, "measure": MEASURE,
                  "steps": [{"variational_dropout": {"kl_weight": kl_weight, "finetune": {"epochs": 15, "lr": 3e-3}}}]}
        return run_recipe(recipe, tmp_path / name).results["steps"]

    base, sparse = run(1.0, "elbo")
    assert sparse["info"]["sparsity"] >= 0.8
    assert sparse["metrics"]["quality"] >= base["metrics"]["quality"] - 0.05
    assert sparse["metrics"]["size_bytes"] < 0.35 * base["metrics"]["size_bytes"]
    # the control: with a negligible KL weight the rates stay low and hardly anything is removed
    _, weak = run(1e-4, "no-kl")
    assert weak["info"]["sparsity"] < 0.2
    model, quality = rebuild_run_step(tmp_path / "elbo", "digits-mlp", 1, sparse)
    assert sum(isinstance(m, (SparseLinear, SparseConv2d)) for m in model.modules()) >= 2
    assert quality == pytest.approx(sparse["metrics"]["quality"], abs=1e-9)
