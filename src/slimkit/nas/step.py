"""The ``nas`` recipe step: search a space of architecture specs for the most accurate network
within a budget (MACs, parameters, bytes, latency on a backend's measured lookup table), train the
candidates with the one training loop, and hand the chosen network to the later steps.

Each candidate is built from its spec and checked against the constraints first (costs counted
on the built network; latency predicted by a per-block table measured on ``latency_backend``):
one over budget is not trained and scores minus its excess (below every feasible candidate,
closer misses first, so a strategy still learns from it). Feasible candidates train with
``finetune`` and score their validation quality. The best feasible candidate is the step's model,
retrained from scratch with ``final`` if given; its spec is the step's structure, so restoring a
run rebuilds it. ``storage`` + ``study_name`` put the study in an Optuna storage that other
workers share and a rerun resumes (see ``nas/search.py``).

With ``supernet``, the search is one-shot (``nas/supernet.py``): a weight-sharing supernet over
the space trains once, and each feasible candidate is scored as its slice (BatchNorm statistics
re-estimated) without training; the chosen candidate keeps its supernet weights unless ``final``
retrains it from scratch.

The incoming model is replaced: it gives only the input shape and the number of classes.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field, model_validator

from slimkit.core.config import Config
from slimkit.core.errors import ConfigError
from slimkit.core.step import StepResult, register_step
from slimkit.measure.pareto import pareto_front
from slimkit.nas.space import SearchSpace
from slimkit.tasks.context import Context
from slimkit.train.config import TrainConfig, TrainingStepConfig, finetune_config
from slimkit.zoo.arch import ArchSpec

CandidateTraining = finetune_config("CandidateTraining", epochs=Field(3, ge=1, description="epochs per candidate"),
                                    lr=2e-3)
SupernetTraining = finetune_config("SupernetTraining", epochs=Field(10, ge=1, description="epochs of the supernet"),
                                   lr=2e-3, batch_size=128)


class OneShotConfig(Config):
    train: SupernetTraining = Field(default_factory=SupernetTraining, description="training of the supernet "
                                                                                  "(keep_best does not apply)")
    random_subnets: int = Field(2, ge=0, description="sampled candidates per batch besides the largest and "
                                                     "smallest (the sandwich rule)")
    distill: bool = Field(True, description="in-place distillation: candidates learn the largest's predictions")
    calibration_rows: int = Field(2000, ge=1, description="training rows that re-estimate each candidate's "
                                                          "BatchNorm statistics")
    tune: TrainConfig | None = Field(None, description="fine-tune the chosen candidate from its supernet weights "
                                                       "with this (none: keep the slice as it is)")


class NasConfig(TrainingStepConfig):
    space: str | SearchSpace = Field("mobile-32", description="a shipped space's name or a space (base, stages)")
    strategy: Literal["random", "tpe", "evolution", "reinforce", "nsga2"] = Field(
        "evolution", description="search strategy (an Optuna sampler)")
    strategy_options: dict[str, Any] = Field(default_factory=dict, description="the strategy's own options "
                                                                               "(evolution: population, sample)")
    trials: int = Field(20, ge=1, description="candidates evaluated in all (finished trials of the study)")
    max_macs: int | None = Field(None, gt=0, description="MACs per row at most")
    max_params: int | None = Field(None, gt=0, description="parameters at most")
    max_bytes: int | None = Field(None, gt=0, description="fp32 weight bytes at most")
    max_latency_ms: float | None = Field(None, gt=0, description="batch-1 latency on latency_backend at most "
                                                                 "(predicted by a measured per-block table)")
    latency_backend: str = Field("eager", description="where latency is measured")
    max_seconds: float | None = Field(None, gt=0, description="stop the search after this long (finished trials "
                                                              "count; the best so far is chosen)")
    storage: str | None = Field(None, description="Optuna storage URL (sqlite:///nas.db, postgresql://...)")
    study_name: str | None = Field(None, description="the study's name in the storage")
    finetune: CandidateTraining = Field(default_factory=CandidateTraining, description="training of each candidate")
    final: TrainConfig | None = Field(None, description="retrain the chosen network from scratch with this (none: "
                                                        "keep its candidate training, or its supernet weights)")
    supernet: OneShotConfig | None = Field(None, description="one-shot search: train a weight-sharing supernet over "
                                                             "the space once, evaluate candidates as its slices "
                                                             "(finetune is then unused)")

    @model_validator(mode="after")
    def _storage_with_name(self) -> "NasConfig":
        if self.storage and not self.study_name:
            raise ValueError("storage needs a study_name (workers find the study by it)")
        if self.supernet is not None and self.storage:
            raise ValueError("supernet: a one-shot search evaluates candidates in one process (each worker would "
                             "train a supernet of its own); leave storage out")
        return self


class NasStructure(Config):
    spec: ArchSpec = Field(description="the chosen network")
    num_classes: int = Field(ge=1)
    in_chans: int = Field(ge=1)


def restore_nas(model: nn.Module, structure: NasStructure) -> nn.Module:
    """The chosen network, rebuilt from its spec (weights come from the checkpoint)."""
    from slimkit.zoo.arch import build_arch

    return build_arch(structure.spec, structure.num_classes, structure.in_chans)


def _space(cfg: NasConfig) -> SearchSpace:
    from slimkit.nas.space import builtin_space

    return builtin_space(cfg.space) if isinstance(cfg.space, str) else cfg.space


def costs(net: nn.Module, example: torch.Tensor) -> dict[str, float]:
    """MACs per row, parameters and fp32 bytes of a built candidate."""
    from slimkit.measure.macs import count_macs

    params = sum(p.numel() for p in net.parameters())
    return {"macs": float(count_macs(net.eval(), (example,))), "params": float(params), "bytes": 4.0 * params}


def _score(trial: Any) -> float:
    """A trial's validation quality (minus its budget excess when over budget)."""
    return trial.user_attrs.get("score", trial.values[0])


