"""The ``early_exit`` recipe step: exit heads attached to a chain-of-children backbone
(``exits.py``), trained jointly with it or on the frozen backbone, and one confidence threshold
calibrated on the validation rows to keep quality within a budget (shared by the exits, or one per exit)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field, model_validator

from slimkit.core.config import Config
from slimkit.core.errors import ConfigError
from slimkit.core.step import StepResult, register_step
from slimkit.tasks.context import Context
from slimkit.train.callbacks import Callback, FitState
from slimkit.train.config import TrainingStepConfig, finetune_config, keep_last_epoch

ExitFinetune = finetune_config("ExitFinetune", epochs=Field(10, ge=1, description="training epochs with the exits"),
                               lr=1e-3)


class EarlyExitConfig(TrainingStepConfig):
    after: list[str] | None = Field(None, description="children (of an nn.Sequential) or submodules (of any other "
                                                      "model) after which an exit goes (default: `exits` points "
                                                      "spread evenly over the MACs, among the children or the "
                                                      "entries of the model's layer list)")
    exits: int = Field(2, ge=1, le=8, description="exits besides the final one, when `after` is not given")
    head: Literal["conv", "strided", "spatial", "pool"] = Field(
        "strided", description="heads on feature maps: strided (a 3x3 conv-BN-ReLU at stride 2, 2x2 pooling, "
                               "Linear), conv (that conv at stride 1, global pooling, Linear: BranchyNet's, 4x the "
                               "MACs), spatial (4x4 pooling, Linear) or pool (global pooling, Linear)")
    criterion: Literal["confidence", "entropy", "patience", "auto"] = Field(
        "confidence", description="a row leaves at the first exit whose largest softmax probability (or 1 - "
                                  "normalised entropy) reaches the threshold; patience (PABEE): once that many "
                                  "exits in a row before it agreed with its prediction; auto: each of the three "
                                  "calibrated on the validation rows, the one with the lowest mean cost there kept")
    budget: float = Field(0.005, ge=0, le=1, description="quality the exits may lose on the validation rows")
    thresholds: Literal["shared", "per_exit"] = Field(
        "shared", description="shared: one threshold for every exit (the lowest within the budget); per_exit: "
                              "from it, each exit's own, moved greedily where it saves the most MACs per unit of "
                              "accuracy spent (each exit's cost counted on a validation row)")
    train: Literal["joint", "heads"] = Field("joint", description="joint: backbone and heads train together; heads: "
                                                                  "the backbone is frozen (its outputs unchanged)")
    exit_weight: float = Field(1.0, gt=0, description="weight of each exit's cross-entropy")
    distill: float = Field(0.0, ge=0, description="weight of each exit's distillation from the final exit")
    temperature: float = Field(2.0, gt=0, description="softmax temperature of that distillation")
    finetune: ExitFinetune = Field(default_factory=ExitFinetune, description="training with the exits "
                                                                           "(train: heads keeps the last epoch)")

    @model_validator(mode="before")
    @classmethod
    def _heads_keep_the_last_epoch(cls, data: Any) -> Any:
        """Validation scores the final exit; with the backbone frozen it never changes, so keep_best
        would restore the heads of the first epoch: heads-only training keeps its last epoch."""
        return keep_last_epoch(data) if isinstance(data, dict) and data.get("train") == "heads" else data

    @model_validator(mode="after")
    def _heads_without_keep_best(self) -> "EarlyExitConfig":
        if self.train == "heads" and self.finetune.keep_best:
            raise ValueError("finetune.keep_best with train: heads would restore the first epoch's heads (validation "
                             "scores the frozen final exit, which never changes): leave it out")
        return self


class HeadRecord(Config):
    after: int = Field(ge=0, description="segment (child) index the head follows (0 for hooked exits)")
    module: str | None = Field(None, description="hooked exits: the submodule whose output the head reads")
    kind: Literal["conv2d", "strided2d", "spatial2d", "pool2d", "tokens", "vector", "pooler"] = Field(
        description="what the head holds: a conv block then global pooling, a strided conv block then 2x2 "
                    "pooling, 4x4 pooling, global pooling, a token mean, a Linear alone, or a masked token mean, "
                    "dense-tanh and Linear")
    features: int = Field(ge=1, description="channels (feature maps) or features the head reads")
    classes: int = Field(ge=1, description="classes it predicts")


class EarlyExitStructure(Config):
    heads: list[HeadRecord] = Field(min_length=1, description="the exit heads, in order")
    criterion: Literal["confidence", "entropy", "patience"] = Field(description="what the thresholds compare")
    hooked: bool = Field(False, description="heads hooked onto submodules of the model (not a chain of children)")
    mask_input: int | None = Field(None, description="hooked exits: the input holding the attention mask")


def _kind(head: nn.Module) -> str:
    from slimkit.techniques.dynamic.exits import TokenHead, TokenMean

    if isinstance(head, TokenHead):
        return "pooler"
    if isinstance(head, nn.Linear):
        return "vector"
    if isinstance(head[0], TokenMean):
        return "tokens"
    if isinstance(head[0], nn.Conv2d):
        return "strided2d" if head[0].stride[0] == 2 else "conv2d"
    return "spatial2d" if head[0].output_size in (4, (4, 4)) else "pool2d"


KINDS = {"conv2d": "conv", "strided2d": "strided", "spatial2d": "spatial", "pool2d": "pool"}


def restore_early_exit(model: nn.Module, structure: EarlyExitStructure) -> nn.Module:
    """The backbone's children as segments and empty heads of the recorded sizes (the thresholds
    and weights come from the checkpoint)."""
    from slimkit.core.errors import CheckpointError
    from slimkit.techniques.dynamic.exits import EarlyExitNetwork, HookedExitNetwork, TokenHead, exit_head

    if structure.hooked:
        modules = dict(model.named_modules())
        hooked = {}
        for r in structure.heads:
            if r.module not in modules:
                raise CheckpointError(f"early_exit step's recorded head after {r.module!r} names no submodule of the "
                                      "model")
            hooked[r.module] = TokenHead(r.features, r.classes) if r.kind == "pooler" else exit_head(
                torch.zeros(_example_shape(r)), r.classes, KINDS.get(r.kind, "conv"))
        return HookedExitNetwork(model, hooked, structure.criterion, structure.mask_input)
    if not isinstance(model, nn.Sequential):
        raise CheckpointError(f"early_exit step's recorded structure needs an nn.Sequential, got {type(model).__name__}")
    children = list(model.children())
    heads = {}
    for r in structure.heads:
        if r.after >= len(children) - 1:
            raise CheckpointError(f"early_exit step's recorded head after child {r.after} does not fit a model of "
                                  f"{len(children)} children")
        if r.kind == "pooler":
            raise CheckpointError("early_exit step's recorded pooler head belongs to hooked exits")
        heads[r.after] = exit_head(torch.zeros(_example_shape(r)), r.classes, KINDS.get(r.kind, "conv"))
    return EarlyExitNetwork(children, heads, structure.criterion)


def _example_shape(r: HeadRecord) -> tuple[int, ...]:
    if r.kind in KINDS:
        return (1, r.features, 4, 4)
    return {"tokens": (1, 1, r.features), "vector": (1, r.features)}[r.kind]


class FrozenBackbone(Callback):
    """``train: heads``: the segments' parameters take no gradient and their norm layers keep
    their running statistics (evaluation mode in every training batch)."""

    def __init__(self, segments: nn.Module) -> None:
        self.segments = segments
        self.was: list[bool] = []

    def on_fit_start(self, state: FitState) -> None:
        self.was = [p.requires_grad for p in self.segments.parameters()]
        for p in self.segments.parameters():
            p.requires_grad_(False)

    def transform_batch(self, state, inputs, targets, extras):
        self.segments.eval()
        return inputs, targets, extras

    def on_fit_end(self, state: FitState) -> None:
        for p, was in zip(self.segments.parameters(), self.was):
            p.requires_grad_(was)


@register_step("early_exit", config=EarlyExitConfig, restore=restore_early_exit, structure=EarlyExitStructure)
def early_exit(model: nn.Module, cfg: EarlyExitConfig, ctx: Context) -> StepResult:
    """Early exits (BranchyNet-style heads after chosen children of an ``nn.Sequential``, or hooked
    onto a layer list), trained jointly or on the frozen backbone, thresholds calibrated on
    validation rows (one shared, or one per exit)."""
    from slimkit.techniques.dynamic import exits as ex

    inputs = tuple(t[:2].to(ctx.device) for t in ctx.data.train.inputs)
    with torch.no_grad():
        logits = model.eval()(*inputs)
    targets = ctx.data.val.targets
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or targets.dim() != 1 \
            or targets.is_floating_point():
        raise ConfigError("early_exit: exits classify: the model must return [rows, classes] logits and the "
                          "targets be class indices (calibration keeps top-1 accuracy within the budget)")
    classes = int(logits.shape[-1])
    hooked = not isinstance(model, nn.Sequential)
    mask_input = ctx.data.train.mask_input
    criteria: list[ex.Criterion] = list(CRITERIA) if cfg.criterion == "auto" else [cfg.criterion]
    try:
        if hooked:
            net = ex.attach_hooked_exits(model, inputs, classes, cfg.after, cfg.exits, criteria[0], cfg.head,
                                         mask_input)
        else:
            net = ex.attach_exits(model, inputs, classes, cfg.after, cfg.exits, criteria[0], cfg.head)
    except ValueError as err:
        raise ConfigError(f"early_exit: {err}") from None
    term = ex.ExitLoss([cfg.exit_weight] * len(net.points), cfg.distill, cfg.temperature)
    callbacks = [FrozenBackbone(net.model if hooked else net.segments)] if cfg.train == "heads" else []
    fit = ctx.train(net, cfg.finetune, loss_terms=[term], callbacks=callbacks,
                    task_loss_weight=0.0 if cfg.train == "heads" else 1.0, description="early exits")
    val = ctx.data.val
    costs = ex.exit_costs(net, tuple(t[:1].to(ctx.device) for t in val.inputs)) \
        if cfg.thresholds == "per_exit" or len(criteria) > 1 else None
    result, tried = _calibrate(net, criteria, _exit_logits(net, val, ctx.device), val.targets.to(ctx.device),
                               cfg.budget, costs, cfg.thresholds == "per_exit")
    test_logits = _exit_logits(net, ctx.data.test, ctx.device)
    per_exit = [float((o.argmax(-1).cpu() == ctx.data.test.targets).float().mean()) for o in test_logits]
    info: dict[str, Any] = {
        "exits_after": list(net.points) if hooked else [list(dict(model.named_children()))[i] for i in net.points],
        "placement": "hooks (eager only)" if hooked else "segments", "criterion": net.criterion,
        **({"criteria": tried} if len(criteria) > 1 else {}),
        "threshold": result.threshold, "thresholds": result.thresholds, "exit_macs": costs,
        "val_cost": result.cost, "val_quality": result.quality, "val_full_quality": result.full_quality,
        "val_exit_shares": result.exit_shares, "test_exit_shares": ex.exit_shares(net, test_logits),
        "test_accuracy_per_exit": per_exit, "train": fit.summary()}
    if hooked:
        records = [HeadRecord(after=0, module=n, kind=_kind(net.heads[ex._key(n)]),
                              features=_features(net.heads[ex._key(n)]), classes=classes) for n in net.points]
    else:
        records = [HeadRecord(after=i, kind=_kind(net.heads[str(i)]), features=_features(net.heads[str(i)]),
                              classes=classes) for i in net.points]
    structure = EarlyExitStructure(criterion=net.criterion, heads=records, hooked=hooked,
                                   mask_input=mask_input if hooked else None)
    return StepResult(net, info=info, structure=structure)


CRITERIA = ("confidence", "entropy", "patience")


def _calibrate(net: nn.Module, criteria: list[Any], logits: list[torch.Tensor], targets: torch.Tensor, budget: float,
               costs: list[int] | None, per_exit: bool) -> tuple[Any, dict[str, dict[str, Any]]]:
    """Thresholds for each criterion on the validation rows (``logits``: every exit's); the network
    keeps the criterion whose calibration costs least per row there (the first of equals), and the
    tried ones are reported: {criterion: {thresholds, val_quality, val_cost}}."""
    from slimkit.techniques.dynamic import exits as ex

    tried, best, best_cost = {}, None, None
    for criterion in criteria:
        net.criterion = criterion
        cal = ex.calibrate(net, logits, targets, budget, costs=costs if per_exit else None)
        cost = cal.cost if cal.cost is not None else (
            None if costs is None else sum(s * c / costs[-1] for s, c in zip(cal.exit_shares, costs)))
        tried[criterion] = {"thresholds": list(cal.thresholds), "val_quality": cal.quality, "val_cost": cost}
        if best is None or (cost is not None and cost < best_cost - 1e-12):
            best, best_cost = (criterion, cal), cost
    criterion, cal = best
    net.criterion = criterion
    net.thresholds.copy_(torch.tensor(cal.thresholds, dtype=net.thresholds.dtype))
    return cal, tried


def _exit_logits(net: nn.Module, split: Any, device: torch.device, batch: int = 256) -> list[torch.Tensor]:
    """Every exit's logits for every row of ``split``."""
    parts = [net.exit_logits(*(t[i:i + batch].to(device) for t in split.inputs)) for i in range(0, len(split), batch)]
    return [torch.cat(p) for p in zip(*parts)]


def _features(head: nn.Module) -> int:
    from slimkit.techniques.dynamic.exits import TokenHead

    if isinstance(head, TokenHead):
        return head.dense.in_features
    if isinstance(head, nn.Linear):
        return head.in_features
    if isinstance(head[0], nn.Conv2d):
        return head[0].in_channels
    return head[-1].in_features // (16 if _kind(head) == "spatial2d" else 1)  # channels of the feature map
