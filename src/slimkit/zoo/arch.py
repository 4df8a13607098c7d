"""Networks as data: an architecture spec (stages of one block type each) and its builder, as
timm's ``decode_arch_def`` has it, so that search spaces are declared over specs and the network a
search chose is rebuilt from its record.

A stage is ``StageSpec(block, depth, out, stride, kernel, expand, se, act)`` or its string
``"ir_r2_k3_s2_e6_c24"`` (timm's notation: block type, then ``r`` repeats, ``k`` kernel, ``s``
stride of the first block, ``e`` expansion, ``c`` output channels, ``se`` squeeze-excite ratio,
and an activation name: ``relu``, ``relu6``, ``hswish``, ``silu``). Block types, all from
``zoo/blocks.py``:

- ``ir``: inverted residual / MBConv (expand 1x1, depthwise kxk, optional SE, linear 1x1; the
  residual where shape allows), MobileNetV2/V3, EfficientNet.
- ``ds``: depthwise-separable conv (MobileNetV1).
- ``shuffle``: ShuffleNetV2's unit (its 3x3 depthwise; a stride-1 unit keeps its width).
- ``fire``: SqueezeNet's fire module with BatchNorm (squeeze ``out/8``, expands ``out/2`` each);
  stride 2 is a 2x2 max-pool before it.
- ``conv``: conv-BN-activation.

``ArchSpec`` adds the stem, the head conv and the classifier; ``ArchNet`` names its parts
``features`` / ``pool`` / ``classifier`` as the zoo's MobileNetV2 does, so ``mobilenetv2_spec()``
builds a network whose state dict loads into ``mobilenetv2_100`` and back (a test checks the
outputs agree). ``scale_spec`` applies width and depth multipliers (EfficientNet's compound
scaling rounds as it does).
"""

from __future__ import annotations

import math
import re
from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field, field_validator, model_validator

from slimkit.core.config import Config
from slimkit.core.errors import ConfigError
from slimkit.core.registry import MODELS
from slimkit.zoo.blocks import DepthwiseSeparableConv, Fire, InvertedResidual, conv_bn_act, init_weights, make_divisible

BlockType = Literal["ir", "ds", "shuffle", "fire", "conv"]
ActName = Literal["relu", "relu6", "hswish", "silu"]
ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish, "silu": nn.SiLU}


class StageSpec(Config):
    block: BlockType = Field(description="block type: ir, ds, shuffle, fire, conv")
    depth: int = Field(ge=1, description="blocks in the stage")
    out: int = Field(ge=1, description="output channels")
    stride: Literal[1, 2] = Field(1, description="stride of the stage's first block")
    kernel: Literal[1, 3, 5, 7] = Field(3, description="depthwise (or conv) kernel")
    expand: float = Field(1.0, ge=1.0, description="ir: expansion of the block's input channels")
    se: float = Field(0.0, ge=0.0, lt=1.0, description="ir: squeeze-excite channels as a share of the block's input "
                                                         "(0: none)")
    act: ActName = Field("relu6", description="activation")

    @model_validator(mode="after")
    def _fits_block(self) -> "StageSpec":
        if self.block != "ir" and (self.expand != 1.0 or self.se):
            raise ValueError(f"expand and se apply to 'ir' blocks only, not {self.block!r}")
        if self.block == "shuffle" and (self.out % 2 or self.kernel != 3):
            raise ValueError("a shuffle stage needs even output channels and kernel 3")
        if self.block == "fire" and self.out < 16:
            raise ValueError("a fire stage needs at least 16 output channels (squeeze = out / 8)")
        return self

    def to_string(self) -> str:
        """timm-style notation, ``ir_r2_k3_s2_e6_c24[_se0.25]_relu6``."""
        e = f"_e{self.expand:g}" if self.block == "ir" else ""
        se = f"_se{self.se:g}" if self.se else ""
        return f"{self.block}_r{self.depth}_k{self.kernel}_s{self.stride}{e}_c{self.out}{se}_{self.act}"


