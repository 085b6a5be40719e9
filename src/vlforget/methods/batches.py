"""Seeded random batches of training pairs, shared by every gradient-trained method."""

from __future__ import annotations

import random

from vlforget.types import Sample


class Batches:
    """Seeded random batches of (images, instructions, targets)."""

    def __init__(self, samples: list[Sample], batch_size: int, seed: int, target: str = "answer"):
        if not samples:
            raise ValueError("cannot draw batches from an empty set")
        self.samples, self.batch_size, self.target = samples, batch_size, target
        self.rng = random.Random(seed)

    def target_of(self, s: Sample) -> str:
        return s.meta.get("original_answer", s.answer) if self.target == "original" else s.answer

    def next(self) -> tuple[list, list[str], list[str]]:
        chosen = [self.rng.choice(self.samples) for _ in range(self.batch_size)]
        return [s.image for s in chosen], [s.instruction for s in chosen], [self.target_of(s) for s in chosen]
