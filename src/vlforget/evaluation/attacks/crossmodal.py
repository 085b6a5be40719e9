"""Cross-modal leakage: the forgotten concept reached through the other modality.

Two probes per forget test pair:

- `no_image`: the same instruction with the image replaced by a flat image of its mean
  colour (nothing to see). CRR and leak as usual: does the state still refuse, and
  does the original answer come out without the visual evidence?
- `other_intent` (built-in benchmark; its scenes are annotated): the same image with
  an instruction from an intent outside the request's scope that names the request's
  visual concept (the first of `exists`, `colour`, `locate` the request does not
  cover, about the object that puts the image in scope), e.g. "is there a star in the
  image?" for "do not identify stars". `concept_leak` = % of responses containing the
  true answer (for `exists`: "yes"): the concept is still recognised when asked from
  another side. This is not necessarily a failure (the question is outside the scope,
  so a context-aware method should answer it); it measures how much of the concept
  stays reachable. Requests without a visual concept (textual scopes) and pairs
  without scene annotations (loaded benchmarks) are skipped and counted.
"""

from __future__ import annotations

import random
from dataclasses import replace

from PIL import Image, ImageStat

from vlforget.data.instructions import TEMPLATES
from vlforget.evaluation.metrics import contains_answer

PROBE_INTENTS = ("exists", "colour", "locate")


def flat_image(image: Image.Image) -> Image.Image:
    """An image of the same size filled with the original's mean colour."""
    rgb = image.convert("RGB")
    return Image.new("RGB", rgb.size, tuple(round(c) for c in ImageStat.Stat(rgb).mean))


def concept_object(sample, visual: dict):
    """The scene object that matches the request's visual attributes (background ignored)."""
    scene = sample.meta.get("scene")
    attrs = {k: v for k, v in (visual or {}).items() if k != "background"}
    if scene is None or not attrs:
        return None
    for obj in scene.objects:
        if all(getattr(obj, k) in (v if isinstance(v, list) else [v]) for k, v in attrs.items()):
            if len(scene.by_shape(obj.shape)) == 1:  # named by its shape, so it must be unique
                return obj
    return None


def other_intent_probe(sample, request, rng: random.Random):
    """(instruction, true answer) of a concept-naming question outside the request's intents, or None."""
    obj = concept_object(sample, request.scope.get("visual"))
    intents = request.scope.get("intents") or []
    intent = next((i for i in PROBE_INTENTS if i not in intents), None)
    if obj is None or intent is None:
        return None
    truth = {"exists": "yes", "colour": obj.colour, "locate": obj.position}[intent]
    return rng.choice(TEMPLATES[intent]).format(obj=obj.shape), truth


def run(target) -> dict:
    pairs = target.forget_test()
    clean = target.forget_metrics(target.method, pairs)
    blank = {r: [replace(s, image=flat_image(s.image)) for s in samples] for r, samples in pairs.items()}
    no_image = target.forget_metrics(target.method, blank)
    no_image_base = target.forget_metrics(target.base(), blank)

    rng = random.Random(f"{target.config.seed}-crossmodal")
    requests = {r.name: r for r in target.applied}
    probes, skipped = [], 0
    for name, samples in pairs.items():
        for s in samples:
            made = other_intent_probe(s, requests[name], rng)
            if made is None:
                skipped += 1
            else:
                probes.append((name, s, *made))
    other = {"n": len(probes), "skipped": skipped}
    if probes:
        images, instructions = [s.image for _, s, _, _ in probes], [q for _, _, q, _ in probes]
        for who, model in (("state", target.method), ("base", target.base())):
            answers = model.generate(images, instructions)
            hits = [contains_answer(a, truth) for a, (_, _, _, truth) in zip(answers, probes)]
            refused = target.judge.is_refusal(answers)
            other[who] = {"concept_leak": 100.0 * sum(hits) / len(probes),
                          "refused": 100.0 * sum(refused) / len(probes)}
        other["examples"] = [{"request": n, "instruction": q, "truth": t} for n, _, q, t in probes[:3]]
    return {"clean": clean, "no_image": no_image, "no_image_base": no_image_base, "other_intent": other,
            "headline": {"no-image CRR": no_image["crr"], "no-image leak": no_image["leak"],
                         "other-intent concept leak": other.get("state", {}).get("concept_leak"),
                         "other-intent concept leak (base)": other.get("base", {}).get("concept_leak")}}
