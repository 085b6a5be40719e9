"""Cheap query features shared by methods that gate or route on the instruction's words."""

from __future__ import annotations

import torch


def token_bag(backbone, texts: list[str], buckets: int, empty_id: int = 0) -> torch.Tensor:
    """[B, buckets] unit-norm hashed bag of token unigrams and bigrams (a table lookup).

    Intents live in a few words ("how many", "where is"); a bag keeps them apart where
    a mean of token embeddings blurs them. It costs nothing next to generation, whatever
    the model's vocabulary size. An empty text counts as the single token `empty_id`.
    """
    rows = []
    for ids in backbone.encode_text(texts) if texts else []:
        ids = ids or [empty_id]
        grams = [i % buckets for i in ids] + [(a * 7919 + b * 104729 + 1) % buckets for a, b in zip(ids, ids[1:])]
        bag = torch.zeros(buckets, device="cpu")
        bag[torch.tensor(grams, device="cpu")] = 1.0
        rows.append(bag / bag.norm())
    return torch.stack(rows) if rows else torch.zeros(0, buckets, device="cpu")
