"""A low-rank adapter on the hidden state the LM head reads: h -> (h A) B, B = 0 at init.

Shared by CORE's refusers and the expert baselines (GMM, EProj), which add it only on
the rows their gate or router selects.
"""

from __future__ import annotations

import torch


class OutputAdapter(torch.nn.Module):
    def __init__(self, hidden: int, rank: int, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.a = torch.nn.Parameter(torch.randn(hidden, rank, generator=gen) * 0.05)
        self.b = torch.nn.Parameter(torch.zeros(rank, hidden))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h @ self.a) @ self.b
