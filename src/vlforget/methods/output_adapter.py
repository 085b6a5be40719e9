"""A low-rank adapter on the hidden state the LM head reads: h -> (h A) B, B = 0 at init.

Shared by CORE's refusers and the expert baselines (GMM, EProj), which add it only on
the rows their gate or router selects. Created on the CPU in float32; its owner moves it
to the backbone's device (CORE's `RefuserPool` does), and it may stay float32 under a
half-precision model (`forward` casts).
"""

from __future__ import annotations

import torch


class OutputAdapter(torch.nn.Module):
    def __init__(self, hidden: int, rank: int, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.a = torch.nn.Parameter(torch.randn(hidden, rank, generator=gen, device="cpu") * 0.05)
        self.b = torch.nn.Parameter(torch.zeros(rank, hidden, device="cpu"))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # The adapter keeps its own (float32) weights under a half-precision model: compute
        # in its dtype, hand the delta back in the model's.
        return ((h.to(self.a.dtype) @ self.a) @ self.b).to(h.dtype)
