"""slimkit in a user's own code: verbs on a plain ``nn.Module`` and any iterable of batches.

    import slimkit.api as sk
    small = sk.prune(model, loader, sparsity=0.5)
    q = sk.quantize(small, loader)
    print(sk.measure(q, test_loader))
    sk.save(q, "q.safetensors"); q = sk.load("q.safetensors", build_model)

Each verb is the recipe step of the same name (same config fields, same results for the same
data and seed); see docs/api.md.
"""

from slimkit.api.data import as_split
from slimkit.api.verbs import (apply, cluster, distill, factorize, fuse, hash, history, load, lora, measure, prune,
                               prune_structured, qat, quantize, quantize_weights, save, user_context)

__all__ = ["apply", "as_split", "cluster", "distill", "factorize", "fuse", "hash", "history", "load", "lora",
           "measure", "prune", "prune_structured", "qat", "quantize", "quantize_weights", "save", "user_context"]
