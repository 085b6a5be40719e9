"""The refuser pool: a fixed number of connector copies and how their outputs mix.

Every refuser starts as a copy of the pretrained connector P (vision encoder and
language model stay frozen). For a query routed to refusers k with weights p_k and
gate g, the image tokens the language model reads are

    (P(x) + g * sum_k p_k E_k(x)) / (1 + g),

so g = 0 gives P(x) exactly. Only rows (queries) with g > 0 are computed, and only
through the refusers they are routed to.
"""

from __future__ import annotations

import copy

import torch


class RefuserPool(torch.nn.Module):
    def __init__(self, connector: torch.nn.Module, size: int):
        super().__init__()
        self.experts = torch.nn.ModuleList(copy.deepcopy(connector) for _ in range(size))
        for p in self.parameters():
            p.requires_grad_(True)

    def __len__(self) -> int:
        return len(self.experts)

    def mix(self, x: torch.Tensor, base: torch.Tensor, rows: torch.Tensor, experts: torch.Tensor,
            weights: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """Replace `base[rows]` by the gated mixture.

        x [B, P, D_in], base [B, P, D_out] (P(x)); rows [R] indices into the batch;
        experts [R, k] refuser ids; weights [R, k] (sum to 1); gates [R] (g).
        """
        if len(rows) == 0:
            return base
        xs = x[rows]
        mixed = torch.zeros_like(base[rows])
        for e in experts.unique().tolist():
            hit = (experts == e)  # [R, k]
            sel = hit.any(1).nonzero().squeeze(1)
            w = (weights * hit).sum(1)[sel]  # weight of expert e per selected row
            mixed = mixed.index_add(0, sel, w[:, None, None] * self.experts[e](xs[sel]))
        g = gates[:, None, None].to(base.dtype)
        out = base.clone()
        out[rows] = (base[rows] + g * mixed) / (1 + g)
        return out

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
