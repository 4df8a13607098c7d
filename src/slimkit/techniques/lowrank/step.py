"""The ``factorize`` recipe step: low-rank factorization of Linear layers (truncated SVD, plain or
activation-aware) and Conv2d layers (Tucker-2 or CP), with ranks chosen per layer by a kept
weight ratio, a spectral energy, a fixed rank, or a search under a quality budget; then an
optional fine-tune through the one training loop."""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field, model_validator

from slimkit.core.config import Config
from slimkit.tasks.context import Context
from slimkit.core.errors import ConfigError
from slimkit.data.positions import batch_mask, real_positions, real_rows
from slimkit.core.step import StepResult, register_step, restoring
from slimkit.encoding.twins import plain_type
from slimkit.train.config import TrainingStepConfig, finetune_config

_KINDS = {"linear": nn.Linear, "conv": nn.Conv2d}
_SELECTIONS = ("rank", "ratio", "energy", "search")


class SearchConfig(Config):
    max_drop: float = Field(1.0, ge=0, description="largest validation quality drop (points: 100 × quality) "
                                                   "the factorized model may have before fine-tuning")
    ratios: list[float] = Field([0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], min_length=1,
                                description="kept weight fractions tried for each layer")
    samples: int = Field(512, ge=1, description="validation rows each candidate is scored on")
    seconds: float | None = Field(None, gt=0, description="stop the sensitivity scan with an error saying how far "
                                                          "it got if it runs longer than this")

    @model_validator(mode="after")
    def _ratios_in_range(self) -> "SearchConfig":
        bad = [r for r in self.ratios if not 0 < r < 1]
        if bad:
            raise ValueError(f"search ratios must lie in (0, 1), got {bad}")
        return self


FactorizeFinetune = finetune_config("FactorizeFinetune", epochs=Field(0, ge=0, description="fine-tuning epochs "
                                                                     "after factorizing"), lr=1e-4, optimizer="adamw")


