"""An isotropic conv network (ConvMixer, Trockman & Kolter 2022): a patch embedding, then ``depth``
equal blocks at one resolution and width, global pooling and a Linear.

Why it is in the zoo: every block costs the same MACs and, after the patch embedding, the
depthwise kernels see the whole (small) feature map within two blocks. So features are coarse
and global from the first block on, which is what early exits need (MSDNet's point: exits on
the fine, local features of a pyramid network's first stages read little), and every block is a
residual of one shape, which is what layer skipping needs.

Departures from the paper's block, both for the efficiency steps:
- the residual spans the whole block, ``y = x + pointwise(depthwise(x))`` (the paper's spans the
  depthwise half only), so a block can be skipped or removed and leave a working network;
- BatchNorm sits before the activation (conv -> BN -> GELU), so fusion folds it into the conv.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from slimkit.core.registry import MODELS
from slimkit.zoo.blocks import conv_bn_act


class MixerBlock(nn.Module):
    """``y = x + pointwise(depthwise(x))``: a ``kernel`` x ``kernel`` depthwise conv mixes space, a 1x1
    conv mixes channels, each followed by BatchNorm and the activation."""

    use_residual = True  # layer skipping's default blocks

    def __init__(self, dim: int, kernel: int = 7, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.depthwise = conv_bn_act(dim, dim, kernel, groups=dim, act=act)
        self.pointwise = conv_bn_act(dim, dim, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pointwise(self.depthwise(x))


@MODELS.register("convmixer")
def convmixer(num_classes: int = 10, in_chans: int = 3, dim: int = 128, depth: int = 8, kernel: int = 7,
              patch: int = 4, act: str = "gelu") -> nn.Sequential:
    """ConvMixer-``dim``/``depth`` as an ``nn.Sequential``: [patch embedding, ``depth`` MixerBlocks,
    pooling, flatten, Linear], so exits and gates can go after any of its children.

    The default (128/8, 7x7 kernels, 4x4 patches) costs about 12M MACs on 32x32 inputs: 8x8 tokens.
    """
    acts = {"gelu": nn.GELU, "relu": nn.ReLU}
    if act not in acts:
        raise ValueError(f"unknown activation {act!r} (known: {', '.join(acts)})")
    if min(dim, depth, kernel, patch) < 1 or kernel % 2 == 0:
        raise ValueError(f"convmixer needs positive dim, depth and patch and an odd kernel, got dim={dim}, "
                         f"depth={depth}, kernel={kernel}, patch={patch}")
    stem = nn.Sequential(nn.Conv2d(in_chans, dim, patch, stride=patch, bias=False), nn.BatchNorm2d(dim), acts[act]())
    blocks = [MixerBlock(dim, kernel, acts[act]) for _ in range(depth)]
    return nn.Sequential(stem, *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(dim, num_classes))
