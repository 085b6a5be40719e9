"""Clustering shared by methods that keep feature prototypes instead of raw data."""

from __future__ import annotations

import torch


def kmeans(x: torch.Tensor, k: int, seed: int, iters: int = 15) -> torch.Tensor:
    """k centroids of the rows of x (k-means++-free: seeded random init, Lloyd steps)."""
    k = min(k, len(x))
    gen = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(len(x), generator=gen, device="cpu")[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        for c in range(k):
            members = x[assign == c]
            if len(members):
                centres[c] = members.mean(0)
    return centres
