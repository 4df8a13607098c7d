"""SqueezeNet 1.0 (Iandola et al. 2016) and 1.1 (the SqueezeNet repo's cheaper revision).

torchvision's layout: fire modules without normalisation, a dropout -> 1x1 conv -> ReLU ->
global-average-pool classifier. Parameter counts equal torchvision's (a test checks them).

``small_input=True`` adapts a model to 8x8..32x32 inputs: a 3x3 stride-1 stem (padding 1,
same channels) and no first max-pool, so the network downsamples 4x instead of 16x.

``batch_norm=True`` is the variant that trains at a plain Adam budget: BatchNorm after the stem
and every fire-module conv, and no ReLU on the logits (a ReLU there clamps logits at 0, and a
class whose logits die stops learning). At the ``shapes-cnn`` budget (15 epochs, Adam 2e-3) the
original network stayed at chance (0.08) and this variant reached 0.954
(``benchmarks/zoo_shapes.py``; the original was designed for the paper's long SGD schedule).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from slimkit.core.errors import ConfigError
from slimkit.core.registry import MODELS
from slimkit.zoo.blocks import Fire

# Stem (channels, kernel, stride), then the feature layers: "M" a max-pool, a tuple a Fire
# module's (squeeze, expand 1x1, expand 3x3) channels.
_VERSIONS = {
    "1_0": ((96, 7, 2), ["M", (16, 64, 64), (16, 64, 64), (32, 128, 128), "M", (32, 128, 128),
                         (48, 192, 192), (48, 192, 192), (64, 256, 256), "M", (64, 256, 256)]),
    "1_1": ((64, 3, 2), ["M", (16, 64, 64), (16, 64, 64), "M", (32, 128, 128), (32, 128, 128),
                         "M", (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256)]),
}


class SqueezeNet(nn.Module):
    """SqueezeNet: a conv stem, fire modules between ceil-mode 3x3/2 max-pools, a conv classifier."""

    def __init__(self, version: str = "1_0", num_classes: int = 1000, in_chans: int = 3,
                 dropout: float = 0.5, small_input: bool = False, batch_norm: bool = False) -> None:
        super().__init__()
        if version not in _VERSIONS:
            raise ConfigError(f"SqueezeNet version must be one of {sorted(_VERSIONS)}, got {version!r}")
        (stem, kernel, stride), plan = _VERSIONS[version]
        if small_input:
            kernel, stride, plan = 3, 1, plan[1:]  # the plan starts with the stem's max-pool
        layers: list[nn.Module] = [nn.Conv2d(in_chans, stem, kernel, stride=stride, padding=1 if small_input else 0),
                                   *([nn.BatchNorm2d(stem)] if batch_norm else []), nn.ReLU()]
        ch = stem
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(3, stride=2, ceil_mode=True))
            else:
                layers.append(Fire(ch, *item, batch_norm=batch_norm))
                ch = item[1] + item[2]
        self.features = nn.Sequential(*layers)
        final_conv = nn.Conv2d(ch, num_classes, 1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), final_conv, nn.Identity() if batch_norm else nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@MODELS.register("squeezenet1_0")
def squeezenet1_0(num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5,
                  small_input: bool = False, batch_norm: bool = False) -> nn.Module:
    """SqueezeNet 1.0 (1.25M parameters, 0.82 GMACs at 224; Iandola et al. 2016)."""
    return SqueezeNet("1_0", num_classes, in_chans, dropout, small_input, batch_norm)


@MODELS.register("squeezenet1_1")
def squeezenet1_1(num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5,
                  small_input: bool = False, batch_norm: bool = False) -> nn.Module:
    """SqueezeNet 1.1 (1.24M parameters, 0.35 GMACs at 224; 2.4x cheaper than 1.0)."""
    return SqueezeNet("1_1", num_classes, in_chans, dropout, small_input, batch_norm)
