"""The ``variational_dropout`` recipe step: sparse variational dropout on the incoming model's
Linear and Conv2d layers, trained through the one loop (the KL term as a loss term, its warm-up
as a callback), then the weights with ``log alpha`` above the threshold removed and the rest
stored as bitmask + values (the ``prune`` step's encoding and restore)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field

from slimkit.core.errors import ConfigError
from slimkit.core.step import StepResult, register_step
from slimkit.tasks.context import Context
from slimkit.techniques.pruning.step import PruneStructure, prunable_weights, restore_prune, store_sparse
from slimkit.train.config import TrainingStepConfig, finetune_config

VariationalFinetune = finetune_config(
    "VariationalFinetune", epochs=Field(30, ge=1, description="training epochs of the variational model"),
    keep_best=Field(False, description="restore the best validation epoch (an earlier epoch is less sparse)"))


class KLTrainingConfig(TrainingStepConfig):
    """What every step trained on an evidence lower bound shares: the KL term's weight and warm-up."""

    kl_weight: float = Field(1.0, gt=0, description="weight of the KL term at the end of its warm-up (1: the ELBO)")
    warmup: float = Field(0.3, ge=0, le=1, description="share of the training steps over which the KL weight rises "
                                                       "linearly from 0")


class VariationalDropoutConfig(KLTrainingConfig):
    threshold: float = Field(3.0, ge=-10, le=10, description="weights with log alpha above this are removed "
                                                             "(3: dropout rate above 0.95)")
    init_log_sigma2: float = Field(-10.0, description="initial log sigma^2 of every weight (small: start near the "
                                                      "incoming weights)")
    layers: list[Literal["linear", "conv"]] = Field(["linear", "conv"], min_length=1, description="layer kinds made "
                                                                                                  "variational")
    skip: list[str] = Field(default_factory=list, description="module paths left as they are")
    encode: bool = Field(True, description="store the sparse weights as bitmask + values")
    finetune: VariationalFinetune = Field(default_factory=VariationalFinetune,
                                          description="training of the variational model (Adam; keep_best off)")


@register_step("variational_dropout", config=VariationalDropoutConfig, restore=restore_prune, structure=PruneStructure)
def variational_dropout(model: nn.Module, cfg: VariationalDropoutConfig, ctx: Context) -> StepResult:
    """Sparse variational dropout (Molchanov et al. 2017): per-weight dropout rates learnt on the
    ELBO with a log-uniform prior; weights whose rate tends to 1 are removed, the rest stored sparse."""
    from slimkit.encoding import densify_
    from slimkit.techniques.bayesian.variational_dropout import (KLWarmup, VariationalKL, make_plain_,
                                                                  make_variational_)

    densify_(model, "sparse")
    names = list(prunable_weights(model, cfg.layers, cfg.skip))
    if not names:
        raise ConfigError(f"variational_dropout: the model has no {' or '.join(cfg.layers)} layer")
    try:
        layers = make_variational_(model, names, cfg.threshold, cfg.init_log_sigma2)
    except ValueError as err:
        raise ConfigError(f"variational_dropout: {err}") from None
    term = VariationalKL(layers, rows=len(ctx.data.train))
    fit = ctx.train(model, cfg.finetune, loss_terms=[term], callbacks=[KLWarmup(term, cfg.kl_weight, cfg.warmup)],
                    description="variational dropout")
    with torch.no_grad():
        log_alpha = {n: layer.log_alpha() for n, layer in layers.items()}
        stats = {n: {"kept": int((la <= cfg.threshold).sum()), "weights": la.numel(),
                     "median_log_alpha": round(float(la.median()), 3)} for n, la in log_alpha.items()}
        kl = float(sum(layer.kl() for layer in layers.values()))
    weights = make_plain_(model, layers)
    info: dict[str, Any] = {"threshold": cfg.threshold, "layers_variational": len(layers), "per_layer": stats,
                            "final_kl": kl, "train": fit.summary()}
    result = store_sparse(model, weights, cfg.encode, info)
    total = sum(s["weights"] for s in stats.values())
    kept = sum(s["kept"] for s in stats.values())
    result.info["compression"] = total / max(kept, 1)  # weights of the layers / weights kept
    return result
