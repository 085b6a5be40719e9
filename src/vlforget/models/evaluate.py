"""Base-model evaluation on general pairs: exact match per intent and refusal behaviour."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from vlforget.text import is_refusal, normalise_answer
from vlforget.types import Sample


def base_eval(backbone, samples: Sequence[Sample], batch_size: int = 64, return_answers: bool = False) -> dict:
    """Greedy answers of `backbone` on `samples`, scored by exact match.

    Returns percentages (0-100): `exact_match` (overall), `per_intent` {intent: exact
    match}, `refusal_rate` (share of should-decline pairs answered with a refusal),
    `false_refusal_rate` (share of the other pairs answered with a refusal), and counts.
    A rate over no pairs is None. With `return_answers`, also the generated `answers`.
    Pairs without a reference answer (loaded data: open prompts) are answered and count
    for refusal rates, not for exact match (`n_scored` pairs have one).
    """
    samples = list(samples)
    answers = backbone.generate([s.image for s in samples], [s.instruction for s in samples],
                                batch_size=batch_size)
    per_intent: dict[str, list[bool]] = defaultdict(list)
    hits, refused, falsely = [], [], []
    for sample, answer in zip(samples, answers):
        if normalise_answer(sample.answer):
            hit = normalise_answer(answer) == normalise_answer(sample.answer)
            hits.append(hit)
            per_intent[sample.intent].append(hit)
        (refused if sample.should_decline else falsely).append(is_refusal(answer))

    def mean(values: list[bool]) -> float | None:
        return 100.0 * sum(values) / len(values) if values else None

    report = {
        "n": len(samples),
        "n_scored": len(hits),
        "exact_match": mean(hits),
        "per_intent": {intent: mean(v) for intent, v in sorted(per_intent.items())},
        "per_intent_n": {intent: len(v) for intent, v in sorted(per_intent.items())},
        "refusal_rate": mean(refused),
        "false_refusal_rate": mean(falsely),
        "n_should_decline": len(refused),
    }
    if return_answers:
        report["answers"] = answers
    return report


def base_eval_views(backbone, benchmark) -> dict:
    """`base_eval` on the benchmark's held-out general split, in every phrasing group.

    The top level is the report on the benchmark's evaluation phrasings (v1: its only
    templates). Benchmark v2 adds `phrasings`: {"evaluation", "request", "pressure"}
    reports (pressure = the evaluation-phrased pairs inside pressure sentences) and
    `benchmark_version`.
    """
    from vlforget.data.phrasings import with_pressure

    evaluation = benchmark.general_test("evaluation")
    report = base_eval(backbone, evaluation)
    report["benchmark_version"] = benchmark.version
    if benchmark.config.version >= 2:
        report["phrasings"] = {
            "evaluation": {k: v for k, v in report.items() if k != "benchmark_version"},
            "request": base_eval(backbone, benchmark.general_test("request")),
            "pressure": base_eval(backbone, with_pressure(evaluation)),
        }
    return report