class FactorizeConfig(TrainingStepConfig):
    layers: list[Literal["linear", "conv"]] = Field(["linear"], min_length=1, description="layer kinds to factorize")
    targets: list[str] = Field(default_factory=list, description="module-path patterns (fnmatch) to factorize; "
                                                                 "empty: every layer of the kinds")
    skip: list[str] = Field(default_factory=list, description="module paths left dense")
    min_weights: int = Field(1024, ge=1, description="layers with fewer weights stay dense")
    method: Literal["plain", "asvd", "whiten"] = Field("whiten", description="Linear layers: plain truncated SVD, "
                                                       "ASVD (activation-scaled columns) or SVD-LLM whitening")
    conv: Literal["tucker2", "cp"] = Field("tucker2", description="Conv2d layers: Tucker-2 or CP decomposition")
    rank: int | None = Field(None, ge=1, description="the same rank for every layer (Tucker-2: both ranks)")
    ratio: float | None = Field(None, gt=0, lt=1, description="keep this fraction of each layer's weights "
                                                              "(the default, 0.5, when no selection is given)")
    energy: float | None = Field(None, gt=0, le=1, description="smallest rank holding this share of the squared "
                                                               "singular values (of W, W·S, or the kernel's "
                                                               "channel unfoldings)")
    search: SearchConfig | None = Field(None, description="per-layer ranks searched under a quality budget")
    alpha: float = Field(0.5, ge=0, description="ASVD: exponent of the activation scaling")
    damp: float = Field(0.01, gt=0, description="whitening: diagonal damping, relative to the Gram's mean diagonal")
    calibration_samples: int = Field(256, ge=1, description="training rows whose layer inputs calibrate asvd / "
                                                            "whiten")
    iters: int = Field(100, ge=1, description="Tucker-2 (HOOI) / CP (ALS) iterations")
    finetune: FactorizeFinetune = Field(default_factory=FactorizeFinetune, description="fine-tuning after "
                                                                                        "factorizing")

    @model_validator(mode="after")
    def _one_selection(self) -> "FactorizeConfig":
        given = [k for k in _SELECTIONS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of rank, ratio, energy, search (got {', '.join(given)})")
        if self.energy is not None and self.conv == "cp" and "conv" in self.layers:
            raise ValueError("energy selects ranks from singular values, which a CP decomposition has none of: "
                             "give ratio, rank or search for cp")
        return self

    def selection(self) -> tuple[str, Any]:
        for key in _SELECTIONS:
            if getattr(self, key) is not None:
                return key, getattr(self, key)
        return "ratio", 0.5


# --------------------------------------------------------------------------------- one layer
def _weights_of(layer: nn.Module, kind: str, rank: int | tuple[int, int]) -> int:
    if kind == "svd":
        return rank * (layer.in_features + layer.out_features)
    k = layer.kernel_size[0] * layer.kernel_size[1]
    if kind == "tucker2":
        r_out, r_in = rank
        return layer.in_channels * r_in + r_in * r_out * k + r_out * layer.out_channels
    return rank * (layer.in_channels + sum(layer.kernel_size) + layer.out_channels)


def _clamp(layer: nn.Module, kind: str, rank: int | tuple[int, int]) -> int | tuple[int, int]:
    if kind == "tucker2":
        return min(rank[0], layer.out_channels), min(rank[1], layer.in_channels)
    if kind == "svd":
        return min(rank, layer.in_features, layer.out_features)
    return rank


def _rank_for(layer: nn.Module, kind: str, how: str, value: Any, spectrum) -> int | tuple[int, int]:
    from slimkit.techniques.lowrank.conv import cp_rank_for_ratio, tucker2_ranks_for_ratio
    from slimkit.techniques.lowrank.svd import rank_for_energy, rank_for_ratio

    if how == "rank":
        return _clamp(layer, kind, (value, value) if kind == "tucker2" else value)
    if how == "ratio":
        if kind == "svd":
            return rank_for_ratio(layer.out_features, layer.in_features, value)
        return tucker2_ranks_for_ratio(layer, value) if kind == "tucker2" else cp_rank_for_ratio(layer, value)
    # energy
    if kind == "svd":
        return rank_for_energy(spectrum()[1], value)
    w = layer.weight.detach().double().cpu()
    out_s = torch.linalg.svdvals(w.flatten(1))
    in_s = torch.linalg.svdvals(w.transpose(0, 1).flatten(1))
    return rank_for_energy(out_s, value), rank_for_energy(in_s, value)


class _Factorizer:
    """Builds the factorized twin of each chosen layer; SVDs computed once per layer."""

    def __init__(self, cfg: FactorizeConfig, stats: dict[str, Any], seed: int) -> None:
        self.cfg, self.stats, self.seed = cfg, stats, seed
        self._spectra: dict[str, tuple] = {}

    def spectrum(self, name: str, layer: nn.Linear):
        from slimkit.techniques.lowrank.svd import factor_spectrum

        if name not in self._spectra:
            self._spectra[name] = factor_spectrum(layer.weight, self.cfg.method, self.stats.get(name),
                                                  alpha=self.cfg.alpha, damp=self.cfg.damp)
        return self._spectra[name]

    def twin(self, name: str, layer: nn.Module, kind: str, rank: int | tuple[int, int]) -> tuple[nn.Module, dict]:
        from slimkit.techniques.lowrank.conv import cp_conv, tucker2_conv
        from slimkit.techniques.lowrank.svd import low_rank_linear, truncate

        if kind == "svd":
            u, s, vh, inverse = self.spectrum(name, layer)
            up, down = truncate(u, s, vh, inverse, rank)
            kept = float(s[:rank].pow(2).sum() / s.pow(2).sum().clamp_min(1e-300))
            return low_rank_linear(layer, up, down), {"energy_kept": kept}
        if kind == "tucker2":
            return tucker2_conv(layer, rank, self.cfg.iters), {}
        twin, error = cp_conv(layer, rank, self.cfg.iters, self.seed)
        return twin, {"kernel_relative_error": error}


def _chosen_layers(model: nn.Module, cfg: FactorizeConfig) -> dict[str, tuple[nn.Module, str]]:
    from slimkit.techniques.lowrank.conv import check_factorizable

    modules = dict(model.named_modules())
    unknown = [s for s in cfg.skip if s not in modules]
    if unknown:
        raise ConfigError(f"factorize: skip names no module: {unknown}")
    kinds = tuple(_KINDS[k] for k in cfg.layers)
    candidates = {n: m for n, m in modules.items() if plain_type(m) in kinds}
    unmatched = [p for p in cfg.targets if not any(fnmatch(n, p) for n in candidates)]
    if unmatched:
        raise ConfigError(f"factorize: targets {unmatched} match no {' or '.join(cfg.layers)} layer "
                          f"(layers: {list(candidates)[:8]}{' ...' if len(candidates) > 8 else ''})")
    chosen = {}
    for name, m in candidates.items():
        if name in cfg.skip or m.weight.numel() < cfg.min_weights:
            continue
        if cfg.targets and not any(fnmatch(name, p) for p in cfg.targets):
            continue
        if isinstance(m, nn.Conv2d):
            why = check_factorizable(m)
            if why is not None:
                if cfg.targets:
                    raise ConfigError(f"factorize: {name} cannot be decomposed: {why}")
                continue
            if m.kernel_size == (1, 1):  # a channel mixer: Tucker-2 / CP would only add stages
                if cfg.targets:
                    raise ConfigError(f"factorize: {name} is a 1x1 convolution; Tucker-2 and CP factorize "
                                      "spatial kernels")
                continue
            kind = cfg.conv
        else:
            kind = "svd"
        chosen[name] = (m, kind)
    if not chosen:
        raise ConfigError(f"factorize: no {' or '.join(cfg.layers)} layer with >= {cfg.min_weights} weights "
                          f"{'matches ' + str(cfg.targets) if cfg.targets else 'to factorize'}")
    return chosen


@torch.no_grad()
def input_statistics(model: nn.Module, names: list[str], ctx: Context, samples: int) -> dict[str, Any]:
    """Each named Linear's input Gram matrix and mean |x| over ``samples`` training rows, from one
    pass; on sequence data only the real tokens' rows count (padding is masked out)."""
    from slimkit.data.batches import calibration_batches
    from slimkit.techniques.lowrank.svd import InputStatistics

    split = ctx.data.train
    modules = dict(model.named_modules())
    stats = {n: InputStatistics(modules[n].in_features) for n in names}

    def hook(module, args, name):
        stats[name].add(real_rows(args[0]))

    handles = [modules[n].register_forward_pre_hook(lambda m, a, n=n: hook(m, a, n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        for batch in calibration_batches(split, samples, 32, ctx.seed):
            batch = tuple(t.to(ctx.device) for t in split.trim(batch))
            with real_positions(batch_mask(batch, split.mask_input)):
                model(*batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    unreached = [n for n, s in stats.items() if s.n == 0]
    if unreached:
        raise ConfigError(f"factorize: no calibration input reached {unreached} (unused in forward?); "
                          "skip them or use method: plain")
    return stats


def _plan(model: nn.Module, cfg: FactorizeConfig, chosen: dict, factorizer: _Factorizer, ctx: Context
          ) -> tuple[dict[str, int | tuple[int, int] | None], dict[str, Any]]:
    """{name: rank, or None to leave dense} and what the search (if any) found."""
    how, value = cfg.selection()
    if how != "search":
        return {name: _rank_for(layer, kind, how, value, lambda n=name, l=layer: factorizer.spectrum(n, l))
                for name, (layer, kind) in chosen.items()}, {}
    return _search(model, cfg.search, chosen, factorizer, ctx)


def _search(model: nn.Module, search: SearchConfig, chosen: dict, factorizer: _Factorizer, ctx: Context
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-layer ranks under a quality budget: each layer's drop at each ratio, alone (its
    sensitivity curve), then the greedy allocation (most weights saved per point of drop) whose
    summed drops stay within a budget, checked on the whole model; the budget is halved until the
    check passes."""
    from slimkit.measure.quality import predict
    from slimkit.search import Option, scan_progress, sensitivity, tighten

    val = ctx.data.val.head(min(search.samples, len(ctx.data.val)))

    def quality() -> float:
        return ctx.task.evaluate(predict(model.eval(), val, 256, ctx.device), val.targets)["quality"]

    def swapped(assignment: dict[str, Any]) -> float:
        originals = {}
        for name, rank in assignment.items():
            layer, kind = chosen[name]
            originals[name] = layer
            model.set_submodule(name, factorizer.twin(name, layer, kind, rank)[0])
        try:
            return quality()
        finally:
            for name, layer in originals.items():
                model.set_submodule(name, layer)

    reference = quality()
    with scan_progress(ctx.progress, "factorize: sensitivity") as progress:
        probed = sensitivity(list(chosen), lambda name: _ratio_options(*chosen[name], search.ratios),
                             lambda name, rank: max(0.0, 100 * (reference - swapped({name: rank}))),
                             progress=progress, time_budget=search.seconds, what="factorize search")
    table = {name: [Option(None, chosen[name][0].weight.numel()), *opts] for name, opts in probed.items()}
    evaluations = [sum(len(o) - 1 for o in table.values()) + 1]
    tried: list[dict[str, Any]] = []

    def verify(candidate: tuple[float, dict[str, Any]]) -> float:
        budget, plan = candidate
        assignment = {n: r for n, r in plan.items() if r is not None}
        drop = 100 * (reference - swapped(assignment)) if assignment else 0.0
        evaluations[0] += 1
        tried.append({"budget": budget, "drop": drop, "layers": len(assignment)})
        return drop

    (_, plan), drop = tighten(_halving_budgets(table, search.max_drop), verify,
                              lambda d: d <= search.max_drop)
    sensitivity_pt = {n: {f"{o.cost}": round(o.drop, 4) for o in opts[1:]} for n, opts in table.items()}
    return plan, {"reference": reference, "drop": drop, "tried": tried, "evaluations": evaluations[0],
                  "sensitivity_pt": sensitivity_pt}


def _ratio_options(layer: nn.Module, kind: str, ratios: list[float]) -> list:
    """The layer's ranks at each kept-weight ratio, largest first, each kept only if it stores
    fewer weights than the dense layer and the previous one."""
    from slimkit.search import Option

    options, last = [], layer.weight.numel()
    for ratio in sorted(set(ratios), reverse=True):
        rank = _rank_for(layer, kind, "ratio", ratio, None)
        weights = _weights_of(layer, kind, rank)
        if weights < last:
            options.append(Option(rank, weights))
            last = weights
    return options


def _halving_budgets(table, max_drop: float):
    """(budget, greedy allocation) at ``max_drop``, then at half of it, and so on, until an
    allocation factorizes nothing (after budget 0, the all-dense plan)."""
    from slimkit.search import greedy

    budget = max_drop
    while True:
        plan = greedy(table, budget)
        yield budget, plan
        if all(r is None for r in plan.values()):
            return
        if budget == 0:
            yield 0.0, {n: None for n in table}
            return
        budget /= 2


# ----------------------------------------------------------------------------------- the step
def _skeleton(layer: nn.Module, kind: str, rank) -> nn.Module:
    from slimkit.techniques.lowrank.conv import CPConv, Tucker2Conv
    from slimkit.techniques.lowrank.svd import LowRankLinear

    if kind == "svd":
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"svd needs a Linear, found {type(layer).__name__}")
        return LowRankLinear(layer.in_features, layer.out_features, int(rank), bias=layer.bias is not None)
    if not isinstance(layer, nn.Conv2d):
        raise ValueError(f"{kind} needs a Conv2d, found {type(layer).__name__}")
    return Tucker2Conv(layer, tuple(rank)) if kind == "tucker2" else CPConv(layer, int(rank))


class FactorizedRecord(Config):
    kind: Literal["svd", "tucker2", "cp"] = Field(description="how the layer was factorized")
    rank: int | tuple[int, int] = Field(description="its rank (Tucker-2: output and input ranks)")

    @model_validator(mode="after")
    def _rank_fits_kind(self) -> "FactorizedRecord":
        if (self.kind == "tucker2") != isinstance(self.rank, tuple):
            raise ValueError(f"rank {self.rank!r} does not fit kind {self.kind!r} (tucker2 has two ranks)")
        if min((self.rank,) if isinstance(self.rank, int) else self.rank) < 1:
            raise ValueError(f"ranks must be at least 1, got {self.rank!r}")
        return self


class FactorizeStructure(Config):
    factorized: dict[str, FactorizedRecord] = Field(description="the factorized layers")


def restore_factorize(model: nn.Module, structure: FactorizeStructure) -> nn.Module:
    """Re-create the factorized layers (sizes only) for the checkpoint to load into."""
    with restoring("factorize", model, structure.factorized):
        for name, record in structure.factorized.items():
            layer = model.get_submodule(name)
            model.set_submodule(name, _skeleton(layer, record.kind, record.rank).to(layer.weight.device))
    return model


@register_step("factorize", config=FactorizeConfig, restore=restore_factorize, structure=FactorizeStructure)
def factorize(model: nn.Module, cfg: FactorizeConfig, ctx: Context) -> StepResult:
    """Low-rank factorization: each chosen Linear becomes two thinner Linears (truncated SVD,
    plain or activation-aware), each chosen Conv2d a Tucker-2 or CP chain of convolutions; layers
    whose rank saves nothing stay dense. Then optionally fine-tuned."""
    from slimkit.encoding import refuse_encoded
    from slimkit.measure.macs import count_macs_by_module

    refuse_encoded(model, "factorize", "factorize before those steps")
    chosen = _chosen_layers(model, cfg)
    linear = [n for n, (_, kind) in chosen.items() if kind == "svd"]
    stats = input_statistics(model, linear, ctx, cfg.calibration_samples) if cfg.method != "plain" and linear else {}
    factorizer = _Factorizer(cfg, stats, ctx.seed)
    plan, search = _plan(model, cfg, chosen, factorizer, ctx)

    example = tuple(t.to(ctx.device) for t in ctx.data.val.example_inputs(1))
    macs_before = count_macs_by_module(model, example)
    layers: dict[str, dict[str, Any]] = {}
    structure: dict[str, dict[str, Any]] = {}
    for name, (layer, kind) in chosen.items():
        rank = plan.get(name)
        weights = layer.weight.numel()
        row: dict[str, Any] = {"kind": kind, "weights": weights, "macs": macs_before.get(name, 0)}
        new_weights = None if rank is None else _weights_of(layer, kind, rank)
        if new_weights is None or new_weights >= weights:
            row["kept_dense"] = "searched" if rank is None else f"rank {rank} saves nothing"
            layers[name] = row
            continue
        twin, extra = factorizer.twin(name, layer, kind, rank)
        model.set_submodule(name, twin)
        row.update(rank=list(rank) if isinstance(rank, tuple) else rank, factorized_weights=new_weights, **extra)
        layers[name] = row
        structure[name] = {"kind": kind, "rank": row["rank"]}
    if not structure and cfg.search is not None:
        least = {n: min(curve.values()) for n, curve in search["sensitivity_pt"].items() if curve}
        raise ConfigError(f"factorize: no layer can be factorized within search.max_drop = {cfg.search.max_drop} "
                          f"points (each layer's smallest solo drop: {least}); raise max_drop or the ratios")
    if not structure:
        raise ConfigError("factorize: no chosen layer gets smaller at the selected ranks "
                          f"({cfg.selection()[0]} = {cfg.selection()[1]}); lower it")
    macs_after = count_macs_by_module(model, example)
    for name in structure:
        layers[name]["factorized_macs"] = macs_after.get(name, 0)
    done = [layers[n] for n in structure]
    info: dict[str, Any] = {
        "method": cfg.method, "conv": cfg.conv, "selection": {cfg.selection()[0]: (cfg.search.to_json_dict() if cfg.search else cfg.selection()[1])},
        "layers_factorized": len(structure), "layers_dense": len(layers) - len(structure),
        "weights": sum(r["weights"] for r in done), "factorized_weights": sum(r["factorized_weights"] for r in done),
        "macs": sum(r["macs"] for r in done), "factorized_macs": sum(r["factorized_macs"] for r in done),
        "layers": layers}
    if search:
        info["search"] = search
    info["quality_before_finetune"] = ctx.validate(model)
    if cfg.finetune.epochs:
        info["train"] = ctx.train(model, cfg.finetune, description="factorize").summary()
    return StepResult(model, info=info, structure=FactorizeStructure(factorized=structure))
