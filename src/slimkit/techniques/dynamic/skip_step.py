"""The ``layer_skip`` recipe step: a gate before each residual block (``skipping.py``), trained with
the model under a compute penalty that pulls the mean executed MACs toward a target; at inference
each row runs only the blocks its gates open."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field, model_validator

from slimkit.core.config import Config
from slimkit.core.errors import ConfigError
from slimkit.core.step import StepResult, register_step, restoring
from slimkit.tasks.context import Context
from slimkit.train.config import TrainingStepConfig, finetune_config

SkipFinetune = finetune_config("SkipFinetune", epochs=Field(10, ge=1, description="training epochs with the gates"),
                               lr=1e-3, keep_best=Field(False, description="restore the epoch with the best validation "
                                                                           "quality (off: that is often the epoch "
                                                                           "that skips least)"))


class LayerSkipConfig(TrainingStepConfig):
    blocks: list[str] | None = Field(None, description="modules to gate (called with one tensor, output of its "
                                                       "shape); default: the residual blocks (use_residual = True)")
    target_macs: float | None = Field(None, gt=0, le=1, description="mean MACs per row the penalty pulls toward, "
                                                                   "as a share of the backbone's (default 0.7)")
    skip_blocks: float | None = Field(None, gt=0, description="instead of target_macs: blocks skipped per row on "
                                                             "average (at the gated blocks' mean MACs)")
    penalty: float = Field(10.0, ge=0, description="weight of (mean executed MACs share - target)^2")
    per_block: bool = Field(False, description="ConvNet-AIG's target loss instead: the mean over gates of (the "
                                               "gate's execution rate in the batch - the rate meeting the target)^2, "
                                               "so every block runs for some rows and is skipped by others")
    temperature: float = Field(1.0, gt=0, description="Gumbel-sigmoid temperature of the gates in training")
    noise: bool = Field(True, description="logistic noise on the gate logits in training (Gumbel-sigmoid); false: "
                                          "deterministic straight-through gates")
    calibrate: bool = Field(True, description="after training, one threshold shared by the gates is set on the "
                                              "validation rows so that their mean executed MACs meet the target "
                                              "(training decisions are noisy, inference ones are not)")
    finetune: SkipFinetune = Field(default_factory=SkipFinetune, description="training with the gates")

    @model_validator(mode="after")
    def _one_target(self) -> "LayerSkipConfig":
        if self.target_macs is not None and self.skip_blocks is not None:
            raise ValueError("give target_macs or skip_blocks, not both")
        return self


class GateRecord(Config):
    block: str = Field(description="the gated module's path in the backbone")
    kind: Literal["conv2d", "tokens", "vector"] = Field(description="what the gate pools: a feature map, a token "
                                                                    "sequence, or nothing (a vector)")
    features: int = Field(ge=1, description="features the gate's Linear reads")


class LayerSkipStructure(Config):
    gates: list[GateRecord] = Field(min_length=1, description="the gated blocks, in execution order")
    temperature: float = Field(gt=0, description="the gates' training temperature")
    noise: bool = Field(description="logistic noise on the logits in training")


def restore_layer_skip(model: nn.Module, structure: LayerSkipStructure) -> nn.Module:
    """Each recorded block wrapped with an empty gate of the recorded size (weights and thresholds
    come from the checkpoint)."""
    from slimkit.techniques.dynamic.skipping import GatedBlock, SkipNetwork, _replace, gate_for

    names = [g.block for g in structure.gates]
    with restoring("layer_skip", model, names):
        for g in structure.gates:
            example = {"conv2d": (1, g.features, 1, 1), "tokens": (1, 1, g.features), "vector": (1, g.features)}
            block = model.get_submodule(g.block)
            _replace(model, g.block, GatedBlock(block, gate_for(torch.zeros(example[g.kind])), structure.temperature,
                                                structure.noise))
        return SkipNetwork(model, names)


def target_fraction(cfg: LayerSkipConfig, backbone_macs: float, block_macs: list[float]) -> float:
    """The MACs share the penalty aims at: ``target_macs``, or ``skip_blocks`` blocks of mean cost."""
    if cfg.skip_blocks is not None:
        if cfg.skip_blocks > len(block_macs):
            raise ConfigError(f"layer_skip: skip_blocks {cfg.skip_blocks} > the {len(block_macs)} gated blocks")
        return 1 - cfg.skip_blocks * (sum(block_macs) / len(block_macs)) / backbone_macs
    return 0.7 if cfg.target_macs is None else cfg.target_macs


@register_step("layer_skip", config=LayerSkipConfig, restore=restore_layer_skip, structure=LayerSkipStructure)
def layer_skip(model: nn.Module, cfg: LayerSkipConfig, ctx: Context) -> StepResult:
    """Layer skipping (SkipNet-style gates, one per residual block, straight-through Gumbel-sigmoid
    in training) trained with the model under a penalty pulling the mean executed MACs toward a
    target; rows skip the blocks their gates close."""
    from slimkit.techniques.dynamic import skipping as sk

    inputs = tuple(t[:2].to(ctx.device) for t in ctx.data.train.inputs)
    try:
        net = sk.attach_gates(model, inputs, cfg.blocks, cfg.temperature, cfg.noise)
    except ValueError as err:
        raise ConfigError(f"layer_skip: {err}") from None
    total, blocks, gates = sk.block_macs(net, inputs)
    backbone = total - sum(gates.values())
    costs = [float(blocks[n]) for n in net.names]
    target = target_fraction(cfg, backbone, costs)
    term = sk.SkipPenalty(target, float(backbone), costs, weight=cfg.penalty, per_block=cfg.per_block)
    fit = ctx.train(net, cfg.finetune, loss_terms=[term], description="layer skipping")
    gate_macs = float(sum(gates.values()))
    calibration = None
    if cfg.calibrate:
        val = tuple(t.to(ctx.device) for t in ctx.data.val.inputs)
        threshold, share = sk.calibrate_threshold_(net, val, target, costs, float(backbone), gate_macs)
        calibration = {"threshold": threshold, "val_macs_share": round(share, 4)}
    info: dict[str, Any] = {"blocks": net.names, "target_macs": round(target, 4), "backbone_macs": backbone,
                            "block_macs": blocks, "gate_macs": sum(gates.values()), "calibration": calibration,
                            "train": fit.summary()}
    for split in ("val", "test"):
        info[split] = skip_summary(net, getattr(ctx.data, split), ctx.device, backbone, costs, gate_macs)
    rates = info["val"]["execution_rates"]
    info["least_used"] = sorted(rates, key=lambda n: (rates[n], n))  # on validation rows: the static control's order
    structure = LayerSkipStructure(temperature=cfg.temperature, noise=cfg.noise, gates=[
        GateRecord(block=n, **dict(zip(("kind", "features"), sk.gate_kind(b.gate)))) for n, b in
        zip(net.names, net.gated())])
    return StepResult(net, info=info, structure=structure)


def skip_summary(net: nn.Module, split: Any, device: torch.device, backbone: float, costs: list[float],
                 gate_macs: float) -> dict[str, Any]:
    """Over a split's rows: blocks executed per row (mean), how many rows skipped 0, 1, 2... blocks,
    each block's execution rate, and the mean MACs per row as a share of the backbone's."""
    from slimkit.techniques.dynamic.skipping import executed_share, execution

    _, ran = execution(net, tuple(t.to(device) for t in split.inputs))
    ran = ran.cpu()
    skipped = (~ran).sum(1)
    rates = ran.float().mean(0)
    return {"blocks_executed_per_row": round(float(ran.sum(1).float().mean()), 4),
            "skip_histogram": torch.bincount(skipped, minlength=ran.shape[1] + 1).tolist(),
            "execution_rates": {n: round(float(r), 4) for n, r in zip(net.names, rates)},
            "macs_share": round(executed_share(ran, costs, backbone, gate_macs), 4)}
