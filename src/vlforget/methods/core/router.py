"""The router: relevance over requests -> top-k refusers, and the two routing losses.

The router is a linear map from the (re-weighted) relevance vector w over requests
(the modulator's probabilities, sharpened and normalised) to refuser logits: row r of
`rows` is what request r contributes. Each request trains only its own row; rows of
earlier requests are frozen with them. After a request, its *load* (how much it used
each refuser, the mean top-k weights on its forget pairs) is kept.

Routing losses for the current row (CORE's expert recommendation and load losses):
- recommendation: cross-entropy pulling softmax(row) toward the loads of related
  earlier requests, weighted by task similarity (reuse what similar requests built);
- load: the expected use of refusers that dissimilar earlier requests loaded,
  weighted by dissimilarity (leave their refusers intact, take free ones).
"""

from __future__ import annotations

import torch


def route(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k refusers per row and their softmax weights (over the k picked)."""
    top = logits.topk(k, dim=-1)
    return top.indices, torch.softmax(top.values, dim=-1)


def load_vector(experts: torch.Tensor, weights: torch.Tensor, pool: int) -> torch.Tensor:
    """[pool] mean routing weight per refuser over a batch of routed rows."""
    load = torch.zeros(pool, device="cpu")
    load.index_add_(0, experts.reshape(-1), weights.reshape(-1).detach().float())
    return load / max(1, experts.shape[0])


def routing_losses(row: torch.Tensor, loads: torch.Tensor, similarity: torch.Tensor,
                   threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(recommendation, load) losses of the current row given earlier loads [T, pool] and
    similarities [T] in [0, 1]."""
    logp = torch.log_softmax(row, dim=-1)
    zero = row.sum() * 0.0
    if len(loads) == 0:
        return zero, zero
    related = similarity >= threshold
    recommend = zero
    if related.any():
        target = (similarity[related, None] * loads[related]).sum(0)
        target = target / target.sum().clamp(min=1e-8)
        recommend = -(target * logp).sum()
    penalty = ((1 - similarity)[~related, None] * loads[~related]).sum(0)
    load = (logp.exp() * penalty).sum() * len(row)
    return recommend, load


def pick_refusers(row: torch.Tensor, loads: torch.Tensor, k: int) -> tuple[list[int], list[int]]:
    """(shared, own) refusers of a new request, k in all.

    Own: the least-used refusers (unused ones while the pool lasts); the request trains
    only these. Shared: once earlier requests exist, the k - 1 refusers the fitted row
    prefers among those already in use (the recommendation loss pulls it to related
    requests' refusers, the load loss away from dissimilar ones); they are read, not
    retrained. Sharing every refuser made two requests' refusals collide (the later one
    rewrote them to name its own context), and giving each unrelated request k fresh
    refusers used up a pool of 20 by the 11th request; one own refuser per request
    keeps 16 requests inside 17 refusers.
    """
    used = loads.sum(0) if len(loads) else torch.zeros_like(row)
    in_use = (used > 0).nonzero().squeeze(1).tolist()
    n_shared = min(k - 1, len(in_use))
    shared = sorted(in_use, key=lambda e: -float(row[e]))[:n_shared]
    # Least used first; among equally used refusers, the row's preference.
    order = sorted((e for e in range(len(row)) if e not in shared),
                   key=lambda e: (round(float(used[e]), 6), -float(row[e])))
    return shared, order[:k - n_shared]
