"""The few data types every part of vlforget speaks.

A `Sample` is one image-instruction pair with its reference answer; a
`DeletionRequest` is one step of a continual-unlearning sequence: what to forget
(with example pairs), what must keep working, and the refusal it should elicit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class Sample:
    """One image-instruction pair.

    `answer` is the reference response: the correct answer for answerable pairs, or
    the refusal the pair should get (for forget data and for should-decline pairs).
    `meta` holds machine-readable annotations (intent, scene objects, ...) that the
    benchmark uses for scoping and that methods must not rely on at inference.
    """

    image: Image.Image
    instruction: str
    answer: str
    intent: str = "unknown"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def should_decline(self) -> bool:
        """True for general pairs the base model itself should decline."""
        return bool(self.meta.get("decline", False))


@dataclass
class Concepts:
    """Natural-language concept descriptions of one request (CORE's decomposition)."""

    visual: list[str]
    textual: list[str]
    source: str = "request"

    def __post_init__(self) -> None:
        if not self.visual and not self.textual:
            raise ValueError("Concepts need at least one visual or textual description")


@dataclass
class DeletionRequest:
    """One deletion request: forget these pairs, keep everything else.

    `forget_test` / `retain_test` are for verification and benchmarking; a method's
    `unlearn` may use `forget_train`, `retain_train` (if the method uses retain data)
    and the descriptions, but never another request's raw data.
    """

    id: str
    name: str
    description: str
    refusals: list[str]
    forget_train: list[Sample]
    forget_test: list[Sample] = field(default_factory=list)
    retain_train: list[Sample] = field(default_factory=list)
    retain_test: list[Sample] = field(default_factory=list)
    concepts: Concepts | None = None
    scope: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.forget_train:
            raise ValueError(f"deletion request {self.id!r} has an empty forget set")
        if not self.refusals:
            raise ValueError(f"deletion request {self.id!r} has no refusal sentence")

    @property
    def refusal(self) -> str:
        """The canonical refusal (the first one)."""
        return self.refusals[0]
