"""How well a score separates two groups at a working point (used to check concept scorers).

`fpr_at_tpr`: the share of negatives at or above the cut that keeps a given share of the
positives; the number that matters for a gate that must pass nearly every forget query
(TPR 90 / 99), where an AUC near 1 can still hide a tail of false gates.
"""

from __future__ import annotations

import torch


def fpr_at_tpr(scores: torch.Tensor, positive: torch.Tensor, tpr: float) -> float:
    """Share of negatives scoring at or above the `1 - tpr` quantile of the positives.

    scores [N] float, positive [N] bool; both groups must be non-empty."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    if not bool(positive.any()) or bool(positive.all()):
        raise ValueError("fpr_at_tpr needs at least one positive and one negative score")
    threshold = scores[positive].float().quantile(1 - tpr)
    return float((scores[~positive] >= threshold).float().mean())
