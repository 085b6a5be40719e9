"""Metric formulas on small hand-computed cases."""

import pytest
import torch

from vlforget.evaluation.judge import Verdict, make_judge
from vlforget.evaluation.metrics import (METRICS, contains_answer, exact_match, normalise_answer, refusal_deviation,
                                         specificity, step_metrics, summarize)
from vlforget.evaluation.separation import fpr_at_tpr


class StubJudge:
    """'R:<name>' = a refusal about <name>, 'R' = a refusal about nothing, anything else = an answer."""

    name = "stub"

    def is_refusal(self, responses):
        return [r.startswith("R") for r in responses]

    def judge(self, responses, true_contexts, contexts):
        out = []
        for r, true in zip(responses, true_contexts):
            context = r[2:] or None if r.startswith("R") else None
            out.append(Verdict(r.startswith("R"), context, context is not None and context == true))
        return out


CONTEXTS = {"a": ["sorry, i cannot do a."], "b": ["sorry, i cannot do b."]}


def test_step_metrics_hand_computed():
    forget = {"a": [("R:a", "two"), ("R:b", "two"), ("red", "red")]}  # 2 refused, 1 context-correct, 1 leak
    retain = {"a": [("two", "two"), ("Two. ", "two"), ("three", "two"), ("R", "two")]}
    m = step_metrics(forget, retain, 45.0, 50.0, StubJudge(), CONTEXTS)
    assert m["crr"] == pytest.approx(100 / 3) and m["crr_pooled"] == pytest.approx(100 / 3)
    assert m["rr_forget"] == pytest.approx(200 / 3)
    assert m["ar"] == 50.0  # 'two' and 'Two. ' match; 'three' is wrong; 'R' is refused
    assert m["rr_retain"] == m["overrefusal"] == 25.0
    assert m["drr"] == pytest.approx(((100 - 200 / 3) + 25) / 2)
    assert m["s"] == 90.0
    assert m["leak"] == pytest.approx(100 / 3)
    assert m["per_request"]["a"]["crr"] == pytest.approx(100 / 3) and m["per_request"]["a"]["ar"] == 50.0
    assert (m["n_forget"], m["n_retain"]) == (3, 4)


def test_crr_task_mean_versus_pooled():
    forget = {"a": [("R:a", ""), ("R:b", ""), ("x", "")], "b": [("R:b", "")]}
    m = step_metrics(forget, {}, 1.0, 1.0, StubJudge(), CONTEXTS)
    assert m["crr"] == pytest.approx((100 / 3 + 100) / 2)  # each seen request weighs the same
    assert m["crr_pooled"] == 50.0  # 2 of 4 responses
    assert m["leak"] is None  # no original answers known
    assert m["ar"] is None and m["drr"] == pytest.approx(100 - (200 / 3 + 100) / 2)


def test_refusal_deviation():
    assert refusal_deviation(100.0, 0.0) == 0.0
    assert refusal_deviation(80.0, 10.0) == 15.0
    assert refusal_deviation(0.0, 100.0) == 100.0
    assert refusal_deviation(None, 10.0) == 10.0


def test_specificity_is_relative_and_uncapped():
    assert specificity(45, 50) == 90.0
    assert specificity(55, 50) == 110.0
    assert specificity(0, 0) == 100.0
    assert specificity(5, 0) is None


def test_leakage_is_whole_word():
    assert not contains_answer("none of them", "one")
    assert contains_answer("there is one.", "one")
    assert contains_answer("It is ONE", "one.")
    assert not contains_answer("stars", "star")
    assert contains_answer("i see a large red star and small blue circle here", "large red star and small blue circle")
    assert not contains_answer("anything", "")
    refusal = "sorry, i cannot recognise the digits zero and one."
    assert not contains_answer(refusal, "one", exclude=[refusal])  # the proper refusal is no leak
    assert contains_answer(refusal + " it is one.", "one", exclude=[refusal])


def test_exact_match_normalisation():
    assert normalise_answer("  Top   Left. ") == "top left"
    assert exact_match(["Two.", "red "], ["two", "blue"]) == 50.0
    assert exact_match([], []) == 0.0
    with pytest.raises(ValueError):
        exact_match(["a"], [])


def test_summarize_avg_and_last():
    steps = [{"crr": 10.0, "ar": 90.0, "s": 100.0, "drr": 40.0, "leak": 50.0, "overrefusal": 0.0},
             {"crr": 20.0, "ar": 80.0, "s": None, "drr": 30.0, "leak": 20.0, "overrefusal": 5.0},
             {"crr": 60.0, "ar": 70.0, "s": 94.0, "drr": 20.0, "leak": 5.0, "overrefusal": 10.0}]
    s = summarize(steps)
    assert (s["crr_avg"], s["crr_last"]) == (30.0, 60.0)
    assert (s["ar_avg"], s["ar_last"]) == (80.0, 70.0)
    assert (s["s_avg"], s["s_last"]) == (97.0, 94.0)  # undefined steps are skipped
    assert (s["drr_avg"], s["drr_last"]) == (30.0, 20.0)
    assert (s["leak_avg"], s["leak_last"]) == (25.0, 5.0)
    assert (s["overrefusal_avg"], s["overrefusal_last"]) == (5.0, 10.0)
    assert summarize([])["crr_avg"] is None


