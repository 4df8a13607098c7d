"""The ``sparse_train`` and ``lottery`` recipe steps: sparse from the start, stored sparse.

``sparse_train`` trains under a mask chosen before training (``static``: random; ``snip``:
connection sensitivity at initialisation) or moved during it (``rigl``), from the baseline's
initial weights (``start: initial``: sparse training from scratch, the default) or from the
incoming weights (``start: current``).

``lottery`` (Frankle & Carbin 2019) is iterative magnitude pruning with rewinding: the incoming
model is the trained dense network (round 0: the run's baseline); each round removes the same
share of the surviving weights by magnitude, rewinds the survivors to the baseline's initial
weights (or, ``rewind_steps: k``, to the weights after k steps of dense training from them, as
Frankle et al. 2020 recommend for deeper networks) and retrains with the mask held. ``control``
trains the ticket's mask from a fresh random initialisation (``reinit``) or a random mask of the
ticket's per-layer sparsity from the rewind point (``random_mask``): the two controls the paper
compares against.

Both store the result as ``prune`` does (bitmask + values, ``PruneStructure``), so restore,
measurement and deployment are the prune step's.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field, model_validator

from slimkit.core.errors import ConfigError
from slimkit.core.step import StepResult, register_step
from slimkit.tasks.context import Context
from slimkit.techniques.pruning.step import PruneStructure, prunable_weights, restore_prune, store_sparse
from slimkit.train.callbacks import Callback, FitState
from slimkit.train.config import TrainingStepConfig, finetune_config, keep_last_epoch

SparseFinetune = finetune_config("SparseFinetune", epochs=Field(10, ge=1, description="training epochs under the mask"))


class _SparseCommon(TrainingStepConfig):
    sparsity: float = Field(gt=0, lt=1, description="share of the selected layers' weights that are zero at the end")
    layers: list[Literal["linear", "conv"]] = Field(["linear", "conv"], min_length=1, description="layer kinds made sparse")
    skip: list[str] = Field(default_factory=list, description="module paths left dense")
    encode: bool = Field(True, description="store the sparse weights as bitmask + values (bytes fall with sparsity)")


class SparseTrainConfig(_SparseCommon):
    method: Literal["static", "snip", "rigl"] = Field(
        description="static: a random mask held through training; snip: the mask of the largest |grad * w| at "
                    "initialisation; rigl: drop by magnitude, grow by gradient during training")
    distribution: Literal["uniform", "erk"] = Field(
        "erk", description="static and rigl: how the density is shared among layers (erk: Erdős–Rényi-Kernel, "
                           "small layers denser; uniform: the same in each); snip ranks all layers together")
    start: Literal["initial", "current"] = Field(
        "initial", description="initial: the baseline's initial weights (sparse training from scratch); current: "
                               "the incoming weights")
    interval: int = Field(100, ge=1, description="rigl: optimizer steps between mask updates")
    drop_fraction: float = Field(0.3, gt=0, lt=1, description="rigl: share of each layer's active weights moved at the "
                                                              "first update (cosine decay to 0)")
    end: float = Field(0.75, gt=0, le=1, description="rigl: share of training after which the mask stays")
    snip_batches: int = Field(4, ge=1, description="snip: training batches the sensitivities are summed over")
    finetune: SparseFinetune = Field(default_factory=SparseFinetune,
                                     description="training under the mask (rigl: keep_best is off, an earlier epoch's "
                                                 "weights do not fit the final mask)")

    @model_validator(mode="before")
    @classmethod
    def _rigl_keeps_last(cls, data: Any) -> Any:
        """RigL moves its mask: unless told otherwise, the last epoch is kept."""
        return keep_last_epoch(data) if isinstance(data, dict) and data.get("method") == "rigl" else data

    @model_validator(mode="after")
    def _rigl_without_keep_best(self) -> "SparseTrainConfig":
        if self.method == "rigl" and self.finetune.keep_best:
            raise ValueError("finetune.keep_best with method rigl would restore an epoch's weights under a mask "
                             "that has moved since: leave it out")
        return self


LotteryFinetune = finetune_config("LotteryFinetune", epochs=Field(10, ge=1, description="training epochs of each round"))


class LotteryConfig(_SparseCommon):
    rounds: int = Field(5, ge=1, description="pruning rounds; each removes 1 - (1 - sparsity)^(1/rounds) of the "
                                             "surviving weights")
    scope: Literal["global", "layer"] = Field("global", description="global: one magnitude threshold over all layers; "
                                                                    "layer: the same share in each")
    rewind_steps: int = Field(0, ge=0, description="0: rewind to the initial weights; k: to the weights after k "
                                                   "optimizer steps of dense training from them (late rewinding; the "
                                                   "step then trains round 0 itself)")
    control: Literal["none", "reinit", "random_mask"] = Field(
        "none", description="reinit: the ticket's mask from a fresh random initialisation; random_mask: a random mask "
                            "of the ticket's per-layer sparsity from the rewind point (the paper's controls)")
    finetune: LotteryFinetune = Field(default_factory=LotteryFinetune, description="training of each round")


def _initial_state(model: nn.Module, ctx: Context, step: str) -> dict[str, torch.Tensor]:
    """The baseline's initial weights, checked against ``model``'s tensors."""
    from slimkit.core.io import load_state_dict

    if ctx.initial_weights is None:
        raise ConfigError(f"{step}: no initial weights to start from (a recipe run keeps the baseline's; in code "
                          "pass initial_weights=the state dict before training; "
                          "sparse_train can also use start: current)")
    state = load_state_dict(ctx.initial_weights)
    own = model.state_dict()
    mismatched = sorted(k for k in own if k not in state or state[k].shape != own[k].shape)
    if mismatched:
        raise ConfigError(f"{step}: the model no longer matches the baseline's initial weights ({mismatched[:3]}...): "
                          "put this step before steps that change the model's structure")
    return {k: state[k] for k in own}


def _dense_(model: nn.Module) -> None:
    from slimkit.encoding import densify_

    densify_(model, "sparse")


@register_step("sparse_train", config=SparseTrainConfig, restore=restore_prune, structure=PruneStructure)
def sparse_train(model: nn.Module, cfg: SparseTrainConfig, ctx: Context) -> StepResult:
    """Sparse training: a static random, SNIP or RigL mask held through training from the initial
    (or incoming) weights, then stored sparse."""
    from slimkit.techniques.sparse_training.masks import MaskedTraining, RigL, random_masks, snip_masks

    _dense_(model)
    if cfg.start == "initial":
        model.load_state_dict(_initial_state(model, ctx, "sparse_train"))
    weights = prunable_weights(model, cfg.layers, cfg.skip)
    if not weights:
        raise ConfigError(f"sparse_train: the model has no {' or '.join(cfg.layers)} layer to make sparse")
    density = 1 - cfg.sparsity
    if cfg.method == "snip":
        batches = [(tuple(t.to(ctx.device) for t in inputs), targets.to(ctx.device)) for inputs, targets
                   in itertools.islice(ctx.data.train.batches(cfg.finetune.batch_size), cfg.snip_batches)]
        masks = snip_masks(model, weights, batches, ctx.task.loss, density)
        callback: MaskedTraining = MaskedTraining(weights, masks)
    else:
        masks = random_masks(weights, density, distribution=cfg.distribution, seed=ctx.seed)
        callback = MaskedTraining(weights, masks) if cfg.method == "static" else \
            RigL(weights, masks, interval=cfg.interval, drop_fraction=cfg.drop_fraction, end=cfg.end)
    fit = ctx.train(model, cfg.finetune, callbacks=[callback], description=f"sparse_train ({cfg.method})")
    info: dict[str, Any] = {"method": cfg.method, "start": cfg.start, "layers_sparse": len(weights),
                            "train": fit.summary()}
    if cfg.method != "snip":
        info["distribution"] = cfg.distribution
    if isinstance(callback, RigL):
        info.update({"mask_updates": callback.updates, "weights_regrown": callback.changed})
    return store_sparse(model, weights, cfg.encode, info)


class _Capture(Callback):
    """Keeps a copy of the model's state after optimizer step ``at``."""

    def __init__(self, at: int) -> None:
        self.at, self.state = at, None

    def on_step_end(self, state: FitState) -> None:
        if state.step + 1 == self.at:
            self.state = copy.deepcopy(state.model.state_dict())


