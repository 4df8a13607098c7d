"""The ``prune_structured`` recipe step: remove channels, neurons, attention heads and whole
blocks, to a ratio, a MACs budget or a latency budget, then fine-tune the smaller dense model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field, model_validator

from slimkit.core.outputs import primary_output
from slimkit.tasks.context import Context
from slimkit.core.errors import ConfigError, SlimkitError
from slimkit.core.step import StepResult, register_step
from slimkit.data.batches import leading_batches, mean_loss
from slimkit.search import scan_progress
from slimkit.techniques.pruning.structure import Skeleton
from slimkit.train.config import TrainingStepConfig, finetune_config


StructuredFinetune = finetune_config("StructuredFinetune", epochs=Field(0, ge=0, description="fine-tuning epochs "
                                                                       "after pruning"))


class StructuredPruneConfig(TrainingStepConfig):
    criterion: Literal["l1", "l2", "bn_scale", "taylor", "activation", "random"] = Field(
        "l1", description="channel score: l1/l2 norm of the coupled weights; bn_scale |gamma| (network slimming); "
                          "taylor |w * dL/dw| on training batches; activation: RMS of the channel's contribution "
                          "to the layers reading it, on training batches; random (a control)")
    ratio: float | None = Field(None, gt=0, lt=1, description="share of each prunable layer's channels/neurons "
                                                              "removed (global allocation: of all of them)")
    target_macs: float | None = Field(None, gt=0, lt=1, description="prune until the model's MACs are at most this "
                                                                    "share of what they were (0.6 = 40% fewer)")
    target_latency: float | None = Field(None, gt=0, lt=1, description="prune until eager batch-N latency is at most "
                                                                       "this share of what it was")
    allocation: Literal["uniform", "global", "sensitivity"] = Field(
        "uniform", description="uniform: the same ratio in every layer; global: one ranking over all layers "
                               "(normalised scores); sensitivity: per-layer ratios from a scan of validation loss "
                               "(needs target_macs)")
    heads: float = Field(0.0, ge=0, lt=1, description="share of the attention heads removed in each attention layer")
    blocks: int = Field(0, ge=0, description="whole blocks removed (shape-preserving blocks of a sequence: residual "
                                             "blocks, transformer layers), least validation-loss increase first")
    max_ratio: float = Field(0.9, gt=0, lt=1, description="no layer loses more than this share of its channels")
    round_to: int | None = Field(None, ge=1, description="keep channel counts multiples of this")
    ignore: list[str] = Field(default_factory=list, description="module paths whose outputs keep their width")
    slimming: float = Field(0.0, ge=0, description="network slimming: L1 penalty on BatchNorm scales (e.g. 1e-4), "
                                                   "a loss term during slimming_epochs of training before pruning")
    slimming_epochs: int = Field(0, ge=0, description="training epochs with the slimming penalty before pruning")
    score_batches: int = Field(8, ge=1, description="taylor, activation: training batches (of batch_size) whose "
                                                    "gradients or activations score the channels")
    sensitivity_grid: list[float] = Field([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], min_length=1,
                                          description="sensitivity: the ratios each layer is probed at")
    search_seconds: float | None = Field(None, gt=0, description="sensitivity and blocks: stop the sensitivity scan with an error "
                                                                 "saying how far it got if it runs longer than this")
    eval_samples: int = Field(1024, ge=1, description="validation samples scoring sensitivity and blocks")
    steps: int = Field(40, ge=1, description="target_macs/target_latency: pruning increments on the way to the "
                                             "budget (uniform/global allocation)")
    finetune: StructuredFinetune = Field(default_factory=StructuredFinetune,
                                         description="fine-tuning after pruning; slimming trains with the same "
                                                     "settings for slimming_epochs, and batch_size also sizes the "
                                                     "scoring batches")

    @model_validator(mode="after")
    def _consistent(self) -> "StructuredPruneConfig":
        targets = [n for n in ("ratio", "target_macs", "target_latency") if getattr(self, n) is not None]
        if len(targets) > 1:
            raise ValueError(f"give one of ratio, target_macs, target_latency (got {', '.join(targets)})")
        if not targets and not self.heads and not self.blocks:
            raise ValueError("nothing to prune: give ratio, target_macs or target_latency, or heads or blocks")
        if self.allocation == "sensitivity" and self.target_macs is None:
            raise ValueError("allocation sensitivity chooses per-layer ratios to meet a MACs budget: set target_macs")
        if self.slimming and not self.slimming_epochs:
            raise ValueError("slimming is a penalty during training: set slimming_epochs > 0")
        if self.slimming_epochs and not self.slimming:
            raise ValueError("slimming_epochs trains with the slimming penalty: set slimming > 0 (e.g. 1e-4)")
        if any(not 0 < r < 1 for r in self.sensitivity_grid):
            raise ValueError(f"sensitivity_grid ratios must lie in (0, 1), got {self.sensitivity_grid}")
        return self


@dataclass
class SlimmingPenalty:
    """Network slimming's loss term (Liu et al. 2017): ``weight * sum |gamma|`` over the BatchNorm
    scales, driving the scales of unneeded channels toward zero before they are pruned by scale."""

    weight: float
    name: str = "slimming"

    def __call__(self, batch) -> torch.Tensor:
        scales = [m.weight for m in batch.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
        if not scales:
            raise ConfigError("prune_structured: slimming penalises BatchNorm scales, and the model has none")
        return sum(s.abs().sum() for s in scales)


def example_inputs(ctx: Context, n: int = 1) -> tuple[torch.Tensor, ...]:
    return tuple(t[:n].to(ctx.device) for t in ctx.data.train.inputs)


def accumulate_gradients(model: nn.Module, ctx: Context, batches: int, batch_size: int) -> None:
    """Gradients of the task's loss summed over the first training batches (Taylor scores read them)."""
    model.eval()
    model.zero_grad(set_to_none=True)
    split = ctx.data.train
    for b, inputs in enumerate(leading_batches(split, batches, batch_size, ctx.device)):
        targets = split.targets[b * batch_size:(b + 1) * batch_size].to(ctx.device)
        ctx.task.loss(primary_output(model(*inputs)), targets).backward()


