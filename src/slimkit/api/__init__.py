"""slimkit in a user's own code: verbs on a plain ``nn.Module`` and any iterable of batches.

    import slimkit.api as sk
    small = sk.prune(model, loader, sparsity=0.5)
    q = sk.quantize(small, loader)
    print(sk.measure(q, test_loader))
    sk.save(q, "q.safetensors"); q = sk.load("q.safetensors", build_model)

In a hand-written training loop: ``prune_hooks`` (masks and schedule), ``prepare_qat`` /
``convert_qat`` and ``distill_loss`` (see ``slimkit.api.hooks``).

Each verb is the recipe step of the same name (same config fields, same results for the same
data and seed); see docs/api.md.
"""

from slimkit.api import integrations
from slimkit.api.data import as_split
from slimkit.api.hooks import DistillLoss, LoopHooks, convert_qat, distill_loss, prepare_qat, prune_hooks
from slimkit.api.verbs import (apply, bayesian_compression, cluster, deploy, distill, early_exit, export, factorize,
                               fuse, hash, history, l0, layer_skip, load, lora, lottery, measure, nas, prune,
                               prune_structured, qat, quantize, quantize_weights, save, sparse_train, tinyml,
                               train, user_context, variational_dropout)

__all__ = ["DistillLoss", "LoopHooks", "apply", "as_split", "bayesian_compression", "cluster", "convert_qat", "deploy",
           "distill", "early_exit", "distill_loss", "export", "factorize", "fuse", "hash", "history", "integrations",
           "l0", "layer_skip", "load", "lora", "lottery", "measure", "nas", "prepare_qat", "prune", "prune_hooks",
           "prune_structured", "qat", "quantize", "quantize_weights", "save", "sparse_train", "tinyml", "train",
           "user_context", "variational_dropout"]
