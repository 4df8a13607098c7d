"""EfficientNet-B0 and its compound-scaled B1-B3 (Tan & Le 2019), in torchvision's layout.

Scaling as torchvision's ``efficientnet_b0..b3``: channels ``make_divisible(c * width, 8)``,
repeats ``ceil(n * depth)``, (width, depth) = (1.0, 1.0), (1.0, 1.1), (1.1, 1.2), (1.2, 1.4),
a head of 4x the last stage's channels, dropout 0.2/0.2/0.3/0.3 and stochastic depth rising
linearly to 0.2 over the blocks. Parameter counts equal torchvision's (a test checks them).
The native resolutions are 224/240/288/300 (torchvision's crop sizes); any size works.

``small_input=True`` adapts a model to 8x8..32x32 inputs: the stem and the first stride-2
stage run at stride 1, so the network downsamples 8x instead of 32x.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from slimkit.core.errors import ConfigError
from slimkit.core.registry import MODELS
from slimkit.zoo.blocks import InvertedResidual, conv_bn_act, init_weights, make_divisible

# (expansion, kernel, first stride, input channels, output channels, repeats) of B0 (Table 1).
_B0_STAGES = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
              (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


class EfficientNet(nn.Module):
    """EfficientNet (V1): a 3x3 SiLU stem, MBConv stages (SE with 1/4 of the block's input
    channels), a 1x1 head conv, global pool, dropout, FC."""

    def __init__(self, width_mult: float = 1.0, depth_mult: float = 1.0, num_classes: int = 1000,
                 in_chans: int = 3, dropout: float = 0.2, stochastic_depth_prob: float = 0.2,
                 small_input: bool = False) -> None:
        super().__init__()
        if not (width_mult > 0 and depth_mult > 0):
            raise ConfigError(f"width_mult and depth_mult must be positive, got {width_mult}, {depth_mult}")
        if not 0.0 <= stochastic_depth_prob < 1.0:
            raise ConfigError(f"stochastic_depth_prob must be in [0, 1), got {stochastic_depth_prob}")
        stages = [(t, k, s, make_divisible(cin * width_mult), make_divisible(cout * width_mult),
                   int(math.ceil(n * depth_mult))) for t, k, s, cin, cout, n in _B0_STAGES]
        total = sum(n for *_, n in stages)
        stem_stride, first_down = (1, True) if small_input else (2, False)
        layers: list[nn.Module] = [conv_bn_act(in_chans, stages[0][3], 3, stride=stem_stride, act=nn.SiLU)]
        index = 0
        for t, k, s, cin, cout, n in stages:
            if s == 2 and first_down:
                s, first_down = 1, False
            stage: list[nn.Module] = []
            for i in range(n):
                ch = cin if i == 0 else cout
                stage.append(InvertedResidual(
                    ch, cout, expanded_ch=make_divisible(ch * t), stride=s if i == 0 else 1, kernel=k,
                    act=nn.SiLU, se_ch=max(1, ch // 4), se_act=nn.SiLU, se_gate=nn.Sigmoid,
                    drop_path=stochastic_depth_prob * index / total))
                index += 1
            layers.append(nn.Sequential(*stage))
        head = 4 * stages[-1][4]
        layers.append(conv_bn_act(stages[-1][4], head, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.num_features = head
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(head, num_classes))
        init_weights(self, linear_uniform=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@MODELS.register("efficientnet_b0")
def efficientnet_b0(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, depth_mult: float = 1.0,
                    dropout: float = 0.2, stochastic_depth_prob: float = 0.2, small_input: bool = False) -> nn.Module:
    """EfficientNet-B0 (5.29M parameters, 0.39 GMACs at 224; Tan & Le 2019)."""
    return EfficientNet(width_mult, depth_mult, num_classes, in_chans, dropout, stochastic_depth_prob, small_input)


@MODELS.register("efficientnet_b1")
def efficientnet_b1(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, depth_mult: float = 1.1,
                    dropout: float = 0.2, stochastic_depth_prob: float = 0.2, small_input: bool = False) -> nn.Module:
    """EfficientNet-B1 (7.79M parameters, 0.69 GMACs at its native 240; Tan & Le 2019)."""
    return EfficientNet(width_mult, depth_mult, num_classes, in_chans, dropout, stochastic_depth_prob, small_input)


@MODELS.register("efficientnet_b2")
def efficientnet_b2(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.1, depth_mult: float = 1.2,
                    dropout: float = 0.3, stochastic_depth_prob: float = 0.2, small_input: bool = False) -> nn.Module:
    """EfficientNet-B2 (9.11M parameters, 1.09 GMACs at its native 288; Tan & Le 2019)."""
    return EfficientNet(width_mult, depth_mult, num_classes, in_chans, dropout, stochastic_depth_prob, small_input)


@MODELS.register("efficientnet_b3")
def efficientnet_b3(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.2, depth_mult: float = 1.4,
                    dropout: float = 0.3, stochastic_depth_prob: float = 0.2, small_input: bool = False) -> nn.Module:
    """EfficientNet-B3 (12.23M parameters, 1.83 GMACs at its native 300; Tan & Le 2019)."""
    return EfficientNet(width_mult, depth_mult, num_classes, in_chans, dropout, stochastic_depth_prob, small_input)
