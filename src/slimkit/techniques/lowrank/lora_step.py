"""The ``lora`` recipe step: LoRA adapters (Hu et al. 2021) on the chosen Linear layers, trained
through the one loop with everything else frozen, then merged back into plain Linears."""

from __future__ import annotations

import logging
from fnmatch import fnmatch
from typing import Any

import torch
import torch.nn as nn
from pydantic import Field

from slimkit.core.outputs import primary_output
from slimkit.tasks.context import Context
from slimkit.core.errors import ConfigError
from slimkit.core.config import Config
from slimkit.core.step import StepResult, register_step, restoring
from slimkit.encoding.twins import plain_type

log = logging.getLogger("slimkit.lora")
from slimkit.train.config import TrainingStepConfig, finetune_config


LoraFinetune = finetune_config("LoraFinetune", epochs=Field(3, ge=1, description="training epochs of the adapters"),
                               optimizer="adamw")


class LoraConfig(TrainingStepConfig):
    rank: int = Field(8, ge=1, description="rank r of each adapter's update B @ A")
    alpha: float = Field(16, gt=0, description="the update is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input while training")
    targets: list[str] = Field(default_factory=list, description="module-path patterns (fnmatch) of the Linears "
                                                                 "to adapt; empty: every nn.Linear")
    skip: list[str] = Field(default_factory=list, description="module paths of Linears left unadapted")
    min_weights: int = Field(256, ge=1, description="Linears with fewer weights are left unadapted")
    train_bias: bool = Field(False, description="also train the adapted layers' biases")
    finetune: LoraFinetune = Field(default_factory=LoraFinetune, description="training of the adapters")
    merge: bool = Field(True, description="merge the adapters into the weights after training (plain Linears, "
                                          "no inference cost); false keeps them as separate modules")


class AdapterRecord(Config):
    rank: int = Field(ge=1, description="the adapter's rank r")
    alpha: float = Field(gt=0, description="its update is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on its input while training")


class LoraStructure(Config):
    lora: dict[str, AdapterRecord] = Field(description="the unmerged adapters")


def restore_lora(model: nn.Module, structure: LoraStructure) -> nn.Module:
    """Re-add unmerged adapters (skeletons of the recorded ranks) for the checkpoint to load into."""
    from slimkit.techniques.lowrank.lora import add_lora_

    with restoring("lora", model, structure.lora):
        for name, record in structure.lora.items():
            add_lora_(model, [name], record.rank, record.alpha, record.dropout)
    return model


@register_step("lora", config=LoraConfig, restore=restore_lora, structure=LoraStructure)
def lora(model: nn.Module, cfg: LoraConfig, ctx: Context) -> StepResult:
    """LoRA: a trainable rank-r update (alpha/r) * B @ A beside each chosen frozen Linear, trained
    with the rest of the model frozen, then (by default) merged into the Linear's weight."""
    from slimkit.encoding import refuse_encoded
    from slimkit.techniques.lowrank.lora import add_lora_, freeze_except_lora_, is_lora, merge_lora_

    refuse_encoded(model, "lora", "adapt a dense model")
    if is_lora(model):
        raise ConfigError("lora: the model already holds unmerged LoRA adapters (an earlier lora step with "
                          "merge: false)")
    linears = {n: m for n, m in model.named_modules() if plain_type(m) is nn.Linear}
    unknown = [s for s in cfg.skip if s not in linears]
    if unknown:
        raise ConfigError(f"lora: skip names no nn.Linear: {unknown}")
    unmatched = [p for p in cfg.targets if not any(fnmatch(n, p) for n in linears)]
    if unmatched:
        raise ConfigError(f"lora: targets pattern(s) match no nn.Linear: {unmatched} (Linears: {list(linears)})")
    chosen = [n for n, m in linears.items() if (not cfg.targets or any(fnmatch(n, p) for p in cfg.targets))
              and n not in cfg.skip and m.weight.numel() >= cfg.min_weights]
    if not chosen:
        raise ConfigError(f"lora: no nn.Linear chosen (targets {cfg.targets}, skip {cfg.skip}, "
                          f">= {cfg.min_weights} weights)")
    # as PEFT's default targets do, a Linear too narrow for the rank (a 2-class head) is left out
    # and named; only when that leaves nothing is it an error
    too_small = {n: f"rank {cfg.rank} is not below min(in, out) of {linears[n].in_features} -> "
                    f"{linears[n].out_features}" for n in chosen
                 if cfg.rank >= min(linears[n].in_features, linears[n].out_features)}
    chosen = [n for n in chosen if n not in too_small]
    if not chosen:
        raise ConfigError(f"lora: rank {cfg.rank} is not below min(in, out) of any chosen Linear "
                          f"({', '.join(f'{n}: {r}' for n, r in too_small.items())}); lower the rank")
    for name, reason in too_small.items():
        log.info("lora: %s left out (%s)", name, reason)
    add_lora_(model, chosen, cfg.rank, cfg.alpha, cfg.dropout, torch.Generator().manual_seed(ctx.seed))
    thaw = {id(p) for p in model.parameters() if p.requires_grad}  # all but the frozen bases, given back after
    trainable, total = freeze_except_lora_(model, cfg.train_bias)
    info: dict[str, Any] = {"rank": cfg.rank, "alpha": cfg.alpha, "layers": chosen, "left_out": too_small,
                            "trainable_params": trainable,
                            "trainable_fraction": trainable / total,
                            "train": ctx.train(model, cfg.finetune, description="lora").summary(), "merged": cfg.merge}
    for p in model.parameters():
        p.requires_grad_(id(p) in thaw)
    if not cfg.merge:
        return StepResult(model, info=info, structure=LoraStructure(lora={
            n: AdapterRecord(rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout) for n in chosen}))
    inputs = tuple(t[:64].to(ctx.device) for t in ctx.data.val.inputs)
    with torch.no_grad():
        adapted = primary_output(model.eval()(*inputs))
        merge_lora_(model)
        info["merge_max_abs_diff"] = float((primary_output(model(*inputs)) - adapted).abs().max())
    return StepResult(model, info=info)
