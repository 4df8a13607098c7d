"""The ``bayesian_compression`` recipe step (``compression.py``): group normal-Jeffreys scales on
output channels and Gaussian posteriors on every weight, trained on the ELBO through the one loop;
then the noisy channels removed physically (a ``Skeleton``, as ``prune_structured`` records) and
each layer's weights stored at the bits its posterior variance allows (codebook twins)."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field

from slimkit.core.config import Config
from slimkit.core.errors import ConfigError
from slimkit.core.step import StepResult, register_step, restoring
from slimkit.tasks.context import Context
from slimkit.techniques.pruning.structure import Skeleton
from slimkit.techniques.bayesian.step import KLTrainingConfig
from slimkit.train.config import finetune_config

BayesianFinetune = finetune_config(
    "BayesianFinetune", epochs=Field(30, ge=1, description="training epochs of the Bayesian model"),
    keep_best=Field(False, description="restore the best validation epoch (an earlier epoch keeps more)"))


class BayesianCompressionConfig(KLTrainingConfig):
    threshold: float = Field(0.0, ge=-10, le=10, description="channels whose scale has log alpha above this are "
                                                             "removed (0: noise as large as the mean)")
    step: float = Field(1.0, gt=0, description="grid step of each layer's weights, in posterior standard deviations "
                                               "(geometric mean over the layer): sets its bits")
    max_bits: int = Field(8, ge=2, le=8, description="most bits a layer's weight codes may take")
    scale_lr: float = Field(0.02, gt=0, description="learning rate of the scales and the log variances (they travel "
                                                    "several units; the weights' rate is finetune.lr)")
    init_log_sigma2: float = Field(-10.0, description="initial log sigma^2 of every weight")
    init_scale_log_sigma2: float = Field(-8.0, description="initial log sigma^2 of every channel scale (its mean "
                                                           "starts at 1)")
    layers: list[Literal["linear", "conv"]] = Field(["linear", "conv"], min_length=1,
                                                    description="layer kinds given posteriors and stored in bits")
    skip: list[str] = Field(default_factory=list, description="module paths left as they are (and kept at full width)")
    entropy_code: bool = Field(True, description="also write the model Huffman-coded (codes, and the gaps between "
                                                 "nonzero weights) to model.huffman.safetensors")
    finetune: BayesianFinetune = Field(default_factory=BayesianFinetune,
                                       description="training of the Bayesian model (keep_best off)")


class GridRecord(Config):
    values: int = Field(ge=2, le=256, description="grid values (2^bits)")
    fixed_zero: bool = Field(description="code 0 is the exact zero (the layer has zeroed weights)")


class BayesianStructure(Config):
    skeleton: Skeleton = Field(description="the smaller model's shapes after channel removal")
    codes: dict[str, GridRecord] = Field(description="layers stored as codes on a grid")


def restore_bayesian(model: nn.Module, structure: BayesianStructure) -> nn.Module:
    """The smaller skeleton, then each coded layer's codebook twin at its own size."""
    from slimkit.techniques.pruning.structure import apply_structure_
    from slimkit.techniques.sharing.codebook import share_

    apply_structure_(model, structure.skeleton, "bayesian_compression")
    with restoring("bayesian_compression", model, structure.codes):
        for name, record in structure.codes.items():
            share_(model, [name], record.values, {name: record.fixed_zero})
    return model


@register_step("bayesian_compression", config=BayesianCompressionConfig, restore=restore_bayesian,
               structure=BayesianStructure)
