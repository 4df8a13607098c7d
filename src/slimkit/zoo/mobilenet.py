"""MobileNetV1 (Howard et al. 2017), MobileNetV2 (Sandler et al. 2018), MobileNetV3 (Howard et al. 2019).

Layouts follow the reference implementations: V1 as TF-slim/Keras (conv-bias-free, BN, ReLU6,
a 1024->classes FC with bias: 4,231,976 parameters at width 1.0), V2 and V3 as torchvision
(parameter counts equal to torchvision's at 224x224 and 1000 classes; a test checks them).

``small_input=True`` adapts a model to 8x8..32x32 inputs: the stem conv and the first
stride-2 block run at stride 1, so the network downsamples 8x instead of 32x (a 32x32 image
reaches the head at 4x4). Every model ends with global average pooling, so any input size works.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from slimkit.core.errors import ConfigError
from slimkit.core.registry import MODELS
from slimkit.zoo.arch import V2_SETTING
from slimkit.zoo.blocks import DepthwiseSeparableConv, InvertedResidual, conv_bn_act, init_weights, make_divisible


def _strides(strides: list[int], small_input: bool) -> list[int]:
    """The stem's stride first, then the blocks'; ``small_input`` makes the first two stride-2 steps 1."""
    if not small_input:
        return strides
    out, dropped = [], 0
    for s in strides:
        if s == 2 and dropped < 2:
            s, dropped = 1, dropped + 1
        out.append(s)
    return out


def _check_width(width_mult: float) -> None:
    if not width_mult > 0:
        raise ConfigError(f"width_mult must be positive, got {width_mult}")


# ---------------------------------------------------------------------------------------------
# MobileNetV1


# (output channels, stride) of the 13 depthwise-separable layers (Howard et al. 2017, Table 1).
_V1_LAYERS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


class MobileNetV1(nn.Module):
    """MobileNetV1: a 3x3 conv stem and 13 depthwise-separable layers, global pool, FC.

    Channels are ``make_divisible(c * width_mult, 8)``, TF's ``int(c * width_mult)`` for the
    standard widths 0.25/0.5/0.75/1.0. ``dropout`` before the FC defaults to 0 (Keras: 0.001).
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.0, small_input: bool = False) -> None:
        super().__init__()
        _check_width(width_mult)
        strides = _strides([2] + [s for _, s in _V1_LAYERS], small_input)
        ch = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [conv_bn_act(in_chans, ch, 3, stride=strides[0], act=nn.ReLU6)]
        for (out, _), stride in zip(_V1_LAYERS, strides[1:]):
            out = make_divisible(out * width_mult)
            layers.append(DepthwiseSeparableConv(ch, out, stride=stride, act=nn.ReLU6))
            ch = out
        self.features = nn.Sequential(*layers)
        self.num_features = ch
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(ch, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@MODELS.register("mobilenetv1_025")
def mobilenetv1_025(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 0.25,
                    dropout: float = 0.0, small_input: bool = False) -> nn.Module:
    """MobileNetV1 0.25 (0.47M parameters, 41M MACs at 224; Howard et al. 2017)."""
    return MobileNetV1(num_classes, in_chans, width_mult, dropout, small_input)


@MODELS.register("mobilenetv1_050")
def mobilenetv1_050(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 0.5,
                    dropout: float = 0.0, small_input: bool = False) -> nn.Module:
    """MobileNetV1 0.5 (1.33M parameters, 149M MACs at 224; Howard et al. 2017)."""
    return MobileNetV1(num_classes, in_chans, width_mult, dropout, small_input)


@MODELS.register("mobilenetv1_075")
def mobilenetv1_075(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 0.75,
                    dropout: float = 0.0, small_input: bool = False) -> nn.Module:
    """MobileNetV1 0.75 (2.59M parameters, 325M MACs at 224; Howard et al. 2017)."""
    return MobileNetV1(num_classes, in_chans, width_mult, dropout, small_input)


@MODELS.register("mobilenetv1_100")
def mobilenetv1_100(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0,
                    dropout: float = 0.0, small_input: bool = False) -> nn.Module:
    """MobileNetV1 1.0 (4.23M parameters, 569M MACs at 224; Howard et al. 2017)."""
    return MobileNetV1(num_classes, in_chans, width_mult, dropout, small_input)


# ---------------------------------------------------------------------------------------------
# MobileNetV2


_V2_SETTING = V2_SETTING  # (expansion t, output channels c, repeats n, first stride s): zoo/arch.py


class MobileNetV2(nn.Module):
    """MobileNetV2: inverted residuals with linear bottlenecks (torchvision's layout).

    Channels are ``make_divisible(c * width_mult, 8)``; the 1280-channel head is widened for
    ``width_mult > 1`` and never narrowed, as in the paper and torchvision.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.2, small_input: bool = False) -> None:
        super().__init__()
        _check_width(width_mult)
        block_strides = [s if i == 0 else 1 for _, _, n, s in _V2_SETTING for i in range(n)]
        strides = _strides([2] + block_strides, small_input)
        ch = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [conv_bn_act(in_chans, ch, 3, stride=strides[0], act=nn.ReLU6)]
        k = 1
        for t, c, n, _ in _V2_SETTING:
            out = make_divisible(c * width_mult)
            for _ in range(n):
                layers.append(InvertedResidual(ch, out, expanded_ch=int(round(ch * t)), stride=strides[k],
                                               act=nn.ReLU6))
                ch, k = out, k + 1
        last = make_divisible(1280 * max(1.0, width_mult))
        layers.append(conv_bn_act(ch, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.num_features = last
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@MODELS.register("mobilenetv2_035")
def mobilenetv2_035(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 0.35,
                    dropout: float = 0.2, small_input: bool = False) -> nn.Module:
    """MobileNetV2 0.35 (1.68M parameters, 59M MACs at 224; Sandler et al. 2018)."""
    return MobileNetV2(num_classes, in_chans, width_mult, dropout, small_input)


@MODELS.register("mobilenetv2_050")
def mobilenetv2_050(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 0.5,
                    dropout: float = 0.2, small_input: bool = False) -> nn.Module:
    """MobileNetV2 0.5 (1.97M parameters, 97M MACs at 224; Sandler et al. 2018)."""
    return MobileNetV2(num_classes, in_chans, width_mult, dropout, small_input)


@MODELS.register("mobilenetv2_075")
def mobilenetv2_075(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 0.75,
                    dropout: float = 0.2, small_input: bool = False) -> nn.Module:
    """MobileNetV2 0.75 (2.64M parameters, 209M MACs at 224; Sandler et al. 2018)."""
    return MobileNetV2(num_classes, in_chans, width_mult, dropout, small_input)


@MODELS.register("mobilenetv2_100")
def mobilenetv2_100(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0,
                    dropout: float = 0.2, small_input: bool = False) -> nn.Module:
    """MobileNetV2 1.0 (3.50M parameters, 301M MACs at 224; Sandler et al. 2018)."""
    return MobileNetV2(num_classes, in_chans, width_mult, dropout, small_input)


@MODELS.register("mobilenetv2_140")
def mobilenetv2_140(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.4,
                    dropout: float = 0.2, small_input: bool = False) -> nn.Module:
    """MobileNetV2 1.4 (6.11M parameters, 582M MACs at 224; Sandler et al. 2018)."""
    return MobileNetV2(num_classes, in_chans, width_mult, dropout, small_input)


# ---------------------------------------------------------------------------------------------
# MobileNetV3


# (kernel, expanded channels, output channels, SE, activation, stride) (Howard et al. 2019,
# Tables 1 and 2); the input channels of each row are the previous row's output (16 at first).
_V3_SETTINGS = {
    "large": [
        (3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
        (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
        (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
        (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
        (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1),
    ],
    "small": [
        (3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
        (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
        (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
        (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1),
    ],
}
_V3_HEAD = {"large": 1280, "small": 1024}


class MobileNetV3(nn.Module):
    """MobileNetV3 small or large: inverted residuals with SE (hard-sigmoid gate) and hard-swish.

    torchvision's layout: BatchNorm eps 1e-3 / momentum 0.01, SE squeeze channels
    ``make_divisible(expanded // 4, 8)``, a 6x-wide 1x1 conv, then Linear -> hard-swish ->
    dropout -> Linear; every channel count, the head's included, is scaled by ``width_mult``.
    """

    def __init__(self, arch: str = "large", num_classes: int = 1000, in_chans: int = 3,
                 width_mult: float = 1.0, dropout: float = 0.2, small_input: bool = False) -> None:
        super().__init__()
        if arch not in _V3_SETTINGS:
            raise ConfigError(f"MobileNetV3 arch must be one of {sorted(_V3_SETTINGS)}, got {arch!r}")
        _check_width(width_mult)
        setting = _V3_SETTINGS[arch]
        norm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)
        strides = _strides([2] + [row[-1] for row in setting], small_input)
        ch = make_divisible(16 * width_mult)
        layers: list[nn.Module] = [conv_bn_act(in_chans, ch, 3, stride=strides[0], act=nn.Hardswish, norm=norm)]
        for (kernel, exp, out, se, act, _), stride in zip(setting, strides[1:]):
            exp, out = make_divisible(exp * width_mult), make_divisible(out * width_mult)
            layers.append(InvertedResidual(
                ch, out, expanded_ch=exp, stride=stride, kernel=kernel,
                act=nn.Hardswish if act == "HS" else nn.ReLU,
                se_ch=make_divisible(exp // 4) if se else 0, se_act=nn.ReLU, se_gate=nn.Hardsigmoid, norm=norm))
            ch = out
        layers.append(conv_bn_act(ch, 6 * ch, 1, act=nn.Hardswish, norm=norm))
        self.features = nn.Sequential(*layers)
        head = make_divisible(_V3_HEAD[arch] * width_mult)
        self.num_features = head
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(6 * ch, head), nn.Hardswish(), nn.Dropout(dropout),
                                        nn.Linear(head, num_classes))
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@MODELS.register("mobilenetv3_small_075")
def mobilenetv3_small_075(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 0.75,
                          dropout: float = 0.2, small_input: bool = False) -> nn.Module:
    """MobileNetV3-Small 0.75 (1.65M parameters, 39M MACs at 224; Howard et al. 2019)."""
    return MobileNetV3("small", num_classes, in_chans, width_mult, dropout, small_input)


@MODELS.register("mobilenetv3_small_100")
def mobilenetv3_small_100(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0,
                          dropout: float = 0.2, small_input: bool = False) -> nn.Module:
    """MobileNetV3-Small 1.0 (2.54M parameters, 57M MACs at 224; Howard et al. 2019)."""
    return MobileNetV3("small", num_classes, in_chans, width_mult, dropout, small_input)


@MODELS.register("mobilenetv3_large_075")
def mobilenetv3_large_075(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 0.75,
                          dropout: float = 0.2, small_input: bool = False) -> nn.Module:
    """MobileNetV3-Large 0.75 (3.38M parameters, 140M MACs at 224; Howard et al. 2019)."""
    return MobileNetV3("large", num_classes, in_chans, width_mult, dropout, small_input)


@MODELS.register("mobilenetv3_large_100")
def mobilenetv3_large_100(num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0,
                          dropout: float = 0.2, small_input: bool = False) -> nn.Module:
    """MobileNetV3-Large 1.0 (5.48M parameters, 217M MACs at 224; Howard et al. 2019)."""
    return MobileNetV3("large", num_classes, in_chans, width_mult, dropout, small_input)
