"""The Decomposer: a request -> `Concepts` (visual and textual descriptions).

Three sources, same output shape:
- ``request``: the descriptions the request brings (`request.concepts`);
- ``annotations``: written from the request's machine-readable scope
  (`request.scope`: visual attribute values and intent names) with generic frames;
- ``model``: from the model itself. Visual: the backbone captions every forget image
  ("describe the image.") and a sample of the benchmark's general images (the retain
  images when no general pairs are given); caption words (and adjacent word pairs) that
  are clearly more common in forget captions than in general ones are candidates, and
  the fewest that together cover the forget captions become the concept ("an image with
  a zero", "an image with a one": a concept of two values), whatever the vocabulary. CORE
  also gives each image the general answers' words its concept encoder sees in it
  (`Core.image_terms`: a captioner names only what it was taught to, the built-in one
  never a pattern). Textual: each forget
  instruction votes (MiniLM, nearest phrase) for one intent of a fixed, generic bank of
  intents, each a group of phrases; intents that many forget instructions vote for,
  clearly more often than the benchmark's general instructions do (the retain
  instructions when no general pairs are given), become the intent concepts. If nothing
  stands out, the side is "any image" / "any question", which the modulator then learns
  to ignore.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable

import torch

from vlforget.types import Concepts, DeletionRequest

# CORE's own "no concept on this side" descriptions (the modulator learns to ignore them).
ANY_IMAGE = ["any image", "whatever the picture shows", "an image of anything", "every kind of scene",
             "a picture with any objects", "any visual content", "all images", "any photo or drawing"]
ANY_INSTRUCTION = ["any question", "whatever is asked", "an instruction of any kind", "every request",
                   "any query about the picture", "all questions", "any task", "a question of any type"]
# Words that say nothing about an image's content, left out of mined visual concepts.
# ("one" is not among them: it is a digit a request can be about, and as a determiner it is
# as common in general captions as in forget ones, so it never stands out.)
STOPWORDS = frozenset("a an the and or of in on at to with is are there this that it its image picture shows "
                      "showing some".split())

# A generic bank of instruction intents (not tied to the benchmark's templates): each
# intent is a group of phrases; a forget instruction votes for the intent of its nearest
# phrase, so near-synonyms of one intent do not split its votes.
INTENT_GROUPS = [
    ["counting objects", "asking how many things there are"],
    ["naming the colour of an object", "asking which colour something is"],
    ["asking where an object is", "locating an object in the picture"],
    ["identifying what an object is", "naming an object"],
    ["asking about the size of an object", "asking whether an object is big or small"],
    ["asking about the pattern or texture of an object", "asking whether something is striped or solid"],
    ["asking whether an object is present", "checking if the image contains something",
     "asking if there is a certain thing in the picture", "asking whether something can be seen"],
    ["asking about the background colour"],
    ["describing the whole image", "listing the objects in the image"],
    ["comparing two objects", "asking which object is larger"],
    ["reading a number or digit"],
]
INTENT_BANK = [phrase for group in INTENT_GROUPS for phrase in group]
_GROUP_OF = [g for g, group in enumerate(INTENT_GROUPS) for _ in group]
CAPTION_PROMPT = "describe the image."
# Family-wise error rate a later cover term must pass on the uncovered captions
# (`Decomposer.mine_visual_cover`); the conventional 5%, not chosen on any sequence.
REMAINDER_SIGNIFICANCE = 0.05
FRAMES_V = ["{p}", "an image with {p}", "a picture showing {p}", "a scene containing {p}"]
FRAMES_T = ["{p}", "a request about {p}", "an instruction for {p}", "a question on {p}"]


def caption_terms(backbone, images) -> list[set[str]]:
    """Per image: the words and adjacent word pairs of the model's caption (no stopwords)."""
    if not images:
        return []
    out = []
    for caption in backbone.generate(list(images), [CAPTION_PROMPT] * len(images)):
        words = [w.strip(".,;:!?") for w in caption.lower().split()]
        words = [w for w in words if w and w not in STOPWORDS]
        out.append(set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])})
    return out


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): how likely `k` of `n` images hold a term by chance
    when images hold it at rate `p` in general."""
    return sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k, n + 1))


def otsu(scores: torch.Tensor) -> tuple[float, float]:
    """(cut, split) of 1-D scores: Otsu's threshold (the cut maximising the between-group
    variance) and that variance's share of the total (1 = two tight, distant groups)."""
    values = scores.float().sort().values
    n, total = len(values), float(values.var(unbiased=False))
    if n < 4 or total <= 0:
        return float("inf"), 0.0
    best, cut = 0.0, float("inf")
    for k in range(1, n):
        low, high = values[:k], values[k:]
        between = k * (n - k) / n ** 2 * float(high.mean() - low.mean()) ** 2
        if between > best:
            best, cut = between, float((values[k - 1] + values[k]) / 2)
    return cut, best / total


