"""Search spaces declared over architecture specs (``zoo/arch.py``): a base network and, per stage,
the values each field may take. A candidate is a dict of categorical choices, one per dimension
(``"s2.kernel": 5``), which is what every strategy (an Optuna sampler) proposes; ``spec(params)``
turns it into the ``ArchSpec`` it describes.

In YAML (a ``nas`` step's ``space``)::

    base: [ir_r1_k3_s1_e1_c16, ir_r2_k3_s2_e6_c24, ir_r3_k3_s2_e6_c32, ir_r2_k3_s2_e6_c64]
    stem: 16
    stem_stride: 1
    stages:                       # one entry per base stage (fewer: the rest stay fixed)
      - {}
      - {depth: [1, 2, 3], kernel: [3, 5], expand: [3, 6]}
      - {depth: [1, 2, 3], kernel: [3, 5], expand: [3, 6], se: [0, 0.25], width: [0.75, 1.0, 1.25]}
      - {block: [ir, ds], depth: [1, 2], width: [0.75, 1.0]}

``width`` multiplies the base stage's channels (rounded to a multiple of 8). A candidate whose
spec cannot be built (a stride-1 shuffle stage that changes width) is refused by ``spec`` with
the reason, before anything trains.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from slimkit.core.config import Config
from slimkit.core.errors import ConfigError
from slimkit.zoo.arch import ActName, ArchSpec, BlockType, StageSpec, parse_stages
from slimkit.zoo.blocks import make_divisible


class StageChoices(Config):
    block: list[BlockType] | None = Field(None, min_length=1, description="block types to choose from")
    depth: list[int] | None = Field(None, min_length=1, description="blocks in the stage")
    width: list[float] | None = Field(None, min_length=1, description="multipliers of the base stage's channels")
    kernel: list[int] | None = Field(None, min_length=1, description="kernels")
    expand: list[float] | None = Field(None, min_length=1, description="ir: expansions")
    se: list[float] | None = Field(None, min_length=1, description="ir: squeeze-excite ratios (0: off)")

    @model_validator(mode="after")
    def _distinct_and_valid(self) -> "StageChoices":
        for name in type(self).model_fields:
            values = getattr(self, name)
            if values is not None and len(set(values)) != len(values):
                raise ValueError(f"{name}: choices repeat ({values})")
        if (self.depth and min(self.depth) < 1) or (self.width and min(self.width) <= 0):
            raise ValueError("depths must be >= 1 and widths > 0")
        return self

    def dimensions(self) -> dict[str, list[Any]]:
        return {k: list(v) for k, v in self.model_dump().items() if v is not None and len(v) > 1}


class SearchSpace(Config):
    base: list[StageSpec] = Field(min_length=1, description="the base network's stages (timm notation or fields)")
    stem: int = Field(16, ge=1, description="stem channels")
    stem_stride: Literal[1, 2] = Field(1, description="stem stride (1 for 32x32 inputs)")
    head: int = Field(0, ge=0, description="head conv channels (0: none)")
    act: ActName = Field("relu6", description="stem and head activation")
    dropout: float = Field(0.0, ge=0, lt=1)
    stages: list[StageChoices] = Field(default_factory=list, description="per base stage, the values each field may "
                                                                         "take")

    _strings = field_validator("base", mode="before")(classmethod(lambda cls, value: parse_stages(value)))

    @model_validator(mode="after")
    def _one_choice_set_per_stage(self) -> "SearchSpace":
        if len(self.stages) > len(self.base):
            raise ValueError(f"{len(self.stages)} stage choice sets for {len(self.base)} base stages")
        return self

    def dimensions(self) -> dict[str, list[Any]]:
        """{"s<i>.<field>": choices} for every field with more than one choice."""
        return {f"s{i}.{k}": v for i, c in enumerate(self.stages) for k, v in c.dimensions().items()}

    def size(self) -> int:
        return math.prod(len(v) for v in self.dimensions().values())

    def spec(self, params: dict[str, Any]) -> ArchSpec:
        """The ``ArchSpec`` of a candidate (missing dimensions take the base's value, or the only
        choice); an impossible candidate raises ``ConfigError`` naming the stage."""
        unknown = set(params) - set(self.dimensions())
        if unknown:
            raise ConfigError(f"not dimensions of this space: {sorted(unknown)}")
        stages = []
        for i, base in enumerate(self.base):
            choice = self.stages[i] if i < len(self.stages) else StageChoices()
            fields: dict[str, Any] = base.model_dump()
            for name in ("block", "depth", "kernel", "expand", "se"):
                values = getattr(choice, name)
                if values is not None:
                    fields[name] = params.get(f"s{i}.{name}", values[0])
            width = params.get(f"s{i}.width", choice.width[0] if choice.width else 1.0)
            fields["out"] = make_divisible(base.out * width) if width != 1.0 else base.out
            if fields["block"] != "ir":
                fields["expand"], fields["se"] = 1.0, 0.0
            try:
                stages.append(StageSpec(**fields))
            except ValueError as err:
                raise ConfigError(f"stage {i}: {err}") from None
        spec = ArchSpec(stages=stages, stem=self.stem, stem_stride=self.stem_stride, head=self.head, act=self.act,
                        dropout=self.dropout)
        ch = spec.stem
        for i, s in enumerate(spec.stages):  # the one cross-stage rule: a stride-1 shuffle keeps its width
            if s.block == "shuffle" and s.stride == 1 and ch != s.out:
                raise ConfigError(f"stage {i}: a stride-1 shuffle stage keeps its width ({ch} -> {s.out})")
            ch = s.out
        return spec


# Shipped spaces, by name (a ``nas`` step's ``space: mobile-32``).
BUILTIN_SPACES: dict[str, dict[str, Any]] = {
    # MobileNetV2's blocks for 32x32 inputs (its small-input layout: stride-1 stem, 8x downsampling):
    # per stage after the first, depth, kernel, expansion and width are searched
    "mobile-32": {"base": ["ir_r1_k3_s1_e1_c16", "ir_r2_k3_s2_e6_c24", "ir_r3_k3_s2_e6_c32",
                           "ir_r3_k3_s2_e6_c64", "ir_r2_k3_s1_e6_c96"],
                  "stem": 16, "stem_stride": 1,
                  "stages": [{}] + [{"depth": [1, 2, 3], "kernel": [3, 5], "expand": [3, 6], "width": [0.5, 1.0]}] * 4},
}


def builtin_space(name: str) -> SearchSpace:
    """A shipped search space by name."""
    if name not in BUILTIN_SPACES:
        raise ConfigError(f"unknown search space {name!r} (shipped: {', '.join(sorted(BUILTIN_SPACES))})")
    return SearchSpace(**BUILTIN_SPACES[name])
