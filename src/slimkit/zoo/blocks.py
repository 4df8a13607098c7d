"""Building blocks shared by the zoo's families (and later by NAS search spaces).

One implementation of each block; the families compose them:

- ``conv_bn_act``: conv (no bias) -> BatchNorm -> activation; every family's stems and 1x1 convs.
- ``make_divisible``: the TF/torchvision channel rounding used by every width multiplier.
- ``DepthwiseSeparableConv``: depthwise kxk then pointwise 1x1 (MobileNetV1).
- ``SqueezeExcite``: channel attention (MobileNetV3 with a hard-sigmoid gate, EfficientNet).
- ``InvertedResidual``: expand -> depthwise -> [SE] -> linear projection, with an optional
  residual and stochastic depth (MobileNetV2, MobileNetV3, EfficientNet's MBConv).
- ``channel_shuffle`` / ``ChannelShuffle``: ShuffleNet's channel permutation.
- ``Fire``: SqueezeNet's squeeze 1x1 -> expand 1x1 || expand 3x3 module.
- ``StochasticDepth``: drops a residual branch per sample while training (EfficientNet).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

Act = Callable[[], nn.Module]
Norm = Callable[[int], nn.Module]


def conv_bn_act(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                act: Act | None = nn.ReLU, norm: Norm = nn.BatchNorm2d) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> activation, 'same' padding for odd kernels.

    ``act=None`` leaves the activation out (a linear projection); ``norm`` builds the
    normalisation from the channel count (e.g. ``partial(nn.BatchNorm2d, eps=1e-3)``).
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        norm(out_ch),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of ``divisor``, never more than 10% down.

    The rounding of TF's MobileNet code, which torchvision copies (``_make_divisible``): the
    width multipliers of MobileNetV2/V3 and EfficientNet's compound scaling go through it.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise kxk conv-BN-act then pointwise 1x1 conv-BN-act (MobileNetV1's layer)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, kernel: int = 3,
                 act: Act = nn.ReLU, norm: Norm = nn.BatchNorm2d) -> None:
        super().__init__()
        self.depthwise = conv_bn_act(in_ch, in_ch, kernel, stride=stride, groups=in_ch, act=act, norm=norm)
        self.pointwise = conv_bn_act(in_ch, out_ch, 1, act=act, norm=norm)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global average pool -> 1x1 conv -> act -> 1x1 conv -> gate -> scale.

    The two 1x1 convs carry biases (as in Hu et al. and torchvision's ``SqueezeExcitation``).
    MobileNetV3 gates with ``nn.Hardsigmoid``, EfficientNet with ``nn.Sigmoid`` after ``nn.SiLU``.
    """

    def __init__(self, channels: int, squeeze_channels: int, act: Act = nn.ReLU,
                 gate: Act = nn.Sigmoid) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = self.gate(self.fc2(self.act(self.fc1(scale))))
        return x * scale


class StochasticDepth(nn.Module):
    """Drop the whole residual branch of a sample with probability ``p`` while training.

    Survivors are scaled by ``1 / (1 - p)`` (torchvision's ``StochasticDepth(p, "row")``,
    timm's ``DropPath``); an identity in eval mode or when ``p == 0``.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"stochastic depth probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        return x * keep.bernoulli_(survival).div_(survival)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class InvertedResidual(nn.Module):
    """Inverted residual / MBConv: 1x1 expand -> kxk depthwise -> [SE] -> 1x1 linear projection.

    The expansion is left out when ``expanded_ch == in_ch``; the residual is added when
    ``stride == 1`` and ``in_ch == out_ch`` (through ``StochasticDepth(drop_path)`` if given).
    ``se_ch > 0`` inserts a ``SqueezeExcite(expanded_ch, se_ch, se_act, se_gate)`` after the
    depthwise conv. MobileNetV2: ReLU6, no SE; MobileNetV3: ReLU or hard-swish, SE with a
    hard-sigmoid gate; EfficientNet: SiLU, SE with SiLU and sigmoid, stochastic depth.
    """

    def __init__(self, in_ch: int, out_ch: int, *, expanded_ch: int, stride: int = 1, kernel: int = 3,
                 act: Act = nn.ReLU6, se_ch: int = 0, se_act: Act = nn.ReLU, se_gate: Act = nn.Sigmoid,
                 drop_path: float = 0.0, norm: Norm = nn.BatchNorm2d) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"inverted residual stride must be 1 or 2, got {stride}")
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expanded_ch != in_ch:
            layers.append(conv_bn_act(in_ch, expanded_ch, 1, act=act, norm=norm))
        layers.append(conv_bn_act(expanded_ch, expanded_ch, kernel, stride=stride, groups=expanded_ch,
                                  act=act, norm=norm))
        if se_ch > 0:
            layers.append(SqueezeExcite(expanded_ch, se_ch, act=se_act, gate=se_gate))
        layers.append(conv_bn_act(expanded_ch, out_ch, 1, act=None, norm=norm))
        self.block = nn.Sequential(*layers)
        self.drop_path = StochasticDepth(drop_path) if self.use_residual and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_residual:
            out = self.drop_path(out) + x
        return out


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups: (N, g*c, H, W) -> (N, c*g, H, W)."""
    n, channels, h, w = x.shape
    x = x.reshape(n, groups, channels // groups, h, w).transpose(1, 2)
    return x.reshape(n, channels, h, w)


class ChannelShuffle(nn.Module):
    """``channel_shuffle`` as a module (ShuffleNet), so it shows in the module tree."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class Fire(nn.Module):
    """SqueezeNet's fire module: squeeze 1x1 -> ReLU, then concat(expand 1x1, expand 3x3) -> ReLU.

    Convs carry biases and there is no normalisation, as in Iandola et al. 2016 (and torchvision);
    ``batch_norm=True`` puts a BatchNorm after each conv (each conv becomes ``Sequential(conv, bn)``
    and keeps its bias and shape).
    """

    def __init__(self, in_ch: int, squeeze_ch: int, expand1x1_ch: int, expand3x3_ch: int,
                 batch_norm: bool = False) -> None:
        super().__init__()

        def conv(cin: int, cout: int, k: int) -> nn.Module:
            c = nn.Conv2d(cin, cout, k, padding=k // 2)
            return nn.Sequential(c, nn.BatchNorm2d(cout)) if batch_norm else c

        self.squeeze = conv(in_ch, squeeze_ch, 1)
        self.expand1x1 = conv(squeeze_ch, expand1x1_ch, 1)
        self.expand3x3 = conv(squeeze_ch, expand3x3_ch, 3)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.squeeze(x))
        return torch.cat([self.act(self.expand1x1(x)), self.act(self.expand3x3(x))], dim=1)


def init_weights(model: nn.Module, linear_std: float | None = 0.01, linear_uniform: bool = False) -> None:
    """torchvision's initialisation of its mobile nets: Kaiming-normal (fan-out) convs with zero
    biases, BatchNorm at (1, 0), and Linear layers ``N(0, linear_std)`` (``linear_uniform``:
    ``U(+-1/sqrt(out_features))``, EfficientNet's) with zero biases; ``linear_std=None`` keeps
    PyTorch's default Linear init."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_uniform:
                bound = 1.0 / m.out_features ** 0.5
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)
            elif linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
                nn.init.zeros_(m.bias)
