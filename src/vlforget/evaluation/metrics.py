"""Metrics of continual unlearning: per-step formulas and the Avg/Last summary.

All rates are percentages (0-100). docs/metrics.md states each formula; in short, after
request t (seen requests R_t = {1..t}, every request's retain pairs in the sequence):

- CRR_t  = mean over r in R_t of CRR_t(r), CRR_t(r) = % of r's forget responses that
           the judge calls refused AND context-correct for r. (`crr_pooled`: the same
           share over all forget responses of R_t pooled; equal when sizes are equal.)
- AR_t   = % of retain responses (pooled) not refused AND exactly matching the reference.
- S_t    = 100 * utility accuracy now / utility accuracy of the original model (no cap).
- dRR_t  = ((100 - RR_forget_t) + RR_retain_t) / 2, mean distance from the targets.
- Leak_t = mean over r in R_t of % of forget responses containing the original answer.
- OverRefusal_t = RR_retain_t = % of retain responses that are refusals.
- CleanRefusal_t = % of the context-correct refusals (pooled over R_t) that are, after
           `normalise`, exactly one of the request's refusal sentences (no stray or
           repeated words the judge still credits); None when there are none, or for a
           method that never refuses.
Summary: X_avg = mean over steps of X_t, X_last = X_T.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from vlforget.evaluation.judge import Judge, make_judge
from vlforget.text import normalise, normalise_answer

Pair = tuple[str, str]  # (response, reference): original answer (forget) or correct answer (retain)


@dataclass(frozen=True)
class Metric:
    key: str
    higher_is_better: bool
    description: str


METRICS: dict[str, Metric] = {m.key: m for m in [
    Metric("crr", True, "context-aware refusal rate on forget data of seen requests (mean over requests)"),
    Metric("crr_pooled", True, "context-aware refusal rate, forget responses of seen requests pooled"),
    Metric("ar", True, "answer rate: retain responses not refused and exactly correct"),
    Metric("s", True, "specificity: utility accuracy relative to the original model (100 = unchanged)"),
    Metric("drr", False, "refusal-rate deviation from 100% on forget and 0% on retain data"),
    Metric("rr_forget", True, "refusal rate on forget data of seen requests (mean over requests)"),
    Metric("rr_retain", False, "refusal rate on retain data"),
    Metric("leak", False, "forget responses that still contain the original answer (mean over requests)"),
    Metric("overrefusal", False, "retain responses that are refusals (= rr_retain)"),
    Metric("clean_refusal", True, "context-correct refusals that are exactly one of the request's refusal "
                                  "sentences (after normalise), pooled"),
    Metric("retain_rougeL", True, "ROUGE-L F1 of retain answers against the zero-shot model's answers"),
    Metric("retain_similarity", True, "MiniLM cosine similarity of retain answers to the zero-shot model's answers"),
]}
# The metrics summarised as <key>_avg / <key>_last.
SUMMARY_METRICS = ("crr", "crr_pooled", "ar", "s", "drr", "leak", "overrefusal", "clean_refusal", "retain_rougeL",
                   "retain_similarity")


# --- text helpers ----------------------------------------------------------------------------------
def exact_match(responses: Sequence[str], answers: Sequence[str]) -> float:
    """% of responses equal to their answer after `normalise_answer` (0.0 for no pairs)."""
    if len(responses) != len(answers):
        raise ValueError(f"{len(responses)} responses but {len(answers)} answers")
    if not answers:
        return 0.0
    hits = sum(normalise_answer(r) == normalise_answer(a) for r, a in zip(responses, answers))
    return 100.0 * hits / len(answers)


def contains_answer(response: str, answer: str, exclude: Sequence[str] = ()) -> bool:
    """Whole-word/phrase occurrence of `answer` in `response` ('one' is not in 'none').

    `exclude` texts (the request's own refusal sentences) are cut out first: the proper
    refusal "sorry, i cannot recognise the digits zero and one." must not count as
    leaking the answer "one".
    """
    answer = normalise_answer(answer)
    if not answer:
        return False
    text = normalise_answer(response)
    for sentence in sorted((normalise_answer(e) for e in exclude), key=len, reverse=True):
        if sentence:
            text = text.replace(sentence, " ")
    return re.search(rf"(?<![a-z0-9]){re.escape(answer)}(?![a-z0-9])", text) is not None


def pct(hits: int, total: int) -> float | None:
    return 100.0 * hits / total if total else None


def mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


# --- per-step metrics -------------------------------------------------------------------------------
def specificity(utility_accuracy: float, utility_base: float) -> float | None:
    """100 * now / original, not capped (a method may improve utility). Undefined (None) if
    the original model scores 0 and the current one does not; 100 if both score 0."""
    if utility_base > 0:
        return 100.0 * utility_accuracy / utility_base
    return 100.0 if utility_accuracy == 0 else None


def is_clean_refusal(response: str, sentences: Sequence[str]) -> bool:
    """The response is, after `normalise`, exactly one of the sentences: a context-correct
    refusal with a repeated tail ("... cannot count cannot count") is not clean."""
    return normalise(response) in {normalise(s) for s in sentences}


def refusal_deviation(rr_forget: float | None, rr_retain: float | None) -> float | None:
    """dRR = mean of |RR_forget - 100| and |RR_retain - 0| over the groups that exist."""
    return mean([None if rr_forget is None else 100.0 - rr_forget, rr_retain])


def step_metrics(forget: dict[str, list[Pair]], retain: dict[str, list[Pair]], utility_accuracy: float,
                 utility_base: float, judge: Judge | None, contexts: dict[str, list[str]],
                 verdicts: dict[str, dict[str, list]] | None = None, *,
                 refusals: dict[str, Sequence[str]] | None = None, refuses: bool = True) -> dict[str, Any]:
    """All metrics of one evaluation step.

    forget:   request name -> [(response, original answer)] for every request seen so far;
              an empty original answer means unknown (left out of leakage).
    retain:   request name -> [(response, correct answer)] for the retain pairs evaluated;
              an empty answer means unknown: the pair counts as answered if not refused.
    utility_accuracy / utility_base: exact-match accuracy (any one scale) of the current and
              the original model on the utility split.
    judge:    a Judge (None: make_judge('auto')).
    contexts: request name -> reference texts (refusals + description) the judge chooses
              among; must contain every forget request.
    verdicts: if given, filled with the judge's decision on every pair, so the caller can
              keep them beside the responses: {"forget": {name: [Verdict]}, "retain": {name: [refused]}}.
    refusals: request name -> its refusal sentences, what a clean refusal equals (None: the
              request's contexts; a request missing here has clean_refusal None).
    refuses:  False for a method that never refuses by design (`Method.refuses`):
              clean_refusal is then None.
    Returns the headline rates plus `per_request` breakdowns (for request x step heatmaps).
    """
    judge = judge or make_judge("auto")
    per_request: dict[str, dict[str, Any]] = {}
    refusals = contexts if refusals is None else refusals
    totals = {"n": 0, "ok": 0, "refused": 0, "clean_of": 0, "clean": 0}
    for name, pairs in forget.items():
        judged = judge.judge([r for r, _ in pairs], [name] * len(pairs), contexts)
        if verdicts is not None:
            verdicts.setdefault("forget", {})[name] = judged
        ok = sum(v.context_ok for v in judged)
        refused = sum(v.refused for v in judged)
        known = [(r, a) for r, a in pairs if normalise_answer(a)]
        leaked = sum(contains_answer(r, a, contexts.get(name, ())) for r, a in known)
        # Clean refusals: of the context-correct ones, those that are exactly a refusal
        # sentence. Counted only where the sentences are known and the method refuses.
        credited = [r for (r, _), v in zip(pairs, judged) if v.context_ok] if refuses and refusals.get(name) else []
        clean = sum(is_clean_refusal(r, refusals[name]) for r in credited)
        per_request[name] = {"n_forget": len(pairs), "crr": pct(ok, len(pairs)),
                             "rr_forget": pct(refused, len(pairs)), "leak": pct(leaked, len(known)),
                             "clean_refusal": pct(clean, len(credited))}
        totals["n"] += len(pairs)
        totals["ok"] += ok
        totals["refused"] += refused
        totals["clean_of"] += len(credited)
        totals["clean"] += clean

    retain_n = retain_refused = retain_answered = 0
    for name, pairs in retain.items():
        flags = judge.is_refusal([r for r, _ in pairs])
        if verdicts is not None:
            verdicts.setdefault("retain", {})[name] = flags
        # A retain pair with no known reference (e.g. open prompts in loaded datasets)
        # counts as answered when it is not refused: correctness cannot be checked.
        answered = sum(not f and (not normalise_answer(a) or normalise_answer(r) == normalise_answer(a))
                       for f, (r, a) in zip(flags, pairs))
        entry = per_request.setdefault(name, {})
        entry.update({"n_retain": len(pairs), "ar": pct(answered, len(pairs)), "rr_retain": pct(sum(flags), len(pairs))})
        retain_n += len(pairs)
        retain_refused += sum(flags)
        retain_answered += answered

    seen = [per_request[n] for n in forget]
    rr_forget = mean([e["rr_forget"] for e in seen])
    rr_retain = pct(retain_refused, retain_n)
    return {
        "crr": mean([e["crr"] for e in seen]),
        "crr_pooled": pct(totals["ok"], totals["n"]),
        "ar": pct(retain_answered, retain_n),
        "s": specificity(utility_accuracy, utility_base),
        "drr": refusal_deviation(rr_forget, rr_retain),
        "rr_forget": rr_forget,
        "rr_forget_pooled": pct(totals["refused"], totals["n"]),
        "rr_retain": rr_retain,
        "leak": mean([e["leak"] for e in seen]),
        "overrefusal": rr_retain,
        "clean_refusal": pct(totals["clean"], totals["clean_of"]),
        "utility_accuracy": utility_accuracy,
        "n_forget": totals["n"],
        "n_retain": retain_n,
        "per_request": per_request,
    }


# --- summary ---------------------------------------------------------------------------------
def summarize(steps: list[dict[str, Any]]) -> dict[str, float | None]:
    """<metric>_avg = mean over steps t = 1..T of metric_t (steps where it is undefined are
    skipped); <metric>_last = metric_T."""
    out: dict[str, float | None] = {}
    for key in SUMMARY_METRICS:
        values = [s.get(key) for s in steps]
        out[f"{key}_avg"] = mean(values)
        out[f"{key}_last"] = values[-1] if values else None
    return out
