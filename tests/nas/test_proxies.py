"""Zero-cost proxies against hand computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from slimkit.nas.proxies import grad_norm, params, synflow


def test_synflow_of_a_linear_chain_is_the_path_sum():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))
    a, b = net[0].weight.detach().abs().double(), net[2].weight.detach().abs().double()
    # R = 1^T |B| |A| 1; theta * dR/dtheta summed over each layer equals R, two layers: 2R
    r = float(torch.ones(2, dtype=torch.float64) @ b @ a @ torch.ones(3, dtype=torch.float64))
    assert synflow(net, torch.randn(5, 3)) == pytest.approx(2 * r, rel=1e-12)
    assert net[0].weight.min() < 0  # the network itself is untouched (a copy was linearised)


def test_grad_norm_matches_autograd_and_params_counts():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    nn.functional.cross_entropy(net(x), y).backward()
    expected = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in net.parameters()))
    net.zero_grad()
    assert grad_norm(net, x, y) == pytest.approx(float(expected), rel=1e-9)
    assert all(p.grad is None or not p.grad.any() for p in net.parameters())  # computed on a copy
    assert params(net) == 3 * 4 + 4 + 4 * 2 + 2


def test_wider_networks_flow_more():
    from slimkit.zoo.arch import build_arch

    torch.manual_seed(0)
    narrow = build_arch({"stages": ["ir_r1_k3_s1_e2_c8"], "stem": 8}, 10, 1)
    torch.manual_seed(0)
    wide = build_arch({"stages": ["ir_r1_k3_s1_e2_c32"], "stem": 8}, 10, 1)
    x = torch.randn(4, 1, 8, 8)
    assert synflow(wide, x) > synflow(narrow, x)
