"""ShuffleNetV2 (Ma et al. 2018) at 0.5x/1.0x/1.5x/2.0x, in torchvision's layout.

Each unit splits the channels (stride 1) or duplicates the input (stride 2), runs a
1x1 -> depthwise 3x3 -> 1x1 branch, concatenates and shuffles the channels of the two
branches. Parameter counts equal torchvision's (a test checks them).

``small_input=True`` adapts a model to 8x8..32x32 inputs: a stride-1 stem without the
max-pool, so the network downsamples 8x instead of 32x.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from slimkit.core.errors import ConfigError
from slimkit.core.registry import MODELS
from slimkit.zoo.blocks import ChannelShuffle, conv_bn_act

# Output channels of the stem, stages 2-4 and conv5 per width (Ma et al. 2018, Table 5).
STAGE_CHANNELS = {0.5: (24, 48, 96, 192, 1024), 1.0: (24, 116, 232, 464, 1024),
                  1.5: (24, 176, 352, 704, 1024), 2.0: (24, 244, 488, 976, 2048)}
STAGE_REPEATS = (4, 8, 4)


class ShuffleUnit(nn.Module):
    """A ShuffleNetV2 unit (Fig. 3c: stride 1, channel split; Fig. 3d: stride 2, both branches)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"shuffle unit stride must be 1 or 2, got {stride}")
        branch = out_ch // 2
        if stride == 1 and in_ch != 2 * branch:
            raise ValueError(f"a stride-1 shuffle unit needs in_ch == out_ch (even), got {in_ch}, {out_ch}")
        self.stride = stride
        if stride == 2:
            self.branch1 = nn.Sequential(
                conv_bn_act(in_ch, in_ch, 3, stride=2, groups=in_ch, act=None),
                conv_bn_act(in_ch, branch, 1),
            )
        self.branch2 = nn.Sequential(
            conv_bn_act(in_ch if stride == 2 else branch, branch, 1),
            conv_bn_act(branch, branch, 3, stride=stride, groups=branch, act=None),
            conv_bn_act(branch, branch, 1),
        )
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch2(x2)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return self.shuffle(out)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2: 3x3 stem, max-pool, three stages of shuffle units, 1x1 conv5, global pool, FC.

    PyTorch's default initialisation, as torchvision's ShuffleNetV2.
    """

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, in_chans: int = 3,
                 small_input: bool = False) -> None:
        super().__init__()
        if width_mult not in STAGE_CHANNELS:
            raise ConfigError(f"ShuffleNetV2 width_mult must be one of {sorted(STAGE_CHANNELS)}, got {width_mult}")
        channels = STAGE_CHANNELS[width_mult]
        stem = channels[0]
        layers: list[nn.Module] = [conv_bn_act(in_chans, stem, 3, stride=1 if small_input else 2)]
        if not small_input:
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        ch = stem
        for repeats, out in zip(STAGE_REPEATS, channels[1:4]):
            units = [ShuffleUnit(ch, out, 2)] + [ShuffleUnit(out, out, 1) for _ in range(repeats - 1)]
            layers.append(nn.Sequential(*units))
            ch = out
        layers.append(conv_bn_act(ch, channels[4], 1))
        self.features = nn.Sequential(*layers)
        self.num_features = channels[4]
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(channels[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@MODELS.register("shufflenet_v2_x0_5")
def shufflenet_v2_x0_5(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 0.5,
                       small_input: bool = False) -> nn.Module:
    """ShuffleNetV2 0.5x (1.37M parameters, 0.04 GMACs at 224; Ma et al. 2018)."""
    return ShuffleNetV2(width_mult, num_classes, in_chans, small_input)


@MODELS.register("shufflenet_v2_x1_0")
def shufflenet_v2_x1_0(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0,
                       small_input: bool = False) -> nn.Module:
    """ShuffleNetV2 1.0x (2.28M parameters, 0.14 GMACs at 224; Ma et al. 2018)."""
    return ShuffleNetV2(width_mult, num_classes, in_chans, small_input)


@MODELS.register("shufflenet_v2_x1_5")
def shufflenet_v2_x1_5(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.5,
                       small_input: bool = False) -> nn.Module:
    """ShuffleNetV2 1.5x (3.50M parameters, 0.30 GMACs at 224; Ma et al. 2018)."""
    return ShuffleNetV2(width_mult, num_classes, in_chans, small_input)


@MODELS.register("shufflenet_v2_x2_0")
def shufflenet_v2_x2_0(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 2.0,
                       small_input: bool = False) -> nn.Module:
    """ShuffleNetV2 2.0x (7.39M parameters, 0.58 GMACs at 224; Ma et al. 2018)."""
    return ShuffleNetV2(width_mult, num_classes, in_chans, small_input)
