"""The Decomposer: a request -> `Concepts` (visual and textual descriptions).

Three sources, same output shape:
- ``request``: the descriptions the request brings (`request.concepts`);
- ``annotations``: written from the request's machine-readable scope
  (`request.scope`: visual attribute values and intent names) with generic frames;
- ``model``: from the model itself. Visual: the backbone captions every forget image
  ("describe the image.") and every retain image; the caption words (and adjacent word
  pairs) that appear in most forget captions and clearly more often than in retain
  captions become the concept ("an image with red star"), whatever the vocabulary. Textual: each forget
  instruction votes (MiniLM, nearest phrase) for one intent of a fixed, generic bank of
  intents, each a group of phrases; intents that many forget instructions vote for,
  clearly more often than the benchmark's general instructions do (the retain
  instructions when no general pairs are given), become the intent concepts. If nothing
  stands out, the side is "any image" / "any question", which the modulator then learns
  to ignore.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

from vlforget.types import Concepts, DeletionRequest

# CORE's own "no concept on this side" descriptions (the modulator learns to ignore them).
ANY_IMAGE = ["any image", "whatever the picture shows", "an image of anything", "every kind of scene",
             "a picture with any objects", "any visual content", "all images", "any photo or drawing"]
ANY_INSTRUCTION = ["any question", "whatever is asked", "an instruction of any kind", "every request",
                   "any query about the picture", "all questions", "any task", "a question of any type"]
# Words that say nothing about an image's content, left out of mined visual concepts.
STOPWORDS = frozenset("a an the and or of in on at to with is are there this that it its image picture shows "
                      "showing some one".split())

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
FRAMES_V = ["{p}", "an image with {p}", "a picture showing {p}", "a scene containing {p}"]
FRAMES_T = ["{p}", "a request about {p}", "an instruction for {p}", "a question on {p}"]


class Decomposer:
    """Produces a request's concept descriptions from one of three sources."""

    def __init__(self, backbone=None, max_descriptions: int = 48,
                 general_instructions: Callable[[], list[str]] | None = None):
        self.backbone = backbone
        self.max_descriptions = max_descriptions
        # What questions ask in general: the base rate an intent must clearly exceed among
        # the forget instructions to be the request's intent (`mine_textual`). A callable,
        # so the general pool is only drawn when a request's intents are mined.
        self.general_instructions = general_instructions

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
        return Concepts(self.mine_visual(request), self.mine_textual(request), source="model")

    def _caption_terms(self, images) -> list[set[str]]:
        """Per image: the words and adjacent word pairs of the model's caption (no stopwords)."""
        captions = self.backbone.generate(list(images), [CAPTION_PROMPT] * len(images))
        out = []
        for caption in captions:
            words = [w.strip(".,;:!?") for w in caption.lower().split()]
            words = [w for w in words if w and w not in STOPWORDS]
            out.append(set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])})
        return out

    def mine_visual(self, request: DeletionRequest) -> list[str]:
        """Caption terms common in forget captions and clearly rarer in retain captions."""
        forget = self._caption_terms([s.image for s in request.forget_train])
        retain = self._caption_terms([s.image for s in request.retain_train]) if request.retain_train else []
        f_count = Counter(a for sets in forget for a in sets)
        r_count = Counter(a for sets in retain for a in sets)
        scored = []
        for term, c in f_count.items():
            cover = c / len(forget)
            lift = cover - (r_count[term] / len(retain) if retain else 0.0)
            if cover >= 0.4 and lift >= 0.25:
                scored.append((cover + lift, term))
        if not scored:
            return list(ANY_IMAGE)
        scored.sort(reverse=True)
        best = scored[0][0]
        picked = [a for s, a in scored if s >= best - 0.15][:3]
        cores = [c for term in picked for c in (f"a {term}", f"something {term}", f"{term} things")]
        return [f.format(p=c) for f in FRAMES_V for c in cores]

    def mine_textual(self, request: DeletionRequest) -> list[str]:
        """The intents (groups of `INTENT_GROUPS`) that many forget instructions are nearest
        to, clearly more often than the general instructions are (the retain instructions
        when no general pairs are given).

        Why the general base rate: a request on one kind of question about one kind of
        image keeps that kind of question about other images in its retain set, so against
        the retain instructions its intent barely stood out (validation sequence:
        triangle-identity mined "any question"). Why groups: votes split between
        near-synonyms ("identifying what an object is" / "naming an object") left each
        under the bar. docs/methods.md, "Concepts mined from the model"."""
        from vlforget.methods.core.text_side import minilm

        encode_texts = minilm()
        bank = encode_texts(INTENT_BANK)

        def votes(instructions: list[str]) -> Counter:
            if not instructions:
                return Counter()
            return Counter(_GROUP_OF[i] for i in (encode_texts(instructions) @ bank.T).argmax(1).tolist())

        general = self.general_instructions() if self.general_instructions is not None else None
        base_instructions = general or [s.instruction for s in request.retain_train]
        f, base = votes([s.instruction for s in request.forget_train]), votes(base_instructions)
        n_f, n_base = len(request.forget_train), max(1, len(base_instructions))
        intents = [g for g, c in sorted(f.items()) if c / n_f >= 0.15 and c / n_f - base[g] / n_base >= 0.1]
        if not intents or sum(f[g] for g in intents) / n_f < 0.6:
            # the forget instructions ask what questions ask in general, or one intent
            # stands out by chance among many (32 pairs of a visual-only request)
            return list(ANY_INSTRUCTION)
        return [fr.format(p=p) for fr in FRAMES_T for g in intents for p in INTENT_GROUPS[g]]
