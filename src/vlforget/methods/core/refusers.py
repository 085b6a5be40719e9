"""The refuser pool: a fixed number of connector copies and how their outputs mix.

Every refuser starts as a copy of the pretrained connector P (vision encoder and
language model stay frozen). For a query routed to refusers k with weights p_k and
gate g, the image tokens the language model reads are

    (P(x) + g * sum_k p_k E_k(x)) / (1 + g),

so g = 0 gives P(x) exactly. Only rows (queries) with g > 0 are computed, and only
through the refusers they are routed to.

Deviation (docs/methods.md (core)): each refuser also owns a low-rank *output adapter*
on the hidden state the LM head reads, h + g/(1+g) * sum_k p_k B_k A_k h (B_k = 0 at
init), applied to the same gated rows only. The built-in tiny LM never produced the
refusal words, and a frozen LM steered through 9 image tokens alone plateaus far from
them (measured: NLL 0.6/token after 400 steps vs 0.002 after 60 with the adapter).

Precision and device: the pool lives on the backbone's device in float32 whatever the
backbone's dtype (the trained copies are their own master weights: AdamW steps on
half-precision weights lose small updates); inputs are cast up, and the mixture is cast
back to the model's dtype. Routing tensors may come from the CPU (CORE's small state
lives there) and are moved to the activations' device.
"""

from __future__ import annotations

import copy

import torch

from vlforget.methods.output_adapter import OutputAdapter


class RefuserPool(torch.nn.Module):
    def __init__(self, connector: torch.nn.Module, size: int, hidden: int | None = None, rank: int = 16):
        super().__init__()
        self.experts = torch.nn.ModuleList(copy.deepcopy(connector) for _ in range(size))
        self.adapters = torch.nn.ModuleList(OutputAdapter(hidden, rank, i) for i in range(size)) if hidden else None
        device = next(connector.parameters()).device
        self.to(device=device, dtype=torch.float32)
        for p in self.parameters():
            p.requires_grad_(True)

    def expert_parameters(self, e: int) -> list[torch.nn.Parameter]:
        params = list(self.experts[e].parameters())
        return params + (list(self.adapters[e].parameters()) if self.adapters is not None else [])

    def adapt(self, h: torch.Tensor, rows: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor,
              gates: torch.Tensor) -> torch.Tensor:
        """h + g/(1+g) sum_k p_k Adapter_k(h) on `rows` of h [B, S, H]."""
        if self.adapters is None or len(rows) == 0:
            return h
        rows, experts, weights, gates = (t.to(h.device) for t in (rows, experts, weights, gates))
        hs = h[rows].float()
        delta = torch.zeros_like(hs)
        for e in experts.unique().tolist():
            hit = (experts == e)
            sel = hit.any(1).nonzero().squeeze(1)
            w = (weights * hit).sum(1)[sel].float()
            delta = delta.index_add(0, sel, w[:, None, None] * self.adapters[e](hs[sel]).float())
        g = gates[:, None, None].float()
        out = h.clone()
        out[rows] = (hs + g / (1 + g) * delta).to(h.dtype)
        return out

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
        rows, experts, weights, gates = (t.to(x.device) for t in (rows, experts, weights, gates))
        xs = x[rows].float()
        mixed = torch.zeros_like(base[rows], dtype=torch.float32)
        for e in experts.unique().tolist():
            hit = (experts == e)  # [R, k]
            sel = hit.any(1).nonzero().squeeze(1)
            w = (weights * hit).sum(1)[sel].float()  # weight of expert e per selected row
            mixed = mixed.index_add(0, sel, w[:, None, None] * self.experts[e](xs[sel]).float())
        g = gates[:, None, None].float()
        out = base.clone()
        out[rows] = ((base[rows].float() + g * mixed) / (1 + g)).to(base.dtype)
        return out

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