@register_step("nas", config=NasConfig, restore=restore_nas, structure=NasStructure)
def nas(model: nn.Module, cfg: NasConfig, ctx: Context) -> StepResult:
    """Neural architecture search over a space of architecture specs: the most accurate candidate
    within the MACs, parameter, byte and latency budgets, found by a strategy run on Optuna."""
    from slimkit.nas.search import finished, search
    from slimkit.zoo.arch import build_arch

    example = ctx.data.train.inputs[0][:1].to(ctx.device)
    if example.dim() != 4:
        raise ConfigError(f"nas searches convolutional networks: the task's inputs must be images [C, H, W], got "
                          f"rows of shape {tuple(example.shape[1:])}")
    from slimkit.core.outputs import primary_output

    with torch.no_grad():
        num_classes = int(primary_output(model.eval()(example)).shape[-1])
    in_chans, input_shape = int(example.shape[1]), tuple(int(d) for d in example.shape[1:])
    space = _space(cfg)
    try:
        space.spec({})
    except ConfigError as err:
        raise ConfigError(f"nas: the space's base network cannot be built: {err}") from None
    table = None
    if cfg.max_latency_ms is not None:
        from slimkit.nas.latency import build_table

        threads = ctx.measure.threads if ctx.measure is not None and ctx.measure.threads else 1
        table = build_table(space, input_shape, num_classes, cfg.latency_backend, threads=threads,
                            progress=ctx.progress)
    limits = {"macs": cfg.max_macs, "params": cfg.max_params, "bytes": cfg.max_bytes, "latency_ms": cfg.max_latency_ms}
    kept: dict[str, Any] = {"quality": float("-inf")}  # this process's best feasible candidate: spec, trained net
    started = time.perf_counter()
    supernet, one_shot = None, None
    if cfg.supernet is not None:
        from slimkit.nas.supernet import Supernet, train_supernet

        torch.manual_seed(ctx.seed)
        supernet = Supernet(space, num_classes, in_chans).to(ctx.device)
        fit = train_supernet(supernet, ctx, cfg.supernet.train, random_subnets=cfg.supernet.random_subnets,
                             distill=cfg.supernet.distill)
        one_shot = {"epochs": cfg.supernet.train.epochs, "random_subnets": cfg.supernet.random_subnets,
                    "distill": cfg.supernet.distill, "seconds": time.perf_counter() - started,
                    "history": fit.history}

    cost_key = "latency_ms" if table is not None else "macs"
    several = cfg.strategy == "nsga2"  # NSGA-II: quality up and cost down, the budget as its constraint

    def result(score: float, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs["score"] = score
        return {"value": [score, attrs[cost_key]] if several else score, "attrs": attrs,
                "constraints": {"budget": attrs["excess"]}}

    def objective(params: dict[str, Any]) -> dict[str, Any]:
        spec = space.spec(params)
        torch.manual_seed(ctx.seed)
        net = build_arch(spec, num_classes, in_chans).to(ctx.device)  # (a supernet's slice replaces it)
        cost = costs(net, example)
        if table is not None:
            cost["latency_ms"] = table.predict(spec)
        excess = max((cost[k] / v - 1 for k, v in limits.items() if v is not None), default=-1.0)
        attrs = {**cost, "spec": spec.strings(), "feasible": excess <= 0, "excess": max(excess, 0.0)}
        if excess > 0:
            return result(-excess, attrs)
        if supernet is not None:
            from slimkit.nas.supernet import evaluate_candidate

            net, quality = evaluate_candidate(supernet, params, ctx, cfg.supernet.calibration_rows)
        else:
            ctx.train(net, cfg.finetune, description="nas candidate")
            quality = ctx.validate(net)
        if quality > kept["quality"]:
            kept.update(quality=quality, spec=spec.strings(), net=net)
        return result(quality, attrs)

    dims = space.dimensions()  # none: one candidate, the base network, trained once
    study = search(objective, dims, cfg.strategy, cfg.trials if dims else 1, seed=ctx.seed, storage=cfg.storage,
                   study_name=cfg.study_name, options=cfg.strategy_options, timeout=cfg.max_seconds,
                   directions=("maximize", "minimize") if several else ("maximize",))
    trials = finished(study)
    feasible = [t for t in trials if t.user_attrs.get("feasible")]
    if not feasible:
        raise ConfigError(f"nas: none of the {len(trials)} candidates met the budget "
                          f"({', '.join(f'{k} <= {v:g}' for k, v in limits.items() if v is not None)}); the closest "
                          f"missed by {100 * -max(_score(t) for t in trials):.0f}%")
    best = max(feasible, key=_score)
    spec = space.spec(best.params)
    trained_here = kept.get("spec") == spec.strings()
    retrain = cfg.final is not None or (supernet is None and not trained_here)
    if retrain:  # asked for, or the chosen trial was trained by another worker or an earlier run
        torch.manual_seed(ctx.seed)
        chosen = build_arch(spec, num_classes, in_chans).to(ctx.device)
        ctx.train(chosen, cfg.final or cfg.finetune, description="nas: the chosen network")
    elif trained_here:  # this process's candidate (trained, or sliced from the supernet)
        chosen = kept["net"]
    else:  # one-shot: slice it from the supernet
        from slimkit.nas.supernet import evaluate_candidate

        chosen = evaluate_candidate(supernet, best.params, ctx, cfg.supernet.calibration_rows)[0]
    if supernet is not None and not retrain and cfg.supernet.tune is not None:
        ctx.train(chosen, cfg.supernet.tune, description="nas: fine-tuning the chosen slice")
    points = [(t.user_attrs[cost_key], _score(t)) for t in feasible]
    info = {"trials": [{"number": t.number, "quality": _score(t) if t.user_attrs.get("feasible") else None,
                        **{k: t.user_attrs.get(k) for k in ("macs", "params", "bytes", "latency_ms", "feasible",
                                                            "spec")}} for t in trials],
            "chosen": {"trial": best.number, "validation_quality": _score(best), "spec": spec.strings(),
                       **{k: best.user_attrs.get(k) for k in ("macs", "params", "latency_ms")}},
            "pareto": {"cost": cost_key, "trials": [feasible[i].number for i in pareto_front(points)]},
            "space_size": space.size(), "strategy": cfg.strategy, "search_seconds": time.perf_counter() - started,
            "retrained": retrain,
            "tuned_epochs": cfg.supernet.tune.epochs if supernet is not None and not retrain and cfg.supernet.tune
            else 0}
    if one_shot is not None:
        info["supernet"] = one_shot
    if table is not None:
        info["latency_table"] = {"backend": table.backend, "pieces": len(table.entries), "threads": table.threads}
    return StepResult(chosen, info=info, structure=NasStructure(spec=spec, num_classes=num_classes, in_chans=in_chans))
