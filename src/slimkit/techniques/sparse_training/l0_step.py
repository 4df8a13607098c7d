"""The ``l0`` recipe step: hard-concrete L0 gates (``l0.py``) on output channels, the closed ones
removed physically through the dependency graph (a ``Skeleton``, as ``prune_structured``
records), or on weights, stored sparse (the ``prune`` step's encoding)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field

from slimkit.core.config import Config
from slimkit.core.errors import ConfigError
from slimkit.core.step import StepResult, register_step
from slimkit.tasks.context import Context
from slimkit.techniques.pruning.step import PruneStructure, prunable_weights, restore_prune, store_sparse
from slimkit.techniques.pruning.structure import Skeleton
from slimkit.encoding import densify_
from slimkit.train.config import TrainingStepConfig, finetune_config


L0Finetune = finetune_config(
    "L0Finetune", epochs=Field(20, ge=1, description="training epochs with the gates"),
    keep_best=Field(False, description="restore the best validation epoch (an earlier epoch keeps more)"))


class L0Config(TrainingStepConfig):
    target: Literal["channels", "weights"] = Field(
        "channels", description="channels: a gate per output channel, closed channels removed physically (a smaller "
                                "dense model); weights: a gate per weight, stored sparse")
    penalty: float = Field(1.0, gt=0, description="weight of the L0 term: the expected share of the gated cost kept")
    cost: Literal["macs", "params"] = Field("macs", description="channels: what a gate's channel costs (its root "
                                                                "layer's multiply-accumulates or parameters)")
    init_keep: float = Field(0.9, gt=0, lt=1, description="initial probability that a gate is open")
    gate_lr: float = Field(0.05, gt=0, description="learning rate of the gates' log alpha (they travel several units; "
                                                   "the weights' rate is finetune.lr)")
    layers: list[Literal["linear", "conv"]] = Field(["linear", "conv"], min_length=1,
                                                    description="weights: layer kinds gated")
    heads: bool = Field(True, description="channels: also gate whole attention heads (removed with their q/k/v rows "
                                          "and output-projection columns)")
    skip: list[str] = Field(default_factory=list, description="module paths left alone (channels: kept at full width)")
    encode: bool = Field(True, description="weights: store the result as bitmask + values")
    finetune: L0Finetune = Field(default_factory=L0Finetune, description="training with the gates (keep_best off)")


class L0Structure(Config):
    skeleton: Skeleton | None = Field(None, description="channels: the smaller model's shapes")
    sparse: PruneStructure | None = Field(None, description="weights: the layers stored as bitmask + values")


def restore_l0(model: nn.Module, structure: L0Structure) -> nn.Module:
    from slimkit.techniques.pruning.structure import apply_structure_

    if structure.skeleton is not None:
        apply_structure_(model, structure.skeleton, "l0")
    if structure.sparse is not None:
        restore_prune(model, structure.sparse)
    return model


@register_step("l0", config=L0Config, restore=restore_l0, structure=L0Structure)
def l0(model: nn.Module, cfg: L0Config, ctx: Context) -> StepResult:
    """L0 regularisation with hard-concrete gates (Louizos et al. 2018) on output channels and
    attention heads (closed ones removed physically through the dependency graph) or on weights
    (stored sparse)."""
    from slimkit.measure.macs import count_macs
    from slimkit.measure.size import count_params
    from slimkit.techniques.pruning.structure import snapshot, structure_diff
    from slimkit.techniques.pruning.structured import (find_attention, fixed_width_layers, head_removal_fails,
                                                       sync_attention_)
    from slimkit.techniques.sparse_training import l0 as gates_

    densify_(model, "sparse")  # a sparse-encoded model gated again starts from dense layers
    inputs = tuple(t[:1].to(ctx.device) for t in ctx.data.train.inputs)
    info: dict[str, Any] = {"target": cfg.target, "penalty": cfg.penalty}
    if cfg.target == "weights":
        names = prunable_weights(model, cfg.layers, cfg.skip)
        if not names:
            raise ConfigError(f"l0: the model has no {' or '.join(cfg.layers)} layer to gate")
        modules = dict(model.named_modules())
        layers = {n: modules[n] for n in names}
        gates = gates_.gate_weights_(layers, cfg.init_keep, cfg.gate_lr / cfg.finetune.lr)
        term = gates_.L0Penalty([(g, 1.0) for g in gates.values()], weight=cfg.penalty)
        fit = ctx.train(model, cfg.finetune, loss_terms=[term], description="l0 (weights)")
        weights = gates_.bake_weight_gates_(layers)
        info["train"] = fit.summary()
        result = store_sparse(model, weights, cfg.encode, info)
        return StepResult(model, info=result.info,
                          structure=L0Structure(sparse=result.structure) if result.structure else None)
    modules = dict(model.named_modules())
    unknown = [n for n in cfg.skip if n not in modules]
    if unknown:
        raise ConfigError(f"l0: skip names no module: {unknown}")
    before = snapshot(model)
    macs0, params0 = count_macs(model, inputs), count_params(model)
    attention = find_attention(model)  # whole heads are gated (HeadGates); a channel inside one would break its reshape
    ignore = fixed_width_layers(model, inputs, attention) + [p for a in attention for p in a.projections] \
        + [modules[n] for n in cfg.skip]
    lr_scale = cfg.gate_lr / cfg.finetune.lr
    graph, gates = gates_.channel_gates(model, inputs, ignore,
                                         lambda width: gates_.HardConcrete(width, cfg.init_keep, lr_scale=lr_scale),
                                         cfg.cost)
    if cfg.heads:
        info["heads_not_gated"] = head_removal_fails(model, inputs)  # None: heads gated
        if info["heads_not_gated"] is None:
            skipped = {id(modules[n]) for n in cfg.skip}
            gates += gates_.head_gates(model, inputs, graph, [a for a in attention if id(a.module) not in skipped],
                                       cfg.init_keep, lr_scale, cfg.cost)
    if not gates:
        raise ConfigError("l0: no prunable channel group or attention head in this model (every layer keeps its "
                          "width)")
    handles = gates_.install_channel_gates(gates)
    term = gates_.L0Penalty([(g.gates, g.cost) for g in gates], weight=cfg.penalty, trains_gates=True)
    try:
        fit = ctx.train(model, cfg.finetune, loss_terms=[term], description="l0 (channels)")
    finally:
        for h in handles:
            h.remove()
    removed = gates_.remove_closed_channels_(model, graph, gates)
    heads = sync_attention_(attention)
    dense = {n: m.weight for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    info.update({"nonzero_weights": sum(int((w != 0).sum()) for w in dense.values()),
                 "bits_per_layer": {n: torch.finfo(w.dtype).bits for n, w in dense.items()}})
    info.update({"channels_removed": removed, "groups_gated": len(gates), "train": fit.summary(),
                 "heads_gated": sum(isinstance(g.gates, gates_.HeadGates) for g in gates), "heads_after": heads,
                 "macs_before": macs0, "params_before": params0,
                 "macs_after": count_macs(model, inputs), "params_after": count_params(model)})
    return StepResult(model, info=info, structure=L0Structure(skeleton=structure_diff(before, model)))
