"""The concept modulator: which combination of concept scores marks each category.

One small head per request over that request's (visual, textual) concept scores,
trained when the request is applied and frozen afterwards (no raw data of earlier
requests is ever needed to keep it). The head is monotone by construction,

    logit = a*v + b*t + c*min(v, t) + d*max(v, t) + e,   a, b, c, d >= 0,

so it can express AND (c), OR (d), visual-only (a) and textual-only (b) scopes, and a
query that matches *less* of a concept never scores higher than one that matches more
(so unrelated queries, which no training pair resembles, stay out). Positives: the
request's forget pairs; negatives: its retain hard negatives and earlier requests'
prototypes scored through this request's concept layer.

All heads are stacked, so relevance for every request is one vectorised expression;
relevance = sigmoid(logit) is the modulator's probability that the query belongs to
that request's forget category.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

N_PARAMS = 5  # a, b, c, d (through softplus), e


def head_logits(params: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """params [T, 5], z [B, T, 2] -> logits [B, T]."""
    a, b, c, d = (F.softplus(params[:, i]) for i in range(4))
    v, t = z[..., 0], z[..., 1]
    return a * v + b * t + c * torch.minimum(v, t) + d * torch.maximum(v, t) + params[:, 4]


def fit_head(z: torch.Tensor, labels: torch.Tensor, steps: int = 300, seed: int = 0,
             weights: torch.Tensor | None = None, negative_weight: float = 1.0) -> torch.Tensor:
    """Fit one head on z [N, 2] (scaled scores) with binary labels; returns params [5]."""
    gen = torch.Generator().manual_seed(seed)
    params = (torch.randn(N_PARAMS, generator=gen, device="cpu") * 0.1).requires_grad_(True)
    with torch.no_grad():
        params[4] = -2.0
    weights = torch.ones(len(z), device="cpu") if weights is None else weights
    pos = labels.sum().clamp(min=1)
    neg = (1 - labels).sum().clamp(min=1)
    # Balance classes, and a small L2 keeping the logits from growing without end on
    # separable data (so relevances stay meaningful probabilities).
    w = weights * torch.where(labels > 0, 0.5 / pos, 0.5 * negative_weight / neg)
    optimiser = torch.optim.Adam([params], lr=0.05)
    for _ in range(steps):
        logits = head_logits(params[None], z[:, None, :])[:, 0]
        loss = (F.binary_cross_entropy_with_logits(logits, labels, reduction="none") * w).sum()
        loss = loss + 1e-3 * (params[:4] ** 2).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return params.detach()


def fixed_head() -> torch.Tensor:
    """The no-modulator ablation: relevance = sigmoid(8 * ((v + t) / 2 - 0.5))."""
    inv = lambda x: torch.log(torch.expm1(torch.tensor(x, device="cpu")))  # softplus inverse
    return torch.stack([inv(4.0), inv(4.0), inv(1e-4), inv(1e-4), torch.tensor(-4.0, device="cpu")])


def describe(params: torch.Tensor) -> dict[str, float]:
    """The head in words: weights of visual, textual, AND, OR and the bias."""
    a, b, c, d = (float(F.softplus(params[i])) for i in range(4))
    return {"visual": round(a, 3), "textual": round(b, 3), "and": round(c, 3), "or": round(d, 3),
            "bias": round(float(params[4]), 3)}
