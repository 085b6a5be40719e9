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
    load = torch.zeros(pool)
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


def pick_refusers(row: torch.Tensor, loads: torch.Tensor, related: bool, k: int) -> list[int]:
    """The request's k refusers: reuse the row's best one if an earlier request is
    related, and take the least-used refusers for the rest.

    Sharing every refuser with a related request makes the two refusals collide (the
    later request retrains the shared refusers to name its own context); one shared
    refuser carries what related requests have in common, the request's own refuser
    what tells them apart (under-used refusers take the novel concepts).
    """
    used = loads.sum(0) if len(loads) else torch.zeros_like(row)
    picked = row.topk(1).indices.tolist() if related and k > 1 else []
    # Least used first; among equally used refusers, the row's preference.
    order = sorted(range(len(row)), key=lambda e: (round(float(used[e]), 6), -float(row[e])))
    for e in order:
        if len(picked) == k:
            break
        if e not in picked:
            picked.append(e)
    return picked