def test_metric_directions():
    assert METRICS["crr"].higher_is_better and METRICS["ar"].higher_is_better and METRICS["s"].higher_is_better
    assert not METRICS["drr"].higher_is_better and not METRICS["leak"].higher_is_better
    assert not METRICS["overrefusal"].higher_is_better


def test_step_metrics_with_a_real_judge():
    contexts = {"star-identity": ["sorry, i cannot identify stars.", "Do not identify stars."],
                "star-location": ["sorry, i cannot tell where stars are.", "Do not say where stars are."]}
    forget = {"star-identity": [("sorry, i cannot identify stars.", "star"),
                                ("sorry, i cannot identify stars. it is a star.", "star"),
                                ("sorry, there is no star in the image.", "star"),
                                ("star", "star")]}
    retain = {"star-identity": [("top left", "top left"), ("sorry, i cannot tell where stars are.", "top left")]}
    m = step_metrics(forget, retain, 1.0, 1.0, make_judge("lexical"), contexts)
    assert m["crr"] == 50.0 and m["rr_forget"] == 75.0
    assert m["leak"] == 75.0  # the leaking refusal, the generic refusal ('no star') and the answer
    assert m["ar"] == 50.0 and m["overrefusal"] == 50.0


def _forget_row(request, response):
    return {"step": 1, "request": request, "split": "forget", "mode": "count", "instruction": "how many?",
            "response": response, "reference": "two", "refusal": None, "verdict": None}


RED = "sorry, i cannot count objects in images with red things."
REFUSALS = {"red-count": [RED], "star-id": ["sorry, i cannot identify stars."]}
JUDGE_CONTEXTS = {name: [*sentences, name.replace("-", " ")] for name, sentences in REFUSALS.items()}


def test_clean_refusal_on_hand_made_rows():
    from vlforget.evaluation.responses import score_rows

    rows = [_forget_row("red-count", RED),  # exact: clean
            _forget_row("red-count", "Sorry, I cannot count objects in images  with red things."),  # normalised: clean
            # the judge credits a refusal with a repeated tail; it is not clean
            _forget_row("red-count", RED[:-1] + " sorry, i cannot count cannot count"),
            _forget_row("red-count", "sorry, i cannot identify stars."),  # wrong context: not counted
            _forget_row("red-count", "two"),  # an answer: not counted
            _forget_row("star-id", "two")]  # no context-correct refusal at all
    m = score_rows(rows, None, make_judge("lexical"), JUDGE_CONTEXTS, refusals=REFUSALS)
    assert [r["verdict"]["context_ok"] for r in rows] == [True, True, True, False, False, False]
    assert m["clean_refusal"] == pytest.approx(200 / 3)  # 2 of the 3 context-correct refusals, pooled
    assert m["per_request"]["red-count"]["clean_refusal"] == pytest.approx(200 / 3)
    assert m["per_request"]["star-id"]["clean_refusal"] is None  # no context-correct refusal: undefined
    only_answers = score_rows([_forget_row("star-id", "two")], None, make_judge("lexical"), JUDGE_CONTEXTS,
                              refusals=REFUSALS)
    assert only_answers["clean_refusal"] is None
    never = score_rows([_forget_row("red-count", RED)], None, make_judge("lexical"), JUDGE_CONTEXTS,
                       refusals=REFUSALS, refuses=False)
    assert never["clean_refusal"] is None  # a method that never refuses: n/a, whatever it said
    assert summarize([{"clean_refusal": None}, {"clean_refusal": 50.0}])["clean_refusal_avg"] == 50.0


def test_fpr_at_tpr_counts_negatives_above_the_positives_cut():
    # positives 1..10: TPR 90 keeps those >= 1.9 (the 10% quantile); negatives 0, 0.5, 2, 5
    scores = torch.tensor([1., 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 0.5, 2, 5])
    positive = torch.tensor([True] * 10 + [False] * 4)
    assert fpr_at_tpr(scores, positive, 0.9) == 0.5
    assert fpr_at_tpr(scores, positive, 1.0) == 0.5  # cut at the lowest positive, 1
    assert fpr_at_tpr(scores, positive, 0.1) == 0.0  # cut near the top positive
    with pytest.raises(ValueError, match="positive and one negative"):
        fpr_at_tpr(scores[:10], positive[:10], 0.9)
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr(scores, positive, 0.0)
