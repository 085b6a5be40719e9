"""Deletion-request specifications: scope, refusal, concept descriptions.

A request's scope has a *visual* part (attributes an object in the image must have,
and/or the background) and a *textual* part (instruction intents), combined by a
mode (the ways a scope can be drawn):

- ``both``: the image shows the concept AND the instruction has the intent
  (count questions on images with stars);
- ``visual``: the image shows the concept, whatever is asked;
- ``textual``: the instruction has the intent, whatever is shown;
- ``either``: the image shows the concept OR the instruction has the intent
  (SafeEraser-style).

Specs are read from YAML/JSON (a list of mappings with the fields of `RequestSpec`);
the default 16-request sequence ships as `default_requests.yaml`. Every field is
checked by type and length when a file is read (`configs.check_fields`), and an error
names the file, the request and the field.
"""

from __future__ import annotations

import string
from dataclasses import MISSING, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vlforget.configs import FieldError, check_fields, read_structured
from vlforget.data.instructions import INTENTS, TEMPLATES
from vlforget.data.scenes import BACKGROUNDS, CATEGORIES, COLOURS, PATTERNS, SIZES, Scene

MODES = ("both", "visual", "textual", "either")
MAX_NAME = 80  # characters of a request name
MAX_SENTENCE = 300  # characters of a description or one refusal / concept sentence
MAX_SENTENCES = 64  # refusals or concept descriptions per request

# Benchmark v2's validation sequence (tuning only; see the file's header).
VALIDATION_REQUESTS = str(resources.files("vlforget.data").joinpath("validation_requests.yaml"))
VISUAL_KEYS = {"shape": CATEGORIES, "colour": list(COLOURS), "size": list(SIZES), "pattern": PATTERNS,
               "background": list(BACKGROUNDS)}