_TOKEN = re.compile(r"^(r|k|s|e|c|se)(\d+(?:\.\d+)?)$")
_KEYS = {"r": "depth", "k": "kernel", "s": "stride", "e": "expand", "c": "out", "se": "se"}


def parse_stage(text: str) -> StageSpec:
    """``"ir_r2_k3_s2_e6_c24_se0.25_relu6"`` -> ``StageSpec``; a bad token is named."""
    block, *tokens = text.strip().split("_")
    fields: dict[str, object] = {"block": block}
    for tok in tokens:
        if tok in ACTS:
            fields["act"] = tok
            continue
        m = _TOKEN.match(tok)
        if not m:
            raise ConfigError(f"stage {text!r}: cannot read {tok!r} (r<depth> k<kernel> s<stride> e<expand> c<channels> "
                              f"se<ratio> or an activation: {', '.join(ACTS)})")
        key, value = _KEYS[m.group(1)], m.group(2)
        fields[key] = float(value) if key in ("expand", "se") else int(float(value))
    try:
        return StageSpec(**fields)
    except ValueError as err:
        raise ConfigError(f"stage {text!r}: {err}") from None


def parse_stages(value: object) -> object:
    """A list of stages with each string entry parsed (``parse_stage``); fields and specs pass."""
    if isinstance(value, (list, tuple)):
        return [parse_stage(v) if isinstance(v, str) else v for v in value]
    return value


class ArchSpec(Config):
    stages: list[StageSpec] = Field(min_length=1, description="the stages, in order (strings in timm's notation "
                                                              "or fields)")
    stem: int = Field(32, ge=1, description="stem conv channels")
    stem_stride: Literal[1, 2] = Field(2, description="stem conv stride")
    stem_kernel: Literal[3, 5, 7] = Field(3, description="stem conv kernel")
    head: int = Field(0, ge=0, description="channels of the 1x1 conv before pooling (0: none)")
    act: ActName = Field("relu6", description="stem and head activation")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the classifier")

    _strings = field_validator("stages", mode="before")(classmethod(lambda cls, value: parse_stages(value)))

    def strings(self) -> list[str]:
        return [s.to_string() for s in self.stages]


def build_block(s: StageSpec, in_ch: int, stride: int) -> nn.Module:
    act = ACTS[s.act]
    if s.block == "ir":
        se_ch = max(1, int(in_ch * s.se)) if s.se else 0
        return InvertedResidual(in_ch, s.out, expanded_ch=int(round(in_ch * s.expand)), stride=stride,
                                kernel=s.kernel, act=act, se_ch=se_ch)
    if s.block == "ds":
        return DepthwiseSeparableConv(in_ch, s.out, stride=stride, kernel=s.kernel, act=act)
    if s.block == "shuffle":
        from slimkit.zoo.shufflenet import ShuffleUnit

        if stride == 1 and in_ch != s.out:
            raise ConfigError(f"a stride-1 shuffle block keeps its width: input {in_ch} != output {s.out} "
                              "(give the stage stride 2, or put a stage that reaches that width before it)")
        return ShuffleUnit(in_ch, s.out, stride)
    if s.block == "fire":
        fire = Fire(in_ch, s.out // 8, s.out // 2, s.out - s.out // 2, batch_norm=True)
        return nn.Sequential(nn.MaxPool2d(2), fire) if stride == 2 else fire
    return conv_bn_act(in_ch, s.out, s.kernel, stride=stride, act=act)


class ArchNet(nn.Module):
    """The network an ``ArchSpec`` describes; see the module docstring."""

    def __init__(self, spec: ArchSpec, num_classes: int = 1000, in_chans: int = 3) -> None:
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = [conv_bn_act(in_chans, spec.stem, spec.stem_kernel, stride=spec.stem_stride,
                                               act=ACTS[spec.act])]
        ch = spec.stem
        for s in spec.stages:
            for i in range(s.depth):
                layers.append(build_block(s, ch, s.stride if i == 0 else 1))
                ch = s.out
        if spec.head:
            layers.append(conv_bn_act(ch, spec.head, 1, act=ACTS[spec.act]))
            ch = spec.head
        self.features = nn.Sequential(*layers)
        self.num_features = ch
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(ch, num_classes))
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def scale_spec(spec: ArchSpec, width: float = 1.0, depth: float = 1.0, divisor: int = 8) -> ArchSpec:
    """Every stage's (and the stem's) channels times ``width`` through ``make_divisible``, depths
    times ``depth`` rounded up (EfficientNet's compound scaling); the head is widened above width 1
    and never narrowed (MobileNetV2)."""
    if width <= 0 or depth <= 0:
        raise ConfigError(f"width and depth multipliers must be positive, got {width}, {depth}")
    stages = [s.model_copy(update={"out": _channels(s, width, divisor), "depth": int(math.ceil(s.depth * depth))})
              for s in spec.stages]
    head = make_divisible(spec.head * max(1.0, width), divisor) if spec.head else 0
    return spec.model_copy(update={"stages": stages, "stem": make_divisible(spec.stem * width, divisor),
                                   "head": head})