def _latency_ms(model: nn.Module, ctx: Context) -> float:
    """Eager batch-N latency with the run's measure settings (MeasureConfig's defaults without a run)."""
    from slimkit.measure.config import MeasureConfig
    from slimkit.measure.latency import measure_latency

    m = ctx.measure or MeasureConfig()
    batch = tuple(t[:m.batch_n].to(ctx.device) for t in ctx.data.train.inputs)
    stats = measure_latency(model.eval(), batch, warmup=m.warmup, repeats=m.repeats, threads=m.threads,
                            max_seconds=m.max_seconds)
    return stats.median_ms


def restore_prune_structured(model: nn.Module, structure: Skeleton) -> nn.Module:
    from slimkit.techniques.pruning.structure import apply_structure_

    return apply_structure_(model, structure)


@register_step("prune_structured", config=StructuredPruneConfig, restore=restore_prune_structured, structure=Skeleton)
def prune_structured(model: nn.Module, cfg: StructuredPruneConfig, ctx: Context) -> StepResult:
    """Structured pruning on a dependency graph (torch-pruning's DepGraph): whole conv channels,
    linear neurons, attention heads and blocks removed to a ratio, MACs or latency target (uniform,
    global or sensitivity-allocated ratios; L1/L2, BN-scale with network slimming, Taylor or random
    scores), then fine-tuned: the result is a smaller dense model."""
    from slimkit.encoding import QUANTIZED_KINDS, densify_, refuse_encoded
    from slimkit.measure.macs import count_macs
    from slimkit.measure.size import count_params
    from slimkit.techniques.pruning.blocks import block_sensitivity, remove_blocks_, removable_blocks
    from slimkit.techniques.pruning.structure import snapshot, structure_diff
    from slimkit.techniques.pruning.structured import Plan, attention_heads, sensitivity_ratios

    refuse_encoded(model, "prune_structured", "put prune_structured before the quantization steps", QUANTIZED_KINDS)
    densify_(model, "sparse")
    inputs = example_inputs(ctx)
    before = snapshot(model)
    macs0, params0 = count_macs(model, inputs), count_params(model)
    info: dict[str, Any] = {"criterion": cfg.criterion, "allocation": cfg.allocation,
                            "macs_before": macs0, "params_before": params0}
    heads0 = attention_heads(model)
    if cfg.heads and not heads0:
        raise ConfigError("prune_structured: heads is set, but the model has no attention module with q/k/v "
                          "projections and head-count attributes that slimkit recognises")
    loss = mean_loss(ctx.data.val, ctx.task.loss, cfg.eval_samples, ctx.device)
    train = cfg.finetune

    if cfg.slimming:
        fit = ctx.train(model, train.model_copy(update={"epochs": cfg.slimming_epochs, "keep_best": False}),
                        loss_terms=[SlimmingPenalty(cfg.slimming)], description="slimming")
        info["slimming_train"] = fit.summary()

    removed: list[str] = []
    if cfg.blocks:
        candidates = removable_blocks(model, inputs)
        if len(candidates) < cfg.blocks:
            raise ConfigError(f"prune_structured: blocks {cfg.blocks} asked, the model has {len(candidates)} "
                              f"removable blocks ({candidates})")
        with scan_progress(ctx.progress, "prune_structured: blocks") as progress:
            scores = block_sensitivity(model, candidates, loss, progress, cfg.search_seconds)
        removed = sorted(candidates, key=scores.get)[: cfg.blocks]
        remove_blocks_(model, removed)
        info["blocks"] = {"removed": removed, "loss_increase": {n: round(v, 5) for n, v in scores.items()}}

    plan = Plan(criterion=cfg.criterion, ratio=cfg.ratio or 0.0, allocation=cfg.allocation, heads=cfg.heads,
                ignore=cfg.ignore, max_ratio=cfg.max_ratio, round_to=cfg.round_to,
                batches=leading_batches(ctx.data.train, cfg.score_batches, train.batch_size, ctx.device)
                if cfg.criterion == "activation" else (), mask_input=ctx.data.train.mask_input)
    target = None
    if cfg.target_macs is not None:
        target = ("macs", lambda m: count_macs(m, inputs), cfg.target_macs * macs0)
    elif cfg.target_latency is not None:
        latency0 = _latency_ms(model, ctx)
        info["latency_ms_before"] = latency0
        target = ("latency_ms", lambda m: _latency_ms(m, ctx), cfg.target_latency * latency0)

    if cfg.allocation == "sensitivity":
        with scan_progress(ctx.progress, "prune_structured: sensitivity") as progress:
            ratios, scan = sensitivity_ratios(model, inputs, plan, loss, cfg.sensitivity_grid, *target[1:], progress,
                                              cfg.search_seconds)
        plan = Plan(**{**plan.__dict__, "layer_ratios": ratios})
        info["sensitivity"] = {"layer_ratios": ratios, **scan}
        _prune_once(model, inputs, plan, cfg, ctx)
    elif target is None:
        if cfg.ratio or cfg.heads:
            _prune_once(model, inputs, plan, cfg, ctx)
    else:
        info["increments"] = _prune_to_target(model, inputs, plan, cfg, ctx, *target)

    if train.epochs:
        fit = ctx.train(model, train, description="prune_structured")
        info["train"] = fit.summary()
    heads = attention_heads(model)
    if not removed and count_params(model) == params0:
        raise SlimkitError("prune_structured removed nothing: every prunable layer is kept at its width (layers "
                           "whose width is an output's, and those in 'ignore'), or the ratio is too small to "
                           "remove one channel")
    info.update({"macs_after": count_macs(model, inputs), "params_after": count_params(model),
                 "layers_changed": _widths_changed(before, model)})
    if heads0:
        info["heads"] = {"before": sum(heads0.values()), "after": sum(heads.values()), "per_layer": heads}
    return StepResult(model, info=info, structure=structure_diff(before, model, removed))


