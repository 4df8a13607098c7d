"""The ``cluster`` recipe step: per-layer k-means weight sharing (Deep Compression's second
stage), then the codebooks fine-tuned through the one training loop, stored as codebook + packed
codes so the bytes fall to about log2(k)/32 of FP32."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field

from slimkit.tasks.context import Context
from slimkit.core.errors import ConfigError
from slimkit.core.config import Config
from slimkit.core.step import StepResult, register_step, restoring
from slimkit.encoding.twins import plain_type
from slimkit.train.config import TrainingStepConfig, finetune_config

_KINDS = {"linear": nn.Linear, "conv": nn.Conv2d}


ClusterFinetune = finetune_config("ClusterFinetune", epochs=Field(0, ge=0, description="fine-tuning epochs "
                                                                 "(codebooks, biases and unshared layers train)"),
                                  lr=1e-4)


class ClusterConfig(TrainingStepConfig):
    clusters: int = Field(16, ge=2, le=256, description="shared values per layer (codes of ceil(log2 k) bits)")
    init: Literal["linear", "density", "random"] = Field("linear", description="centroid initialisation (Han et "
                                                                               "al.: linear is best)")
    iters: int = Field(30, ge=1, description="k-means iterations (at most)")
    layers: list[Literal["linear", "conv"]] = Field(["linear", "conv"], min_length=1,
                                                    description="layer kinds to cluster")
    skip: list[str] = Field(default_factory=list, description="module paths left unshared")
    min_weights: int = Field(256, ge=1, description="layers with fewer weights stay unshared (the codebook "
                                                    "would cost more than it saves)")
    finetune: ClusterFinetune = Field(default_factory=ClusterFinetune, description="fine-tuning of the codebooks")
    entropy_code: bool = Field(True, description="also write the model Huffman-coded (codes, and a pruned "
                                                 "layer's nonzero positions) to model.huffman.safetensors")


class SharedRecord(Config):
    fixed_zero: bool = Field(description="code 0 is the exact zero of a pruned layer (not trained)")


class ClusterStructure(Config):
    clusters: int = Field(ge=2, le=256, description="shared values per layer")
    shared: dict[str, SharedRecord] = Field(description="the layers stored as codebook + codes")


def restore_cluster(model: nn.Module, structure: ClusterStructure) -> nn.Module:
    """Re-create the shared layers (sizes and codebook lengths) for the checkpoint to load into."""
    from slimkit.encoding import densify_
    from slimkit.techniques.sharing.codebook import share_

    densify_(model, "sparse")
    with restoring("cluster", model, structure.shared):
        share_(model, list(structure.shared), structure.clusters,
               {name: r.fixed_zero for name, r in structure.shared.items()})
    return model


@register_step("cluster", config=ClusterConfig, restore=restore_cluster, structure=ClusterStructure)
def cluster(model: nn.Module, cfg: ClusterConfig, ctx: Context) -> StepResult:
    """Weight sharing: each Linear / Conv2d weight clustered into ``clusters`` values by 1-D
    k-means (a pruned layer's zeros stay exact zeros), optionally fine-tuned (a centroid's
    gradient is the sum of its weights' gradients), stored as codebook + packed codes."""
    from slimkit.encoding import QUANTIZED_KINDS, densify_, refuse_encoded
    from slimkit.techniques.sharing.codebook import encoded_bytes, share_
    from slimkit.techniques.sharing.kmeans import kmeans_1d

    refuse_encoded(model, "cluster", "one cluster or hash step per run", ("shared", "hashed"))
    refuse_encoded(model, "cluster", "cluster before the quantization steps", QUANTIZED_KINDS)
    densify_(model, "sparse")  # a pruned model: its zeros are kept exact below
    kinds = tuple(_KINDS[k] for k in cfg.layers)
    modules = dict(model.named_modules())
    unknown = [s for s in cfg.skip if s not in modules]
    if unknown:
        raise ConfigError(f"cluster: skip names no module: {unknown}")
    names = [n for n, m in modules.items() if plain_type(m) in kinds and n not in cfg.skip
             and m.weight.numel() >= cfg.min_weights]
    if not names:
        raise ConfigError(f"cluster: the model has no {' or '.join(cfg.layers)} layer with >= {cfg.min_weights} "
                          "weights to cluster")
    clusters, fixed_zero, layers = {}, {}, {}
    for name in names:
        w = modules[name].weight.detach().cpu()
        zeros = w == 0
        fixed_zero[name] = bool(zeros.float().mean() > 0.01)  # pruned: keep its zeros exact
        if fixed_zero[name]:
            centroids, index = kmeans_1d(w[~zeros], cfg.clusters - 1, cfg.init, cfg.iters, ctx.seed)
            codes = torch.zeros(w.shape, dtype=torch.int64)
            codes[~zeros] = index + 1
            centroids = torch.cat([torch.zeros(1), centroids])
        else:
            centroids, codes = kmeans_1d(w, cfg.clusters, cfg.init, cfg.iters, ctx.seed)
        clusters[name] = (centroids, codes)
        layers[name] = {"fixed_zero": fixed_zero[name], "numel": w.numel(),
                        "bytes": encoded_bytes(w.numel(), cfg.clusters), "dense_bytes": 4 * w.numel(),
                        "weight_error": float((centroids[codes] - w).pow(2).mean().sqrt())}
    share_(model, names, cfg.clusters, fixed_zero, clusters)
    info: dict[str, Any] = {"clusters": cfg.clusters, "init": cfg.init, "layers_shared": len(names)}
    if cfg.finetune.epochs:
        info["train"] = ctx.train(model, cfg.finetune, description="cluster").summary()
    stored = sum(v["bytes"] for v in layers.values())
    dense = sum(v["dense_bytes"] for v in layers.values())
    info.update({"encoded_bytes": stored, "dense_bytes": dense, "encoded_ratio": stored / dense, "layers": layers})
    if cfg.entropy_code:
        info["entropy_coded"] = write_entropy_archive(model, ctx)
    structure = ClusterStructure(clusters=cfg.clusters,
                                 shared={n: SharedRecord(fixed_zero=v["fixed_zero"]) for n, v in layers.items()})
    return StepResult(model, info=info, structure=structure)


def write_entropy_archive(model: nn.Module, ctx: Context) -> dict[str, Any]:
    """The Huffman-coded file beside the step's checkpoint (a temporary one outside a run)."""
    import tempfile
    from pathlib import Path

    from slimkit.techniques.sharing.entropy import write_archive

    if ctx.out_dir is not None:
        Path(ctx.out_dir).mkdir(parents=True, exist_ok=True)
        path = Path(ctx.out_dir) / "model.huffman.safetensors"
        return {**write_archive(path, model), "file": path.name}
    with tempfile.TemporaryDirectory() as tmp:
        return write_archive(Path(tmp) / "model.huffman.safetensors", model)