def bayesian_compression(model: nn.Module, cfg: BayesianCompressionConfig, ctx: Context) -> StepResult:
    """Bayesian compression (Louizos, Ullrich & Welling 2017): channels removed where their
    log-uniform scale is mostly noise, each layer stored at the bits its weights' posterior
    variance allows."""
    from slimkit.encoding import QUANTIZED_KINDS, densify_, refuse_encoded
    from slimkit.measure.macs import count_macs
    from slimkit.measure.size import count_params
    from slimkit.techniques.bayesian import compression as bc
    from slimkit.techniques.bayesian.variational_dropout import KLWarmup
    from slimkit.techniques.pruning.step import prunable_weights
    from slimkit.techniques.pruning.structure import snapshot, structure_diff
    from slimkit.techniques.pruning.structured import find_attention, fixed_width_layers
    from slimkit.techniques.sharing.codebook import encoded_bytes, share_
    from slimkit.techniques.sparse_training import l0

    refuse_encoded(model, "bayesian_compression", "it stores its own codes", ("shared", "hashed"))
    refuse_encoded(model, "bayesian_compression", "put it before the quantization steps", QUANTIZED_KINDS)
    densify_(model, "sparse")
    names = list(prunable_weights(model, cfg.layers, cfg.skip))
    if not names:
        raise ConfigError(f"bayesian_compression: the model has no {' or '.join(cfg.layers)} layer")
    modules = dict(model.named_modules())
    try:
        posteriors = {n: bc.WeightPosterior(modules[n], cfg.init_log_sigma2, cfg.scale_lr / cfg.finetune.lr)
                      for n in names}
    except ValueError as err:
        raise ConfigError(f"bayesian_compression: {err}") from None
    inputs = tuple(t[:1].to(ctx.device) for t in ctx.data.train.inputs)
    fp32_before = sum(4 * modules[n].weight.numel() for n in names)
    before = snapshot(model)
    macs0, params0 = count_macs(model, inputs), count_params(model)
    attention = find_attention(model)  # heads are not scaled: a channel inside a head would break its reshape
    ignore = fixed_width_layers(model, inputs, attention) + [p for a in attention for p in a.projections] \
        + [modules[n] for n in cfg.skip]
    lr_scale = cfg.scale_lr / cfg.finetune.lr
    graph, gates = l0.channel_gates(
        model, inputs, ignore,
        lambda width: bc.LogUniformScale(width, cfg.threshold, cfg.init_scale_log_sigma2, lr_scale), "params")
    term = bc.BayesianKL([g.gates for g in gates], list(posteriors.values()), rows=len(ctx.data.train))
    handles = bc.install_posteriors(list(posteriors.values())) + l0.install_channel_gates(gates)
    try:
        fit = ctx.train(model, cfg.finetune, loss_terms=[term], callbacks=[KLWarmup(term, cfg.kl_weight, cfg.warmup)],
                        description="bayesian compression")
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        scale_log_alpha = [g.gates.log_alpha() for g in gates]
        kl = float(term(None))
    variances = bc.stored_variances(list(posteriors.values()), gates)
    removed = l0.remove_closed_channels_(model, graph, gates, shadows=variances)
    skeleton = structure_diff(before, model)  # before the coded twins: restore re-creates them itself
    layers: dict[str, Any] = {}
    codes: dict[str, GridRecord] = {}
    clusters = {}
    for name in names:
        layer = modules[name]
        w, var = layer.weight.detach().cpu(), variances[id(layer)].cpu()
        if var.shape != w.shape:  # the shadow followed every removal the weight went through
            raise RuntimeError(f"bayesian_compression: {name}'s posterior {tuple(var.shape)} does not match its "
                               f"weight {tuple(w.shape)} after channel removal")
        bits = bc.layer_bits(w, var, cfg.step, cfg.max_bits)
        # code 0 the exact zero where most weights round to it: entropy coding then stores the gaps
        # between nonzeros (weight sharing's fixed_zero layout)
        fixed_zero = bc.zero_share(w, bits) >= 0.5
        grid, index = bc.round_to_grid(w, bits, zero_first=fixed_zero)
        stored = encoded_bytes(w.numel(), 2**bits.bits)
        layers[name] = {"shape": list(w.shape), "bits": bits.bits, "posterior_std": bits.posterior_std,
                        "zero_share": bc.zero_share(w, bits),
                        "grid_step": bits.step, "weight_range": bits.weight_range,
                        "grid_error": float((grid[index] - w).pow(2).mean().sqrt()),
                        "bytes": stored, "fp32_bytes": 4 * w.numel()}
        if stored < 4 * w.numel():  # a grid that costs more than the float weights is not used
            codes[name] = GridRecord(values=2**bits.bits, fixed_zero=fixed_zero)
            clusters[name] = (grid, index)
        else:
            layers[name].update(bits=32, bytes=4 * w.numel())
    for name, record in codes.items():
        share_(model, [name], record.values, {name: record.fixed_zero}, {name: clusters[name]})
    model.to(ctx.device)
    info: dict[str, Any] = {
        "threshold": cfg.threshold, "step": cfg.step, "groups_scaled": len(gates), "channels_removed": removed,
        "final_kl": kl, "train": fit.summary(),
        "scale_log_alpha": {"min": min((float(a.min()) for a in scale_log_alpha), default=math.nan),
                            "max": max((float(a.max()) for a in scale_log_alpha), default=math.nan)},
        "macs_before": macs0, "params_before": params0, "macs_after": count_macs(model, inputs),
        "params_after": count_params(model), "layers": layers,
        "bits_per_layer": {n: v["bits"] for n, v in layers.items()},
        "encoded_bytes": sum(v["bytes"] for v in layers.values()), "dense_bytes": fp32_before,
        "nonzero_weights": sum(int((modules[n].weight != 0).sum()) if n not in codes else
                               int((model.get_submodule(n).dense_weight() != 0).sum()) for n in names)}
    info["encoded_ratio"] = info["encoded_bytes"] / fp32_before  # of the layers' FP32 weights before the step
    if cfg.entropy_code:
        from slimkit.techniques.sharing.step import write_entropy_archive

        info["entropy_coded"] = write_entropy_archive(model, ctx)
    return StepResult(model, info=info, structure=BayesianStructure(skeleton=skeleton, codes=codes))
