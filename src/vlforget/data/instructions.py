"""Instruction intents of the built-in benchmark: paraphrase templates and answers.

Each intent has at least five paraphrase templates. Answers are short and checkable
(one word or a short phrase). `make_pair` builds a question for a scene; a scene that
does not fit the intent (e.g. a comparison needs two objects of different sizes) is
rejected with `None` so the caller draws another.

A small share of general questions ask about an object that is not in the image;
the reference answer is then a refusal (`decline_answer`), so that the base model,
like an instruction-tuned LVLM, has the words and the habit of declining.
"""

from __future__ import annotations

import random

from vlforget.data.scenes import CATEGORIES, PLURALS, Scene

NUMBER_WORDS = ["zero", "one", "two", "three"]

TEMPLATES: dict[str, list[str]] = {
    "identify": [
        "what is at the {pos}?",
        "what object is in the {pos}?",
        "name the object at the {pos}.",
        "which shape is at the {pos}?",
        "what do you see at the {pos}?",
        "identify the object at the {pos}.",
    ],
    "colour": [
        "what colour is the {obj}?",
        "what is the colour of the {obj}?",
        "which colour does the {obj} have?",
        "tell me the colour of the {obj}.",
        "the {obj} is what colour?",
    ],
    "count": [
        "how many {objs} are there?",
        "count the {objs}.",
        "how many {objs} can you see?",
        "what is the number of {objs}?",
        "tell me how many {objs} there are.",
    ],
    "locate": [
        "where is the {obj}?",
        "where is the {obj} located?",
        "in which part of the image is the {obj}?",
        "tell me where the {obj} is.",
        "what is the position of the {obj}?",
    ],
    "size": [
        "is the {obj} small or large?",
        "how big is the {obj}?",
        "what size is the {obj}?",
        "tell me the size of the {obj}.",
        "is the {obj} large or small?",
    ],
    "pattern": [
        "is the {obj} striped or solid?",
        "what pattern does the {obj} have?",
        "is the {obj} solid or striped?",
        "describe the pattern of the {obj}.",
        "what is the texture of the {obj}?",
    ],
    "exists": [
        "is there a {obj} in the image?",
        "does the image contain a {obj}?",
        "can you see a {obj}?",
        "is a {obj} present?",
        "do you see a {obj} here?",
    ],
    "background": [
        "what colour is the background?",
        "what is the background colour?",
        "describe the colour of the background.",
        "which colour is the background of the image?",
        "tell me the background colour.",
    ],
    "describe": [
        "describe the image.",
        "what is in the image?",
        "list the objects in the image.",
        "give a short description of the image.",
        "what does the image show?",
    ],
    "compare": [
        "which is larger, the {a} or the {b}?",
        "which one is bigger, the {a} or the {b}?",
        "of the {a} and the {b}, which is larger?",
        "is the {a} or the {b} bigger?",
        "which is the larger object, the {a} or the {b}?",
    ],
}
INTENTS = list(TEMPLATES)
# Intents that refer to one object by name and so can be asked about an absent one.
SUBJECT_INTENTS = ("colour", "locate", "size", "pattern")


def decline_answer(shape: str) -> str:
    return f"sorry, there is no {shape} in the image."


def describe_answer(scene: Scene) -> str:
    return " and ".join(o.phrase() for o in sorted(scene.objects, key=lambda o: o.cell))


def make_pair(
    scene: Scene,
    intent: str,
    rng: random.Random,
    templates: dict[str, list[str]] | None = None,
    decline: bool = False,
) -> tuple[str, str, dict] | None:
    """(instruction, answer, info) for `intent` on `scene`, or None if it does not fit.

    With `decline=True` the question names a category that is absent from the scene
    and the answer is the base model's refusal.
    """
    template = rng.choice((templates or TEMPLATES)[intent])
    objs = scene.objects
    present = {o.shape for o in objs}

    def unique_subject():
        candidates = [o for o in objs if len(scene.by_shape(o.shape)) == 1]
        return rng.choice(candidates) if candidates else None

    if decline:
        if intent not in SUBJECT_INTENTS:
            return None
        absent = [c for c in CATEGORIES if c not in present]
        shape = rng.choice(absent)
        return template.format(obj=shape), decline_answer(shape), {"subject": shape, "decline": True,
                                                                   "slots": {"obj": shape}}

    if intent == "identify":
        subject = rng.choice(objs)
        return (template.format(pos=subject.position), subject.shape,
                {"subject": subject.shape, "slots": {"pos": subject.position}})
    if intent in SUBJECT_INTENTS:
        subject = unique_subject()
        if subject is None:
            return None
        answer = {
            "colour": subject.colour,
            "locate": subject.position,
            "size": subject.size,
            "pattern": subject.pattern,
        }[intent]
        return template.format(obj=subject.shape), answer, {"subject": subject.shape, "slots": {"obj": subject.shape}}
    if intent == "count":
        if rng.random() < 0.3:
            return (template.format(objs="objects"), NUMBER_WORDS[len(objs)],
                    {"subject": "objects", "slots": {"objs": "objects"}})
        shape = rng.choice(sorted(present)) if rng.random() < 0.85 else rng.choice(CATEGORIES)
        n = len(scene.by_shape(shape))
        return template.format(objs=PLURALS[shape]), NUMBER_WORDS[n], {"subject": shape, "slots": {"objs": PLURALS[shape]}}
    if intent == "exists":
        shape = rng.choice(sorted(present)) if rng.random() < 0.5 else rng.choice(CATEGORIES)
        return template.format(obj=shape), "yes" if shape in present else "no", {"subject": shape, "slots": {"obj": shape}}
    if intent == "background":
        return template, scene.background, {"slots": {}}
    if intent == "describe":
        return template, describe_answer(scene), {"slots": {}}
    if intent == "compare":
        uniques = [o for o in objs if len(scene.by_shape(o.shape)) == 1]
        pairs = [(a, b) for a in uniques for b in uniques if a.shape < b.shape and a.size != b.size]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        if rng.random() < 0.5:
            a, b = b, a
        larger = a if a.size == "large" else b
        return (template.format(a=a.shape, b=b.shape), larger.shape,
                {"subject": f"{a.shape},{b.shape}", "slots": {"a": a.shape, "b": b.shape}})
    raise ValueError(f"unknown intent {intent!r}; known intents: {', '.join(INTENTS)}")
