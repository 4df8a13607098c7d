"""ResNet-18 and ResNet-34 (He et al. 2016, BasicBlock), in torchvision's layout.

Parameter counts equal torchvision's (a test checks them). ``small_input=True`` gives the
CIFAR-style stem used for 32x32 inputs (a 3x3 stride-1 conv, no max-pool), so the network
downsamples 8x instead of 32x; the stages are unchanged. ``width`` scales the channels of every
stage (64 is the paper's; 16 gives a ResNet-style network small enough to train on 2 cores).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from slimkit.core.registry import MODELS
from slimkit.zoo.blocks import conv_bn_act


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut (a 1x1 conv-BN projection when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn_act(in_ch, out_ch, 3, stride=stride)
        self.conv2 = conv_bn_act(out_ch, out_ch, 3, act=None)
        self.downsample = (conv_bn_act(in_ch, out_ch, 1, stride=stride, act=None)
                           if stride != 1 or in_ch != out_ch else nn.Identity())
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.downsample(x))


class ResNet(nn.Module):
    """A BasicBlock ResNet: 7x7/2 stem and 3x3/2 max-pool, four stages (64-128-256-512 at width 64),
    pool, FC."""

    def __init__(self, layers: tuple[int, int, int, int] = (2, 2, 2, 2), num_classes: int = 1000,
                 in_chans: int = 3, small_input: bool = False, zero_init_residual: bool = False,
                 width: int = 64) -> None:
        super().__init__()
        if small_input:
            stem: list[nn.Module] = [conv_bn_act(in_chans, width, 3)]
        else:
            stem = [conv_bn_act(in_chans, width, 7, stride=2), nn.MaxPool2d(3, stride=2, padding=1)]
        stages: list[nn.Module] = []
        ch = width
        for i, n in enumerate(layers):
            out = width * 2 ** i
            stages.append(nn.Sequential(*(BasicBlock(ch if j == 0 else out, out, 2 if i > 0 and j == 0 else 1)
                                          for j in range(n))))
            ch = out
        self.features = nn.Sequential(*stem, *stages)
        self.num_features = ch
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each block starts as the identity (Goyal et al. 2017)
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.conv2[1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@MODELS.register("resnet18")
def resnet18(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
             zero_init_residual: bool = False, width: int = 64) -> nn.Module:
    """ResNet-18 (11.7M parameters, 1.81 GMACs at 224; He et al. 2016)."""
    return ResNet((2, 2, 2, 2), num_classes, in_chans, small_input, zero_init_residual, width)


@MODELS.register("resnet34")
def resnet34(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
             zero_init_residual: bool = False, width: int = 64) -> nn.Module:
    """ResNet-34 (21.8M parameters, 3.66 GMACs at 224; He et al. 2016)."""
    return ResNet((3, 4, 6, 3), num_classes, in_chans, small_input, zero_init_residual, width)