@dataclass
class RequestSpec:
    """One deletion request of a sequence, before data is generated for it."""

    name: str = field(metadata={"max_length": MAX_NAME})
    description: str = field(metadata={"max_length": MAX_SENTENCE})
    refusals: list[str] = field(metadata={"max_length": MAX_SENTENCE, "max_items": MAX_SENTENCES})
    mode: str = "both"
    visual: dict[str, Any] = field(default_factory=dict)
    intents: list[str] = field(default_factory=list)
    visual_concepts: list[str] = field(default_factory=list, metadata={"max_length": MAX_SENTENCE,
                                                                         "max_items": MAX_SENTENCES})
    textual_concepts: list[str] = field(default_factory=list, metadata={"max_length": MAX_SENTENCE,
                                                                          "max_items": MAX_SENTENCES})
    kind: str = "qa"  # "classification" or "qa": how the benchmark groups it

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("a request needs a non-empty name")
        if any(not r.strip() for r in self.refusals):
            raise ValueError(f"request {self.name!r}: a refusal sentence is empty")
        if self.kind not in ("qa", "classification"):
            raise ValueError(f"request {self.name!r}: unknown kind {self.kind!r}; valid: qa, classification")
        if self.mode not in MODES:
            raise ValueError(f"request {self.name!r}: unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        for key, value in self.visual.items():
            if key not in VISUAL_KEYS:
                raise ValueError(f"request {self.name!r}: unknown visual attribute {key!r}; valid: {', '.join(VISUAL_KEYS)}")
            for v in value if isinstance(value, list) else [value]:
                if v not in VISUAL_KEYS[key]:
                    raise ValueError(f"request {self.name!r}: unknown {key} {v!r}; valid: {', '.join(VISUAL_KEYS[key])}")
        for intent in self.intents:
            if intent not in INTENTS:
                raise ValueError(f"request {self.name!r}: unknown intent {intent!r}; valid: {', '.join(INTENTS)}")
        if self.mode in ("both", "visual", "either") and not self.visual:
            raise ValueError(f"request {self.name!r}: mode {self.mode!r} needs a visual concept")
        if self.mode in ("both", "textual", "either") and not self.intents:
            raise ValueError(f"request {self.name!r}: mode {self.mode!r} needs intents")
        if not self.refusals:
            raise ValueError(f"request {self.name!r}: needs at least one refusal sentence")
        if not self.visual_concepts:
            self.visual_concepts = describe_visual(self.visual)
        if not self.textual_concepts:
            self.textual_concepts = describe_textual(self.intents)

    # -- scope ---------------------------------------------------------------
    def shows_concept(self, scene: Scene) -> bool:
        if not self.visual:
            return False
        background = self.visual.get("background")
        if background is not None:
            allowed = background if isinstance(background, list) else [background]
            if scene.background not in allowed:
                return False
        object_attrs = {k: v for k, v in self.visual.items() if k != "background"}
        return scene.has(**object_attrs) if object_attrs else True

    def in_scope(self, scene: Scene, intent: str) -> bool:
        visual = self.shows_concept(scene)
        textual = intent in self.intents
        return {
            "both": visual and textual,
            "visual": visual,
            "textual": textual,
            "either": visual or textual,
        }[self.mode]


# ------------------------------------------------------- concept descriptions

SHAPE_PHRASES = {
    "circle": ["a circle", "a round disc", "a circular shape", "a round dot"],
    "square": ["a square", "a box shape", "a four sided square", "a square block"],
    "triangle": ["a triangle", "a three sided shape", "a triangular figure", "a pointed triangle"],
    "star": ["a star", "a five pointed star", "a star symbol", "a pointy star figure"],
    "cross": ["a cross", "a plus sign", "a cross shaped mark", "two crossing bars"],
    "diamond": ["a diamond", "a rhombus", "a diamond shaped tile", "a tilted square"],
    "zero": ["the handwritten digit zero", "the number 0", "a written zero", "a hand drawn 0"],
    "one": ["the handwritten digit one", "the number 1", "a written one", "a hand drawn 1"],
    "three": ["the handwritten digit three", "the number 3", "a written three", "a hand drawn 3"],
    "seven": ["the handwritten digit seven", "the number 7", "a written seven", "a hand drawn 7"],
}
VISUAL_FRAMES = ["{p}", "an image with {p}", "a picture showing {p}", "a scene containing {p}"]
INTENT_PHRASES = {
    "identify": ["naming what an object is", "identifying the object", "recognising the kind of object", "classifying a shape"],
    "colour": ["asking for the colour of an object", "naming a colour", "which colour something is", "colour recognition"],
    "count": ["counting objects", "asking how many there are", "the number of things", "counting shapes"],
    "locate": ["asking where an object is", "locating an object", "the position of something", "finding where a shape sits"],
    "size": ["asking how big an object is", "judging size", "small or large", "the size of a shape"],
    "pattern": ["asking about the pattern", "striped or solid", "the texture of an object", "describing a surface pattern"],
    "exists": ["asking whether something is present", "checking if an object exists", "is there such a thing", "presence of an object"],
    "background": ["asking for the background colour", "the colour behind the objects", "describing the backdrop", "background recognition"],
    "describe": ["describing the whole image", "listing the objects", "a caption of the scene", "summarising what is shown"],
    "compare": ["comparing two objects", "which one is larger", "relative size of two shapes", "comparing sizes"],
}
TEXTUAL_FRAMES = ["{p}", "a request about {p}", "an instruction for {p}", "a question on {p}"]


def _values(v: Any) -> list[str]:
    return v if isinstance(v, list) else [v]


ANY_IMAGE = ["any image", "whatever the picture shows", "an image of anything", "every kind of scene",
             "a picture with any objects", "any visual content", "all images", "any photo or drawing"]
ANY_INSTRUCTION = ["any question", "whatever is asked", "an instruction of any kind", "every request",
                   "any query about the picture", "all questions", "any task", "a question of any type"]


def describe_visual(visual: dict[str, Any]) -> list[str]:
    """At least 8 natural-language descriptions of a visual concept ('any image' if none)."""
    if not visual:
        return list(ANY_IMAGE)
    modifiers = " ".join(
        " or ".join(_values(visual[k])) for k in ("size", "colour", "pattern") if k in visual
    )
    cores: list[str] = []
    for shape in _values(visual.get("shape", [])):
        for phrase in SHAPE_PHRASES[shape]:
            cores.append(f"{phrase} that is {modifiers}" if modifiers else phrase)
    if not cores and modifiers:
        cores = [f"a {modifiers} object", f"something {modifiers}", f"a {modifiers} shape", f"{modifiers} things"]
    if "background" in visual:
        bg = " or ".join(_values(visual["background"]))
        extra = [f"a {bg} background", f"a {bg} backdrop", f"everything on {bg}", f"a scene set against {bg}"]
        cores = [f"{c} on a {bg} background" for c in cores] if cores else extra
    return [frame.format(p=c) for frame in VISUAL_FRAMES for c in cores]


def describe_textual(intents: list[str]) -> list[str]:
    """At least 8 natural-language descriptions of an instruction intent ('any question' if none)."""
    if not intents:
        return list(ANY_INSTRUCTION)
    cores = [phrase for intent in intents for phrase in INTENT_PHRASES[intent]]
    return [frame.format(p=c) for frame in TEXTUAL_FRAMES for c in cores]


# -------------------------------------------------------------------- loading

def load_specs(path: str | Path | None = None) -> list[RequestSpec]:
    """Read a request sequence (YAML or JSON); the built-in default when path is None."""
    if path is None:
        text = resources.files("vlforget.data").joinpath("default_requests.yaml").read_text()
        raw = yaml.safe_load(text)
    else:
        raw = read_structured(path, "request file")
    where = "the built-in requests" if path is None else str(path)
    if isinstance(raw, dict) and "requests" in raw:
        raw = raw["requests"]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: a request file must hold a non-empty list of requests")
    valid = [f.name for f in fields(RequestSpec)]
    required = [f.name for f in fields(RequestSpec) if f.default is MISSING and f.default_factory is MISSING]
    specs = []
    for i, item in enumerate(raw):
        label = f"{where}: request #{i + 1}"
        if not isinstance(item, dict):
            raise ValueError(f"{label} must be a mapping of fields, got {type(item).__name__}")
        if isinstance(item.get("name"), str):
            label += f" ({item['name'][:MAX_NAME]!r})"
        unknown = sorted(str(k) for k in item if k not in valid)
        if unknown:
            raise ValueError(f"{label}: unknown field(s) {unknown}; valid: {', '.join(valid)}")
        missing = [k for k in required if k not in item]
        if missing:
            raise ValueError(f"{label}: missing field(s) {', '.join(missing)}")
        try:
            specs.append(RequestSpec(**check_fields(RequestSpec, item, label)))
        except FieldError:
            raise
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{where}: request names must be unique; repeated: {', '.join(twice)}")
    return specs


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def load_paraphrases(path: str | Path) -> dict[str, list[str]]:
    """A file mapping intent -> list of templates (YAML or JSON)."""
    raw = read_structured(path, "paraphrase file")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping intent -> list of templates, got {type(raw).__name__}")
    for intent, templates in raw.items():
        if intent not in INTENTS:
            raise ValueError(f"{path}: unknown intent {intent!r}; valid: {', '.join(INTENTS)}")
        if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
            raise ValueError(f"{path}: intent {intent!r} needs a non-empty list of template strings")
        allowed = set().union(*(_placeholders(t) for t in TEMPLATES[intent]))
        for template in templates:
            if len(template) > MAX_SENTENCE:
                raise ValueError(f"{path}: a template of intent {intent!r} is {len(template)} characters long; "
                                 f"at most {MAX_SENTENCE} are allowed")
            try:
                used = _placeholders(template)
            except ValueError as error:
                raise ValueError(f"{path}: template {template!r} of intent {intent!r} is not a valid format "
                                 f"string ({error})") from None
            bad = sorted(u for u in used if u not in allowed)
            if bad:
                raise ValueError(f"{path}: template {template!r} of intent {intent!r} uses "
                                 f"{', '.join('{' + b + '}' for b in bad)}; this intent's templates may use "
                                 f"{', '.join('{' + a + '}' for a in sorted(allowed)) or 'no placeholders'}")
    return raw