def _channels(s: StageSpec, width: float, divisor: int) -> int:
    out = make_divisible(s.out * width, divisor)
    if s.block == "fire":
        out = max(out, 16)
    return out


# (expansion t, output channels c, repeats n, first stride s) (Sandler et al. 2018, Table 2).
V2_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1)]


def mobilenetv2_spec(width_mult: float = 1.0, small_input: bool = False, dropout: float = 0.2) -> ArchSpec:
    """MobileNetV2 as a spec (torchvision's layout); ``small_input`` runs the stem and the first
    stride-2 stage at stride 1, as the zoo's ``small_input`` does."""
    stages = [StageSpec(block="ir", depth=n, out=c, stride=s, kernel=3, expand=t, act="relu6")
              for t, c, n, s in V2_SETTING]
    stem_stride = 2
    if small_input:
        stem_stride = 1
        first = next(i for i, s in enumerate(stages) if s.stride == 2)
        stages[first] = stages[first].model_copy(update={"stride": 1})
    spec = ArchSpec(stages=stages, stem=32, stem_stride=stem_stride, head=1280, act="relu6", dropout=dropout)
    return scale_spec(spec, width_mult) if width_mult != 1.0 else spec


def build_arch(spec: ArchSpec | dict, num_classes: int = 1000, in_chans: int = 3) -> ArchNet:
    """An ``ArchNet`` from a spec or its dict (strings allowed for stages); bad fields are named."""
    if not isinstance(spec, ArchSpec):
        try:
            spec = ArchSpec(**spec)
        except ValueError as err:
            raise ConfigError(f"architecture spec: {err}") from None
    return ArchNet(spec, num_classes, in_chans)


# The default: a small network with one stage of every block type, so that the zoo's conformance
# tests (export, fusion, quantization, pruning over the registry) cover them all.
DEFAULT_STAGES = ["conv_r1_k3_s1_c16_relu", "ds_r1_k3_s1_c24_relu6", "ir_r2_k5_s2_e4_c32_se0.25_hswish",
                  "shuffle_r2_k3_s2_c64_relu", "fire_r1_k3_s2_c96_relu"]


@MODELS.register("arch")
def arch(num_classes: int = 1000, in_chans: int = 3, stages: list | None = None, stem: int = 16,
         stem_stride: int = 1, stem_kernel: int = 3, head: int = 0, act: str = "relu6", dropout: float = 0.0
         ) -> nn.Module:
    """A network from an architecture spec: ``stages`` in timm's notation (``"ir_r2_k3_s2_e6_c24"``)
    or as fields, plus stem, head and classifier settings (see ``zoo/arch.py``); by default a small
    network with one stage of each block type."""
    return build_arch({"stages": DEFAULT_STAGES if stages is None else stages, "stem": stem,
                       "stem_stride": stem_stride, "stem_kernel": stem_kernel, "head": head, "act": act,
                       "dropout": dropout}, num_classes, in_chans)
