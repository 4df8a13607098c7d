"""Per-layer weight clustering (Han et al. 2016, Deep Compression §3): the weights of a layer are
clustered in one dimension, each weight then stores only its cluster's index.

One-dimensional k-means is written here rather than taken from scikit-learn because in 1-D
Lloyd's assignment step is a ``bucketize`` against the midpoints of the sorted centroids
(O(n log k), no n×k distance matrix), which clusters MiniLM's 1.2M-weight matrices in well under
a second; a test checks it against scikit-learn's ``KMeans`` from the same initial centroids.
Initialisations are the paper's three: ``linear`` (evenly spaced between the minimum and the
maximum, which keeps the rare large weights represented: the paper's best), ``density``
(evenly spaced quantiles) and ``random`` (Forgy: k distinct weights).
"""

from __future__ import annotations

from typing import Literal

import torch

from slimkit.core.errors import ConfigError

Init = Literal["linear", "density", "random"]


def initial_centroids(values: torch.Tensor, k: int, init: Init, seed: int = 0) -> torch.Tensor:
    v = values.flatten().double()
    if init == "linear":
        return torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64)
    if init == "density":
        return torch.quantile(v if v.numel() <= 2**24 else v[:: v.numel() // 2**24 + 1],
                              (torch.arange(k, dtype=torch.float64) + 0.5) / k)
    if init == "random":
        unique = v.unique()
        if unique.numel() < k:
            raise ConfigError(f"clustering: {unique.numel()} distinct values cannot seed {k} random centroids")
        pick = torch.randperm(unique.numel(), generator=torch.Generator().manual_seed(seed))[:k]
        return unique[pick].sort().values
    raise ConfigError(f"clustering: unknown init {init!r} (linear, density or random)")


def assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid of each value (``centroids`` sorted ascending)."""
    mids = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(values.double(), mids.double())


def kmeans_1d(values: torch.Tensor, k: int, init: Init = "linear", iters: int = 30,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm on the flattened ``values``: (k sorted centroids, float32; the index of
    each value's centroid, int64, ``values``' shape). Empty clusters keep their centroid."""
    if k < 1:
        raise ConfigError(f"clustering: k must be >= 1, got {k}")
    flat = values.detach().flatten().double()
    centroids = initial_centroids(flat, k, init, seed).sort().values
    for _ in range(iters):
        index = assign(flat, centroids)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, index, flat)
        counts = torch.bincount(index, minlength=k).double()
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        order = updated.argsort()
        updated = updated[order]
        if torch.equal(updated, centroids):
            break
        centroids = updated
    index = assign(flat, centroids)
    return centroids.float(), index.reshape(values.shape)
