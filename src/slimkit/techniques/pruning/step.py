"""The ``prune`` recipe step (unstructured and N:M): masks, fine-tuning through the one loop with
the masks held, then the pruned weights stored as bitmask + values so the bytes fall."""

from __future__ import annotations

import re
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field, field_validator, model_validator

from slimkit.tasks.context import Context
from slimkit.core.errors import ConfigError
from slimkit.core.config import Config
from slimkit.core.step import StepResult, register_step, restoring
from slimkit.encoding.twins import plain_type
from slimkit.train.config import TrainingStepConfig, finetune_config, keep_last_epoch

_KINDS = {"linear": nn.Linear, "conv": nn.Conv2d}


PruneFinetune = finetune_config("PruneFinetune", epochs=Field(0, ge=0, description="fine-tuning epochs with the "
                                                             "masks held (0: prune only)"), lr=5e-4)


class PruneConfig(TrainingStepConfig):
    sparsity: float | None = Field(None, gt=0, lt=1, description="share of the pruned layers' weights set to zero "
                                                                 "(N:M: implied by the pattern)")
    pattern: str = Field("unstructured", description="unstructured, or N:M (e.g. 2:4): n kept in every m "
                                                     "consecutive weights of a row")
    criterion: Literal["magnitude", "movement", "random"] = Field(
        "magnitude", description="magnitude |w|; movement (weights training pushes away from zero; needs "
                                 "fine-tuning and the cubic schedule); random (a control)")
    scope: Literal["global", "layer"] = Field("global", description="global: one threshold over all pruned "
                                                                    "layers; layer: the same sparsity in each")
    schedule: Literal["oneshot", "cubic"] = Field("oneshot", description="oneshot: prune, then fine-tune; cubic: "
                                                                         "Zhu & Gupta's gradual schedule during "
                                                                         "fine-tuning")
    schedule_end: float = Field(0.75, gt=0, le=1, description="cubic: share of the fine-tuning steps after which "
                                                              "the final sparsity holds")
    mask_updates: int = Field(20, ge=1, description="cubic: how many times the masks are recomputed")
    finetune: PruneFinetune = Field(default_factory=PruneFinetune,
                                    description="fine-tuning with the masks held (schedule cubic: keep_best is off, "
                                                "an earlier epoch is less sparse)")
    layers: list[Literal["linear", "conv"]] = Field(["linear", "conv"], min_length=1,
                                                    description="layer kinds to prune")
    skip: list[str] = Field(default_factory=list, description="module paths left dense")
    encode: bool = Field(True, description="store pruned weights as bitmask + values (bytes fall with sparsity)")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        if v != "unstructured" and not re.fullmatch(r"[1-9]\d*:[1-9]\d*", v):
            raise ValueError(f"must be 'unstructured' or N:M such as '2:4', got {v!r}")
        if v != "unstructured":
            n, m = map(int, v.split(":"))
            if not n < m:
                raise ValueError(f"N:M needs n < m, got {v!r}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _cubic_keeps_last(cls, data: Any) -> Any:
        """Under the cubic schedule fine-tuning keeps its last epoch unless told otherwise."""
        return keep_last_epoch(data) if isinstance(data, dict) and data.get("schedule") == "cubic" else data

    @model_validator(mode="after")
    def _consistent(self) -> "PruneConfig":
        if self.pattern == "unstructured" and self.sparsity is None:
            raise ValueError("sparsity is required for unstructured pruning")
        if self.pattern != "unstructured":
            if self.sparsity is not None:
                raise ValueError(f"pattern {self.pattern} fixes the sparsity; leave sparsity out")
            if self.schedule != "oneshot" or self.criterion == "movement":
                raise ValueError("N:M masks are cut once (schedule: oneshot, criterion magnitude or random)")
        if self.criterion == "movement" and (self.schedule != "cubic" or self.finetune.epochs == 0):
            raise ValueError("criterion movement ranks weights by how training moves them: it needs "
                             "finetune.epochs > 0 and schedule: cubic")
        if self.schedule == "cubic" and self.finetune.epochs == 0:
            raise ValueError("schedule cubic prunes during fine-tuning: it needs finetune.epochs > 0")
        if self.schedule == "cubic" and self.finetune.keep_best:
            raise ValueError("finetune.keep_best with schedule cubic would restore an epoch before the final "
                             "sparsity: leave it out")
        return self

    @property
    def nm(self) -> tuple[int, int] | None:
        return None if self.pattern == "unstructured" else tuple(map(int, self.pattern.split(":")))

    @property
    def target_sparsity(self) -> float:
        if self.nm is None:
            return float(self.sparsity)
        n, m = self.nm
        return 1 - n / m


def prunable_weights(model: nn.Module, kinds: list[str], skip: list[str]) -> dict[str, nn.Parameter]:
    """{module name: weight} of the layers of ``kinds`` not in ``skip`` (unknown names are errors)."""
    modules = dict(model.named_modules())
    unknown = [name for name in skip if name not in modules]
    if unknown:
        raise ConfigError(f"prune: skip names no module: {unknown}")
    types = tuple(_KINDS[k] for k in kinds)
    return {name: m.weight for name, m in modules.items() if plain_type(m) in types and name not in skip}


def mask_function(cfg: PruneConfig):
    from slimkit.techniques.pruning.criteria import masks_from_scores, nm_mask

    if cfg.nm is not None:
        n, m = cfg.nm
        return lambda scores, sparsity: {name: nm_mask(s, n, m) for name, s in scores.items()}
    return lambda scores, sparsity: masks_from_scores(scores, sparsity, cfg.scope)


def sparsity_report(weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    zeros = {name: int((w == 0).sum()) for name, w in weights.items()}
    total = sum(w.numel() for w in weights.values())
    return {"sparsity": sum(zeros.values()) / total if total else 0.0,
            "sparsity_per_layer": {name: round(zeros[name] / w.numel(), 4) for name, w in weights.items()}}


class SparseRecord(Config):
    nnz: int = Field(ge=0, description="weights kept (the length of the values buffer)")


class PruneStructure(Config):
    encoded: dict[str, SparseRecord] = Field(description="the layers stored as bitmask + values")


def restore_prune(model: nn.Module, structure: PruneStructure) -> nn.Module:
    """Re-create the bitmask + values layers of the recorded sizes (the encodings then load)."""
    from slimkit.encoding import densify_
    from slimkit.techniques.pruning.sparse import encode_sparse_

    densify_(model, "sparse")  # an earlier prune step's layers: this step's encoding replaces theirs
    with restoring("prune", model, structure.encoded):
        encode_sparse_(model, list(structure.encoded), {n: r.nnz for n, r in structure.encoded.items()})
    return model


@register_step("prune", config=PruneConfig, restore=restore_prune, structure=PruneStructure)
def prune(model: nn.Module, cfg: PruneConfig, ctx: Context) -> StepResult:
    """Unstructured or N:M pruning of Linear and Conv2d weights (magnitude, movement or random
    scores, global or per-layer), optionally gradual and fine-tuned with the masks held, then
    stored sparse (bitmask + values)."""
    weights, callback, info = start_pruning(model, cfg, ctx.seed)
    if cfg.finetune.epochs:
        fit = ctx.train(model, cfg.finetune, callbacks=[callback], description="prune")
        info["train"] = fit.summary()
    else:
        callback.prune_to(cfg.target_sparsity)
    return finish_pruning(model, cfg, weights, info)


def start_pruning(model: nn.Module, cfg: PruneConfig, seed: int):
    """The weights ``cfg`` prunes and the callback that holds their masks through training (the
    ``prune`` step's loop, or a user's: ``slimkit.api.prune_hooks``), with the step's info so far."""
    from slimkit.encoding import densify_
    from slimkit.techniques.pruning.callback import PruningCallback

    densify_(model, "sparse")  # pruning a pruned model again (iterative pruning) starts from dense layers
    weights = prunable_weights(model, cfg.layers, cfg.skip)
    if not weights:
        raise ConfigError(f"prune: the model has no {' or '.join(cfg.layers)} layer to prune")
    if cfg.nm is not None:
        _check_nm_rows(weights, cfg.nm[1])
    callback = PruningCallback(weights, cfg.target_sparsity, mask_function(cfg), criterion=cfg.criterion,
                               schedule=cfg.schedule, end=cfg.schedule_end, updates=cfg.mask_updates, seed=seed)
    info: dict[str, Any] = {"pattern": cfg.pattern, "criterion": cfg.criterion, "scope": cfg.scope,
                            "schedule": cfg.schedule, "layers_pruned": len(weights)}
    return weights, callback, info


def finish_pruning(model: nn.Module, cfg: PruneConfig, weights: dict[str, nn.Parameter],
                   info: dict[str, Any]) -> StepResult:
    """The masks are final: report the sparsity and store the layers sparse (``cfg.encode``)."""
    return store_sparse(model, weights, cfg.encode, info)


def store_sparse(model: nn.Module, weights: dict[str, torch.Tensor], encode: bool, info: dict[str, Any]) -> StepResult:
    """A step's result once its zeros are final: the sparsity report (with the nonzero count) in
    ``info``, and with ``encode`` the layers stored as bitmask + values (``PruneStructure``,
    restored by ``restore_prune``). Shared by every step that ends sparse."""
    from slimkit.techniques.pruning.sparse import encode_sparse_

    info.update(sparsity_report(weights))
    info["nonzero_weights"] = sum(int((w != 0).sum()) for w in weights.values())
    # bits of each stored value: float weights, whatever their encoding (the bitmask is in the bytes)
    info["bits_per_layer"] = {name: torch.finfo(w.dtype).bits if w.is_floating_point() else w.element_size() * 8
                              for name, w in weights.items()}
    structure = None
    if encode:
        encoded = encode_sparse_(model, list(weights))
        stored = sum(v["bytes"] for v in encoded.values())
        dense = sum(v["dense_bytes"] for v in encoded.values())
        info.update({"encoded_layers": len(encoded), "encoded_bytes": stored, "dense_bytes": dense,
                     "encoded_ratio": stored / dense if dense else None})
        if encoded:
            structure = PruneStructure(encoded={name: SparseRecord(nnz=v["nnz"]) for name, v in encoded.items()})
    return StepResult(model, info=info, structure=structure)


def _check_nm_rows(weights: dict[str, torch.Tensor], m: int) -> None:
    bad = [f"{name} ({w[0].numel()} per row)" for name, w in weights.items() if w[0].numel() % m]
    if bad:
        raise ConfigError(f"prune: N:M groups of {m} do not divide the rows of {', '.join(bad)}; skip those layers")
