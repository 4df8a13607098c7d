"""Bayesian compression: the two KL parts, the local reparameterisation hook's moments, posterior
variances following physical channel removal, the grid's bits, and the step shrinking a CNN's
channels and bytes (with a KL-free control that keeps them) and rebuilding exactly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from slimkit.recipes.runner import run_recipe
from slimkit.techniques.bayesian.compression import (BayesianKL, LogUniformScale, WeightPosterior, install_posteriors,
                                                     layer_bits, round_to_grid, stored_variances)
from slimkit.techniques.pruning.structured import fixed_width_layers
from slimkit.techniques.sharing.codebook import SharedConv2d, SharedLinear
from slimkit.techniques.sparse_training.l0 import channel_gates, remove_closed_channels_

MEASURE = {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False}


def test_weight_kl_is_zero_at_the_prior_and_the_scale_kl_falls_with_noise():
    layer = nn.Linear(5, 3)
    post = WeightPosterior(layer, init_log_sigma2=0.0)
    with torch.no_grad():
        layer.weight.zero_()
    assert float(post.kl().detach()) == pytest.approx(0.0, abs=1e-6)  # N(0, 1) is the prior of an unscaled weight
    with torch.no_grad():
        layer.weight.fill_(0.5)
        post.log_sigma2_raw.fill_(-6.0)
    assert float(post.kl().detach()) == pytest.approx(15 * 0.5 * (math.exp(-6) + 0.25 - 1 + 6), rel=1e-5)
    scale = LogUniformScale(4, init_log_sigma2=-8.0)
    tight = float(scale.kl().detach())
    with torch.no_grad():
        scale.log_sigma2_raw.fill_(2.0)
    assert float(scale.kl().detach()) < 0.05 * tight  # a scale that is all noise costs (almost) nothing
    assert scale.deterministic().detach().tolist() == [0.0] * 4  # and is removed: log alpha 2 > threshold 0


def test_local_reparameterisation_hook_samples_the_weight_noise_moments():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    post = WeightPosterior(conv)
    with torch.no_grad():
        post.log_sigma2_raw.copy_(torch.log(torch.rand_like(conv.weight) * 0.3))
    handle = install_posteriors([post])[0]
    x = torch.randn(1, 2, 5, 5)
    mean = conv.eval()(x)
    samples = conv.train()(x.expand(6000, -1, -1, -1))
    handle.remove()
    expected_var = nn.functional.conv2d(x.square(), post.log_sigma2.exp(), padding=1)
    with torch.no_grad():
        error = (samples.mean(0, keepdim=True) - mean).abs()
        assert torch.all(error <= 4 * (expected_var / 6000).sqrt() + 1e-4)  # the mean within 4 standard errors
        assert torch.allclose(samples.var(0, keepdim=True), expected_var, rtol=0.1, atol=1e-3)
    assert torch.equal(conv.eval()(x), mean)  # no hook left, evaluation never samples


def test_kl_term_trains_the_scales_and_log_variances():
    layer = nn.Linear(4, 3)
    post, scale = WeightPosterior(layer), LogUniformScale(3)
    term = BayesianKL([scale], [post], rows=10)
    assert {id(p) for p in term.trainable_parameters()} == {id(post.log_sigma2_raw), id(scale.mu_raw),
                                                             id(scale.log_sigma2_raw)}
    term(None).backward()
    assert float(post.log_sigma2_raw.grad.max()) < 0  # minimising the KL widens the posteriors
    assert float(scale.log_sigma2_raw.grad.max()) < 0


def _lenet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 3)).eval()


def test_posterior_variances_lose_exactly_the_entries_the_weights_lose():
    model = _lenet()
    inputs = (torch.randn(1, 1, 14, 14),)
    graph, gates = channel_gates(model, inputs, fixed_width_layers(model, inputs), lambda w: LogUniformScale(w),
                                 "params")
    assert len(gates) == 3  # conv0 (after its BatchNorm), conv4 (feeding the flattened Linear), linear7
    with torch.no_grad():
        closing = {id(model[0]): [1, 4], id(model[4]): [0, 3, 7], id(model[7]): [2, 5, 6, 11]}
        for g in gates:
            g.gates.log_sigma2_raw[closing[id(g.root)]] = 5.0  # noise: removed; the others keep mu = 1, folded as is
    layers = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    # each weight's "variance" is its own value: after removal both must still agree entry by entry
    shadows = {id(m): m.weight.detach().clone() for m in layers}
    removed = remove_closed_channels_(model, graph, gates, shadows=shadows)
    assert sorted(removed.values()) == [2, 3, 4]
    assert [tuple(m.weight.shape) for m in layers] == [(4, 1, 3, 3), (5, 4, 3, 3), (8, 80), (3, 8)]
    for m in layers:
        assert torch.equal(shadows[id(m)], m.weight)


def test_stored_variance_folds_the_scale_where_it_sits_on_the_layer():
    layer = nn.Linear(3, 2)
    post = WeightPosterior(layer, init_log_sigma2=math.log(0.01))
    scale = LogUniformScale(2, init_log_sigma2=math.log(0.04))
    with torch.no_grad():
        scale.mu_raw.copy_(torch.tensor([2.0, 0.5]))

    class Gate:  # a ChannelGate's two fields that matter here
        gates, sites = scale, [layer]

    var = stored_variances([post], [Gate()])[id(layer)]
    w2 = layer.weight.detach().square()
    expected = torch.tensor([[4.0], [0.25]]) * 0.01 + 0.04 * w2 + 0.04 * 0.01
    assert torch.allclose(var, expected)
    assert torch.allclose(stored_variances([post], [])[id(layer)], torch.full_like(w2, 0.01))


def test_grid_goes_through_zero_and_its_bits_follow_the_posterior():
    torch.manual_seed(0)
    w = torch.randn(64, 32) * 0.2
    w[:, :8] = 0
    bits = [layer_bits(w, torch.full_like(w, std**2), 1.0, 8) for std in (0.1, 0.025, 0.00625)]
    assert [b.bits for b in bits][:2] == [bits[0].bits, bits[0].bits + 2]  # 4x narrower: 2 more bits
    assert bits[2].bits == 8  # capped at max_bits, the step widened to fit the range
    for b in bits:
        grid, codes = round_to_grid(w, b)
        assert torch.all(grid[codes][:, :8] == 0)  # zero is on the grid
        assert float((grid[codes] - w).abs().max()) <= b.step / 2 + 1e-6
        table, zero_first = round_to_grid(w, b, zero_first=True)
        assert table[0] == 0 and torch.equal(table[zero_first], grid[codes]) and torch.all(zero_first[:, :8] == 0)


def test_step_removes_channels_codes_weights_in_few_bits_and_rebuilds(tmp_path, rebuild_run_step):
    def run(kl_weight: float, name: str):
        recipe = {"task": "digits-cnn", "seed": 0, "baseline": {"train": {"epochs": 10}}, "measure": MEASURE,
                  "steps": [{"bayesian_compression": {"kl_weight": kl_weight, "finetune": {"epochs": 15}}}]}
        return run_recipe(recipe, tmp_path / name).results["steps"]

    base, bc = run(1.0, "elbo")
    info = bc["info"]
    assert bc["metrics"]["quality"] >= base["metrics"]["quality"] - 0.05
    assert sum(info["channels_removed"].values()) >= 10
    assert bc["metrics"]["params"] < 0.9 * base["metrics"]["params"]
    assert bc["metrics"]["size_bytes"] < 0.15 * base["metrics"]["size_bytes"]  # 4-5 bits a weight, fewer weights
    assert all(2 <= b <= 8 for b in info["bits_per_layer"].values())
    assert info["entropy_coded"]["bytes"] < bc["metrics"]["size_bytes"]
    # the control: with a negligible KL the posteriors stay narrow, so channels stay and bits grow
    _, weak = run(1e-4, "no-kl")
    assert weak["metrics"]["params"] > bc["metrics"]["params"]
    assert sum(weak["info"]["bits_per_layer"].values()) > sum(info["bits_per_layer"].values())
    model, quality = rebuild_run_step(tmp_path / "elbo", "digits-cnn", 1, bc)
    assert sum(isinstance(m, (SharedLinear, SharedConv2d)) for m in model.modules()) == len(info["bits_per_layer"])
    assert quality == pytest.approx(bc["metrics"]["quality"], abs=1e-9)
    from slimkit.techniques.sharing.entropy import read_archive

    state = read_archive(next((tmp_path / "elbo").rglob("model.huffman.safetensors")), model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
