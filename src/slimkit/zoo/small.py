"""Small plain networks for the built-in tasks' small inputs (8x8 digits, 32x32 shapes)."""

from __future__ import annotations

import torch.nn as nn

from slimkit.core.registry import MODELS
from slimkit.zoo.blocks import DepthwiseSeparableConv, InvertedResidual, conv_bn_act


@MODELS.register("mlp_digits")
def mlp_digits(num_classes: int = 10, in_features: int = 64, hidden: tuple[int, ...] = (256, 128),
               dropout: float = 0.2) -> nn.Module:
    """An MLP for flattened 8x8 digits (64-256-128-10 by default), dropout after each ReLU."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@MODELS.register("cnn_digits")
def cnn_digits(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    """A small conv-BN-ReLU network for 8x8 digits: 16-32-pool-64-pool, then a 64-unit head."""
    return nn.Sequential(
        conv_bn_act(in_chans, 16),
        conv_bn_act(16, 32),
        nn.MaxPool2d(2),
        conv_bn_act(32, 64),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 2 * 2, 64), nn.ReLU(),
        nn.Linear(64, num_classes),
    )


@MODELS.register("cnn_shapes")
def cnn_shapes(num_classes: int = 10, in_chans: int = 3, width: int = 32) -> nn.Module:
    """A plain standard-convolution baseline for 32x32 RGB: three conv stages and global pooling."""
    return _shapes_net(num_classes, in_chans, (width, 2 * width, 4 * width), (2, 2, 2), separable=False)


@MODELS.register("cnn_shapes_dws")
def cnn_shapes_dws(num_classes: int = 10, in_chans: int = 3, width: int = 32, kernel: int = 3,
                   residual: bool = False, widths: tuple[int, int, int] | None = None,
                   depths: tuple[int, int, int] = (2, 2, 2), dw_act: bool = True) -> nn.Module:
    """``cnn_shapes`` with every 3x3 conv after the stem made depthwise-separable (MobileNetV1's layer).

    ``widths`` sets the three stages' channels (default ``width, 2*width, 4*width``) and ``depths``
    their layer counts (the first stage's first layer is the standard-conv stem). ``kernel`` sets
    the depthwise kernel. ``dw_act=False`` leaves the activation after the depthwise conv out (as
    Xception does). ``residual=True`` turns each width-preserving layer into MobileNetV2's
    unexpanded inverted residual (depthwise -> linear 1x1 projection, plus the input).
    """
    return _shapes_net(num_classes, in_chans, tuple(widths or (width, 2 * width, 4 * width)), tuple(depths),
                       separable=True, kernel=kernel, residual=residual, dw_act=dw_act)


def _shapes_net(num_classes: int, in_chans: int, widths: tuple[int, ...], depths: tuple[int, ...], separable: bool,
                kernel: int = 3, residual: bool = False, dw_act: bool = True) -> nn.Module:
    if len(widths) != 3 or len(depths) != 3 or min(depths) < 1 or min(widths) < 1:
        raise ValueError(f"widths and depths need three positive entries, got {widths} and {depths}")

    def conv(i: int, o: int) -> nn.Module:
        if not separable:
            return conv_bn_act(i, o)
        if residual and i == o:
            return InvertedResidual(i, o, expanded_ch=i, kernel=kernel, act=nn.ReLU)
        block = DepthwiseSeparableConv(i, o, kernel=kernel)
        if not dw_act:
            block.depthwise = block.depthwise[:2]
        return block

    layers: list[nn.Module] = [conv_bn_act(in_chans, widths[0])]
    ch = widths[0]
    for stage, (w, d) in enumerate(zip(widths, depths)):
        if stage > 0:
            layers.append(nn.MaxPool2d(2))
        for _ in range(d - 1 if stage == 0 else d):
            layers.append(conv(ch, w))
            ch = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, num_classes))
