"""Sample helpers of the methods fitted on activations: the general pool, a list's images and instructions."""

from __future__ import annotations

from vlforget.types import Sample


def general_pool(n: int, seed: int) -> list[Sample]:
    """General (pretraining-distribution) pairs: no request's data, so any method may use them."""
    from vlforget.data.benchmark import general_samples

    return general_samples(n, f"inference-methods-{seed}", "train")


def images_of(samples: list[Sample]) -> list:
    return [s.image for s in samples]


def instructions_of(samples: list[Sample]) -> list[str]:
    return [s.instruction for s in samples]