def _prune_once(model, inputs, plan, cfg, ctx) -> None:
    from slimkit.techniques.pruning.structured import StructuredPruner

    pruner = StructuredPruner(model, inputs, plan)
    if cfg.criterion == "taylor":
        accumulate_gradients(model, ctx, cfg.score_batches, cfg.finetune.batch_size)
    pruner.step()
    model.zero_grad(set_to_none=True)


def _prune_to_target(model, inputs, plan, cfg, ctx, kind: str, measure, budget: float) -> dict[str, Any]:
    """Increase the ratio in ``cfg.steps`` increments up to ``max_ratio`` until ``measure`` falls
    to ``budget``; returns the trajectory."""
    from slimkit.techniques.pruning.structured import StructuredPruner

    steps = cfg.steps
    pruner = StructuredPruner(model, inputs, type(plan)(**{**plan.__dict__, "ratio": cfg.max_ratio, "steps": steps}))
    trail = []
    for i in range(steps):
        if cfg.criterion == "taylor":
            accumulate_gradients(model, ctx, cfg.score_batches, cfg.finetune.batch_size)
        pruner.step()
        value = measure(model)
        trail.append(round(value, 4) if isinstance(value, float) else value)
        if value <= budget:
            break
    model.zero_grad(set_to_none=True)
    if trail[-1] > budget:
        raise SlimkitError(f"prune_structured: {kind} still {trail[-1]} after pruning every layer to max_ratio "
                           f"{cfg.max_ratio}; the target {budget:.4g} is out of reach (raise max_ratio, or lower "
                           "the target)")
    return {"measure": kind, "budget": budget, "trail": trail, "ratio_reached": round(cfg.max_ratio * len(trail) / steps, 4)}


def _widths_changed(before: dict[str, Any], model: nn.Module) -> dict[str, list[int]]:
    """{layer: [out width before, after]} for the layers whose output width changed."""
    out = {}
    for name, module in model.named_modules():
        attr = "out_channels" if isinstance(module, nn.modules.conv._ConvNd) else \
            "out_features" if isinstance(module, nn.Linear) else None
        if attr is None:
            continue
        old = before["attrs"].get(name, {}).get(attr)
        if old is not None and old != getattr(module, attr):
            out[name] = [old, getattr(module, attr)]
    return out
