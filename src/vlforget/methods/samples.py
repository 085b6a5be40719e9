"""Sample helpers of the methods fitted on activations: a list's images and instructions.

General pairs come from the benchmark in use through `Method.general_pool`."""

from __future__ import annotations

from vlforget.types import Sample


def images_of(samples: list[Sample]) -> list:
    return [s.image for s in samples]


def instructions_of(samples: list[Sample]) -> list[str]:
    return [s.instruction for s in samples]