@register_step("lottery", config=LotteryConfig, restore=restore_prune, structure=PruneStructure)
def lottery(model: nn.Module, cfg: LotteryConfig, ctx: Context) -> StepResult:
    """Lottery tickets: iterative magnitude pruning, rewinding the survivors to the initial (or an
    early) weights each round; controls: the ticket re-initialised, or a random mask."""
    from slimkit.techniques.pruning.criteria import masks_from_scores
    from slimkit.techniques.sparse_training.masks import MaskedTraining, random_masks

    _dense_(model)
    initial = _initial_state(model, ctx, "lottery")
    rounds: list[dict[str, Any]] = []
    if cfg.rewind_steps:  # round 0 here: dense training from the initial weights, the rewind point kept
        model.load_state_dict(initial)
        capture = _Capture(cfg.rewind_steps)
        fit = ctx.train(model, cfg.finetune, callbacks=[capture], description="lottery round 0 (dense)")
        if capture.state is None:
            raise ConfigError(f"lottery: rewind_steps {cfg.rewind_steps} is past the {fit.steps} steps of a round")
        rewind = capture.state
        rounds.append({"round": 0, "density": 1.0, "val_quality": fit.best_val})
    else:
        rewind = initial
    weights = prunable_weights(model, cfg.layers, cfg.skip)
    if not weights:
        raise ConfigError(f"lottery: the model has no {' or '.join(cfg.layers)} layer to prune")
    keep_per_round = (1 - cfg.sparsity) ** (1 / cfg.rounds)
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    for r in range(1, cfg.rounds + 1):
        # prune: the surviving weights of smallest trained magnitude (pruned ones are zero: never kept)
        target = 1 - keep_per_round ** r if r < cfg.rounds else cfg.sparsity
        masks = masks_from_scores({n: w.detach().abs() * masks[n] for n, w in weights.items()}, target, cfg.scope)
        last = r == cfg.rounds
        if last and cfg.control == "reinit":  # the ticket's mask, fresh random weights
            torch.manual_seed(ctx.seed + 7919)
            start = ctx.task.build_model().state_dict()
        else:
            start = rewind
        if last and cfg.control == "random_mask":
            densities = {n: float(m.float().mean()) for n, m in masks.items()}
            masks = random_masks(weights, densities, seed=ctx.seed + 7919)
        model.load_state_dict(start)
        fit = ctx.train(model, cfg.finetune, callbacks=[MaskedTraining(weights, masks)],
                        description=f"lottery round {r}/{cfg.rounds}")
        rounds.append({"round": r, "density": sum(int(m.sum()) for m in masks.values())
                       / sum(m.numel() for m in masks.values()), "val_quality": fit.best_val})
    info: dict[str, Any] = {"rounds": rounds, "scope": cfg.scope, "rewind_steps": cfg.rewind_steps,
                            "control": cfg.control, "layers_pruned": len(weights)}
    return store_sparse(model, weights, cfg.encode, info)

