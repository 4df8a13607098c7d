"""Task quality metrics, computed on whole held-out splits.

Classifiers: top-1 accuracy. Sentence encoders: agreement with the FP32 reference embeddings
(mean cosine, and the overlap of each sentence's top-k nearest neighbours).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from slimkit.core.outputs import primary_output
from slimkit.data.base import Split

Runnable = Callable[..., torch.Tensor]


@torch.no_grad()
def predict(runnable: Runnable, split: Split, batch_size: int = 256,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Outputs of ``runnable`` over the whole split, in order, on the CPU as float32."""
    outs = []
    for inputs, _ in split.batches(batch_size):
        out = runnable(*(t.to(device) for t in inputs))
        outs.append(torch.as_tensor(out if isinstance(out, torch.Tensor) or hasattr(out, '__array__') else primary_output(out)).detach().float().cpu())
    return torch.cat(outs)


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Top-1 accuracy of logits against integer labels."""
    return {"accuracy": float((outputs.argmax(-1) == targets).float().mean())}


def knn_overlap(a: torch.Tensor, b: torch.Tensor, k: int = 10) -> float:
    """Mean fraction of each row's top-k cosine neighbours (itself excluded) shared by a and b."""
    k = min(k, len(a) - 1)
    if k < 1:
        return 1.0

    def neighbours(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.float(), dim=-1)
        sim = x @ x.T
        sim.fill_diagonal_(-float("inf"))
        return sim.topk(k, dim=-1).indices

    na, nb = neighbours(a), neighbours(b)
    shared = (na.unsqueeze(-1) == nb.unsqueeze(-2)).any(-1).float().sum(-1)
    return float((shared / k).mean())


def embedding_agreement(outputs: torch.Tensor, reference: torch.Tensor, k: int = 10) -> dict[str, float]:
    """Mean cosine to the reference embeddings and top-k neighbour overlap with them."""
    cos = F.cosine_similarity(outputs.float(), reference.float(), dim=-1)
    return {"cosine": float(cos.mean()), "cosine_min": float(cos.min()),
            f"knn{k}_overlap": knn_overlap(outputs, reference, k)}


def cosine_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - cosine to the reference embeddings: the training objective of the encoder task."""
    return (1.0 - F.cosine_similarity(outputs, targets, dim=-1)).mean()


METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], dict[str, float]]] = {
    "accuracy": accuracy,
    "cosine": embedding_agreement,
}
