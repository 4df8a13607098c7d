"""Random small CNNs for the bit-exactness fuzz check of the C generator (tests and
``benchmarks/tinyml.py --sections fuzz``): every kernel and its options drawn at random (kernel
sizes, strides, padding, dilation, groups and depthwise, ReLU/ReLU6/none, max and average pooling,
residual adds, global pooling or flatten, one or two linear layers), with random weights and
BatchNorm statistics; the callers quantize them (backends do not run techniques)."""

from __future__ import annotations

import random

import torch
import torch.nn as nn


class _Residual(nn.Module):
    def __init__(self, body: nn.Module, relu: bool = False) -> None:
        super().__init__()
        self.body = body
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x + self.body(x)
        return torch.relu(y) if self.relu else y


def _act(rng: random.Random) -> list[nn.Module]:
    return [rng.choice([nn.ReLU(), nn.ReLU6(), nn.Identity()])]


def random_cnn(seed: int, num_classes: int | None = None) -> tuple[nn.Module, tuple[int, int, int]]:
    """A random CNN and its input shape (C, H, W), deterministic in ``seed``."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    c = rng.choice([1, 2, 3])
    h, w = rng.choice([6, 8, 9, 12, 16]), rng.choice([6, 8, 11, 16])
    shape = (c, h, w)
    layers: list[nn.Module] = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["conv", "conv", "depthwise", "residual", "maxpool", "avgpool"])
        if kind == "conv":
            k, d = rng.choice([1, 3, 5]), rng.choice([1, 1, 2])
            s = rng.choice([1, 1, 2]) if min(h, w) > (k - 1) * d + 2 else 1
            p = rng.randint(0, (k - 1) * d // 2 + 1) if k > 1 else 0
            if min(h, w) + 2 * p < (k - 1) * d + 1:
                continue
            out = rng.choice([4, 8, 12, 16])
            g = rng.choice([g for g in (1, 2, 4) if c % g == 0 and out % g == 0])
            layers += [nn.Conv2d(c, out, k, s, p, d, groups=g, bias=rng.random() < 0.7), nn.BatchNorm2d(out),
                       *_act(rng)]
            c, h, w = out, (h + 2 * p - (k - 1) * d - 1) // s + 1, (w + 2 * p - (k - 1) * d - 1) // s + 1
        elif kind == "depthwise":
            k = rng.choice([3, 5])
            s = rng.choice([1, 2]) if min(h, w) > k + 2 else 1
            layers += [nn.Conv2d(c, c, k, s, k // 2, groups=c, bias=False), nn.BatchNorm2d(c), *_act(rng)]
            h, w = (h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1
        elif kind == "residual":
            mid = rng.choice([c, 2 * c, 8])
            body = nn.Sequential(nn.Conv2d(c, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
                                 nn.Conv2d(mid, mid, 3, 1, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                                 nn.Conv2d(mid, c, 1, bias=False), nn.BatchNorm2d(c))
            layers.append(_Residual(body, relu=rng.random() < 0.5))
        elif min(h, w) >= 4:
            k = rng.choice([2, 3])
            if kind == "maxpool":
                p = rng.randint(0, k // 2)
                layers.append(nn.MaxPool2d(k, rng.choice([1, 2, k]), p))
                s = layers[-1].stride
            else:
                s = rng.choice([1, 2, k])
                p = 0
                layers.append(nn.AvgPool2d(k, s))
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    classes = num_classes or rng.choice([3, 10])
    if rng.random() < 0.5:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        features = c
    else:
        layers.append(nn.Flatten())
        features = c * h * w
    if rng.random() < 0.5:
        hidden = rng.choice([8, 16, 32])
        layers += [nn.Linear(features, hidden), *_act(rng), nn.Dropout(0.1)]
        features = hidden
    layers.append(nn.Linear(features, classes))
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return net.eval(), shape
