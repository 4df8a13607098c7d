"""The ``hash`` recipe step: HashedNets (Chen et al. 2015), each layer's weight a virtual matrix
indexing a small stored vector by a hash of the entry's position, trained through the one loop."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field

from slimkit.tasks.context import Context
from slimkit.core.errors import ConfigError
from slimkit.core.config import Config
from slimkit.core.step import StepResult, register_step, restoring
from slimkit.encoding.twins import plain_type
from slimkit.train.config import TrainingStepConfig, finetune_config

_KINDS = {"linear": nn.Linear, "conv": nn.Conv2d}


HashFinetune = finetune_config("HashFinetune", epochs=Field(20, ge=0, description="training epochs with the "
                                                                                 "hashed weights"))


class HashConfig(TrainingStepConfig):
    compression: float = Field(0.125, gt=0, lt=1, description="stored values / virtual weights per hashed layer "
                                                               "(HashedNets' compression factor, e.g. 1/8)")
    init: Literal["project", "random"] = Field("random", description="project: the least-squares fit of the "
                                                                     "current weights; random: fresh weights, "
                                                                     "trained from scratch as in the paper")
    layers: list[Literal["linear", "conv"]] = Field(["linear"], min_length=1, description="layer kinds to hash")
    skip: list[str] = Field(default_factory=list, description="module paths left dense")
    min_weights: int = Field(256, ge=1, description="layers with fewer weights stay dense")
    finetune: HashFinetune = Field(default_factory=HashFinetune, description="training with the hashed weights")


class HashedRecord(Config):
    stored: int = Field(ge=1, description="values stored for the layer's virtual weight")
    seed: int = Field(description="seed of the layer's hash functions")


class HashStructure(Config):
    hashed: dict[str, HashedRecord] = Field(description="the hashed layers")


def restore_hash(model: nn.Module, structure: HashStructure) -> nn.Module:
    """Re-create the hashed layers (stored sizes and hash seeds) for the checkpoint to load into."""
    from slimkit.techniques.sharing.hashing import hash_

    with restoring("hash", model, structure.hashed):
        hash_(model, {name: r.model_dump() for name, r in structure.hashed.items()})
    return model


@register_step("hash", config=HashConfig, restore=restore_hash, structure=HashStructure)
def hash_weights(model: nn.Module, cfg: HashConfig, ctx: Context) -> StepResult:
    """HashedNets: each layer's weight becomes a virtual matrix whose entries index a small stored
    vector by a hash of their position (with a hashed sign); then trained through the one loop."""
    from slimkit.encoding import refuse_encoded
    from slimkit.techniques.sharing.hashing import hash_

    refuse_encoded(model, "hash", "hash a dense model")
    kinds = tuple(_KINDS[k] for k in cfg.layers)
    modules = dict(model.named_modules())
    unknown = [s for s in cfg.skip if s not in modules]
    if unknown:
        raise ConfigError(f"hash: skip names no module: {unknown}")
    chosen = {n: m for n, m in modules.items() if plain_type(m) in kinds and n not in cfg.skip
              and m.weight.numel() >= cfg.min_weights}
    if not chosen:
        raise ConfigError(f"hash: the model has no {' or '.join(cfg.layers)} layer with >= {cfg.min_weights} weights")
    spec = {n: {"stored": max(1, round(m.weight.numel() * cfg.compression)), "seed": ctx.seed * 1000 + i}
            for i, (n, m) in enumerate(chosen.items())}
    weights = {n: m.weight.detach().clone() for n, m in chosen.items()}
    fans = {n: m.weight[0].numel() for n, m in chosen.items()}
    twins = hash_(model, spec)
    generator = torch.Generator().manual_seed(ctx.seed)
    for name, twin in twins.items():
        if cfg.init == "project":
            twin.project_(weights[name])
        else:
            twin.init_(fans[name], generator)
    info: dict[str, Any] = {"compression": cfg.compression, "init": cfg.init,
                            "layers": {n: {"virtual": weights[n].numel(), "stored": s["stored"]} for n, s in spec.items()}}
    if cfg.finetune.epochs:
        info["train"] = ctx.train(model, cfg.finetune, description="hash").summary()
    return StepResult(model, info=info, structure=HashStructure(hashed=spec))