class Decomposer:
    """Produces a request's concept descriptions from one of three sources."""

    def __init__(self, backbone=None, max_descriptions: int = 48,
                 general_instructions: Callable[[], list[str]] | None = None,
                 general_image_terms: Callable[[], list[set[str]]] | None = None,
                 image_terms: Callable[[list], list[set[str]]] | None = None):
        self.backbone = backbone
        # Per image, the terms a visual concept is mined from (default: its caption's).
        self.image_terms = image_terms or (lambda images: caption_terms(backbone, images))
        self.max_descriptions = max_descriptions
        # What questions ask and what images show in general: the base rates an intent or
        # a caption term must clearly exceed among the forget pairs to be the request's
        # concept (`mine_textual`, `mine_visual`). Callables, so the general pool is only
        # drawn (and captioned) when a request's concepts are mined.
        self.general_instructions = general_instructions
        self.general_image_terms = general_image_terms

    def __call__(self, request: DeletionRequest, source: str = "request") -> Concepts:
        if source == "request" and request.concepts is not None:
            concepts = request.concepts
        elif source in ("request", "annotations") and request.scope:
            concepts = self.from_annotations(request)
        elif source in ("request", "annotations", "model"):
            concepts = self.from_model(request)
        else:
            raise ValueError(f"unknown concept source {source!r}; valid: request, annotations, model")
        return self._trim(concepts)

    def _trim(self, concepts: Concepts) -> Concepts:
        def keep(items: list[str]) -> list[str]:
            items = list(dict.fromkeys(items))  # unique, in order
            if len(items) <= self.max_descriptions:
                return items
            step = len(items) / self.max_descriptions  # spread the pick over every phrase group
            return [items[int(i * step)] for i in range(self.max_descriptions)]
        return Concepts(keep(concepts.visual) or list(ANY_IMAGE), keep(concepts.textual) or list(ANY_INSTRUCTION),
                        concepts.source)

    # -- annotations -------------------------------------------------------------------
    @staticmethod
    def from_annotations(request: DeletionRequest) -> Concepts:
        """Generic phrases from the scope's values: {"visual": {attribute: value(s)}, "intents": [...]}."""
        scope = request.scope
        mode = scope.get("mode", "both")
        visual = scope.get("visual", {}) if mode != "textual" else {}
        intents = scope.get("intents", []) if mode != "visual" else []
        values = [v for key in sorted(visual) for v in (visual[key] if isinstance(visual[key], list) else [visual[key]])]
        core_v = [" ".join(str(v) for v in values)] if values else []
        vis = [f.format(p=c) for f in FRAMES_V for c in core_v + [f"something {c}" for c in core_v]]
        txt = [f.format(p=i) for f in FRAMES_T for i in intents]
        return Concepts(vis, txt, source="annotations")

    # -- the model itself --------------------------------------------------------------------
    def from_model(self, request: DeletionRequest) -> Concepts:
        if self.backbone is None:
            raise ValueError("concept_source 'model' needs a backbone to caption the forget images")
        visual, covered = self.mine_visual_cover(request)
        # What the images do not explain, the questions must: when the visual concept leaves
        # a quarter or more of the forget pairs uncovered (a request on star images *or* on
        # comparing sizes), the intents are mined on those pairs alone, where the question
        # is the only reason to refuse; otherwise on every forget pair.
        unexplained = [s for i, s in enumerate(request.forget_train) if i not in covered]
        enough = len(unexplained) >= max(8, 0.25 * len(request.forget_train))
        return Concepts(visual, self.mine_textual(request, unexplained if enough else None), source="model")

    def mine_visual(self, request: DeletionRequest) -> list[str]:
        """The mined visual descriptions (`mine_visual_cover` without the cover)."""
        return self.mine_visual_cover(request)[0]

    def mine_visual_cover(self, request: DeletionRequest) -> tuple[list[str], set[int]]:
        """(descriptions, the forget pairs whose captions hold them): the fewest caption
        terms, each clearly more common in forget captions than in general ones, that
        together cover the forget captions.

        Why general captions as the base rate: a request on one question about one kind of
        image keeps that kind of image, asked other questions, in its retain set, so against
        the retain captions its object barely stood out (probe request zero-one-background:
        "zero" in 50% of forget captions, lift 0.25 over retain). Why a cover: a concept of
        two values ("a zero or a one") has each value in about half of the forget captions;
        the best-scoring term alone left the other value out.

        Why a later term is judged on the captions still uncovered: a value held by a third
        of the forget images (a concept of three values, or the rarer of two) stands out
        little over all forget captions (a three-value request on validation images:
        "circle" lift 0.23 over the general rate) but clearly among the captions the first
        value leaves (share 0.69 vs 0.17, binomial tail 7e-6). Why a tail bound, not a lift:
        those captions are few (8-16), and an either-scope request's uncovered pairs are
        the question arm's images, where a chance term reaches a high share (probe
        diamond-or-exists: "seven" in 7 of 12, lift 0.31, tail 0.02)."""
        forget = self.image_terms([s.image for s in request.forget_train])
        if self.general_image_terms is not None:
            base = self.general_image_terms()
        else:
            base = self.image_terms([s.image for s in request.retain_train]) if request.retain_train else []
        holders: dict[str, set[int]] = {}
        for i, terms in enumerate(forget):
            for term in terms:
                holders.setdefault(term, set()).add(i)
        base_count = Counter(term for terms in base for term in terms)
        lift = {term: len(who) / len(forget) - (base_count[term] / len(base) if base else 0.0)
                for term, who in holders.items()}
        picked: list[str] = []
        covered: set[int] = set()
        while len(picked) < 3 and len(covered) < 0.9 * len(forget):
            gain = lambda term: len(holders[term] - covered) / len(forget)  # noqa: E731
            if picked:
                # later values: far more common among the uncovered captions than chance
                # allows, after a Bonferroni correction over the terms those captions hold
                uncovered = len(forget) - len(covered)
                terms = [t for t in holders if t not in picked and holders[t] - covered]
                candidates = [t for t in terms if binomial_tail(len(holders[t] - covered), uncovered,
                                                                (base_count[t] + 1) / (len(base) + 2))
                              < REMAINDER_SIGNIFICANCE / len(terms)]
            else:
                candidates = [term for term in holders if lift[term] >= 0.25]
            if not candidates:
                break
            # ties go to the shorter term: "zero" over "zero large", which holds no more
            best = max(candidates, key=lambda term: (round(gain(term) + lift[term], 6), -term.count(" "), term))
            if gain(best) < (0.3 if not picked else 0.2):
                break  # what is left of the forget captions shares no term that stands out
            picked.append(best)
            covered |= holders[best]
        if not picked:
            return list(ANY_IMAGE), set()
        cores = [c for term in picked for c in (f"a {term}", f"something {term}", f"{term} things")]
        return [f.format(p=c) for f in FRAMES_V for c in cores], covered

    def mine_textual(self, request: DeletionRequest, forget: list | None = None) -> list[str]:
        """The intents (groups of `INTENT_GROUPS`) that many forget instructions are nearest
        to, clearly more often than the general instructions are (the retain instructions
        when no general pairs are given).

        Why the general base rate: a request on one kind of question about one kind of
        image keeps that kind of question about other images in its retain set, so against
        the retain instructions its intent barely stood out (validation sequence:
        triangle-identity mined "any question"). Why groups: votes split between
        near-synonyms ("identifying what an object is" / "naming an object") left each
        under the bar. `forget`: the forget pairs to read (default: all of them).
        docs/methods.md, "Concepts mined from the model"."""
        from vlforget.methods.core.text_side import minilm

        encode_texts = minilm()
        bank = encode_texts(INTENT_BANK)

        def votes(instructions: list[str]) -> Counter:
            if not instructions:
                return Counter()
            return Counter(_GROUP_OF[i] for i in (encode_texts(instructions) @ bank.T).argmax(1).tolist())

        general = self.general_instructions() if self.general_instructions is not None else None
        base_instructions = general or [s.instruction for s in request.retain_train]
        forget = request.forget_train if forget is None else forget
        f, base = votes([s.instruction for s in forget]), votes(base_instructions)
        n_f, n_base = len(forget), max(1, len(base_instructions))
        intents = [g for g, c in sorted(f.items()) if c / n_f >= 0.15 and c / n_f - base[g] / n_base >= 0.1]
        if not intents or sum(f[g] for g in intents) / n_f < 0.6:
            # the forget instructions ask what questions ask in general, or one intent
            # stands out by chance among many (32 pairs of a visual-only request)
            return list(ANY_INSTRUCTION)
        return [fr.format(p=p) for fr in FRAMES_T for g in intents for p in INTENT_GROUPS[g]]
