"""The few data types every part of vlforget speaks.

A `Sample` is one image-instruction pair with its reference answer; a
`DeletionRequest` is one step of a continual-unlearning sequence: what to forget
(with example pairs), what must keep working, and the refusal it should elicit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

from PIL import Image

# One example as users hand it over: a Sample, a mapping {image, instruction, answer?},
# or a tuple (image, instruction[, answer]); an image is a PIL image or a file path.
Example = Union["Sample", Mapping[str, Any], Sequence[Any]]


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

    @classmethod
    def from_examples(cls, name: str, forget: Iterable[Example], refusals: Sequence[str] | str,
                      retain: Iterable[Example] = (), description: str = "",
                      visual_concepts: Sequence[str] = (), textual_concepts: Sequence[str] = (),
                      id: str | None = None) -> "DeletionRequest":
        """A request built from a handful of examples, as a privacy or safety team receives it.

        The forget examples are both what the method trains on and what verifies the
        request (CRR on them); likewise the retain examples (AR on them). A forget
        example's answer, if given, is the answer that must no longer be given (used for
        leakage); a retain example's answer is the one that must still be given (without
        one, a retain example counts as kept when it is answered at all). Concept
        descriptions are optional: CORE mines them from the examples when none are given.
        """
        refusals = [refusals] if isinstance(refusals, str) else list(refusals)
        forget_samples = [_as_sample(e, "forget", i) for i, e in enumerate(forget)]
        retain_samples = [_as_sample(e, "retain", i) for i, e in enumerate(retain)]
        for sample in forget_samples:
            # The training target of a forget pair is the refusal; the old answer is kept apart.
            sample.meta["original_answer"] = sample.answer
            sample.answer = refusals[0] if refusals else ""
        concepts = (Concepts(list(visual_concepts), list(textual_concepts))
                    if visual_concepts or textual_concepts else None)
        return cls(id=id or uuid.uuid4().hex, name=name, description=description or name, refusals=refusals,
                   forget_train=forget_samples, forget_test=list(forget_samples),
                   retain_train=retain_samples, retain_test=list(retain_samples), concepts=concepts)


def _as_sample(example: Example, split: str, index: int) -> Sample:
    """One user example -> a Sample; a malformed one is named (split and position) in the error."""
    where = f"{split} example {index}"
    if isinstance(example, Sample):
        return Sample(example.image, example.instruction, example.answer, example.intent, dict(example.meta))
    if isinstance(example, Mapping):
        unknown = set(example) - {"image", "instruction", "answer"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; valid: image, instruction, answer")
        image, instruction, answer = example.get("image"), example.get("instruction"), example.get("answer", "")
    elif isinstance(example, Sequence) and not isinstance(example, str) and len(example) in (2, 3):
        image, instruction, answer = (*example, "")[:3]
    else:
        raise ValueError(f"{where}: expected a Sample, a mapping or an (image, instruction[, answer]) tuple")
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"{where}: image file {image} not found")
        with Image.open(image) as opened:
            image = opened.convert("RGB")
    if not isinstance(image, Image.Image):
        raise ValueError(f"{where}: image must be a PIL image or a file path")
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"{where}: instruction must be a non-empty string")
    return Sample(image.convert("RGB"), instruction.strip(), str(answer or ""), meta={"example": where})
