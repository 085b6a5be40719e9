"""The built-in benchmark: deterministic, structured, with the hard negatives it promises."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlforget.data.benchmark import Benchmark, BenchmarkConfig, general_samples
from vlforget.data.instructions import INTENTS, TEMPLATES
from vlforget.data.requests import RequestSpec, load_paraphrases, load_specs


@pytest.fixture(scope="module")
def bench():
    return Benchmark(BenchmarkConfig(n_forget_train=8, n_forget_test=8, n_retain_train=8, n_retain_test=12,
                                     n_general_test=50, n_utility=40))


def _fingerprint(samples):
    return [(s.instruction, s.answer, np.asarray(s.image).tobytes()) for s in samples]


def test_general_data_is_deterministic_and_seed_dependent():
    a, b, c = general_samples(30, 1), general_samples(30, 1), general_samples(30, 2)
    assert _fingerprint(a) == _fingerprint(b)
    assert _fingerprint(a) != _fingerprint(c)


def test_general_data_covers_every_intent_and_some_declines():
    samples = general_samples(1500, 0)
    intents = {s.intent for s in samples}
    assert intents == set(INTENTS)
    declines = [s for s in samples if s.should_decline]
    assert 0.02 < len(declines) / len(samples) < 0.10
    assert all(s.answer.startswith("sorry, there is no") for s in declines)


def test_every_intent_has_five_paraphrases():
    assert all(len(templates) >= 5 for templates in TEMPLATES.values())


def test_requests_are_deterministic(bench):
    again = Benchmark(bench.config)
    for r1, r2 in zip(bench.requests(), again.requests()):
        assert _fingerprint(r1.forget_test) == _fingerprint(r2.forget_test)
        assert _fingerprint(r1.retain_test) == _fingerprint(r2.retain_test)


def test_default_sequence_shape(bench):
    requests = bench.requests()
    assert len(requests) == 16
    kinds = [r.scope["kind"] for r in requests]
    assert kinds.count("classification") >= 3 and kinds.count("qa") >= 8
    assert {r.scope["mode"] for r in requests} == {"both", "visual", "textual", "either"}
    for r in requests:
        assert r.forget_train and r.forget_test and r.retain_train and r.retain_test
        assert len(r.concepts.visual) >= 8 and len(r.concepts.textual) >= 8
        assert r.refusal and r.description


def test_forget_pairs_are_in_exactly_their_own_scope(bench):
    for r in bench.requests():
        for s in r.forget_train + r.forget_test:
            assert bench.scopes_of(s.meta["scene"], s.intent) == [r.name]
            assert s.answer == r.refusal
            assert s.meta["original_answer"] and s.meta["original_answer"] != r.refusal


def test_retain_pairs_are_hard_negatives_outside_every_scope(bench):
    for r in bench.requests():
        kinds = {s.meta["negative"] for s in r.retain_test}
        for s in r.retain_test:
            assert bench.scopes_of(s.meta["scene"], s.intent) == []
        forget_scenes = {id(s.meta["scene"]) for s in r.forget_test}
        if r.scope["mode"] == "both":
            assert kinds == {"same_image_other_intent", "same_intent_other_image"}
            same_image = [s for s in r.retain_test if s.meta["negative"] == "same_image_other_intent"]
            # literally the forget images, asked something else
            assert all(id(s.meta["scene"]) in forget_scenes for s in same_image)
            same_intent = [s for s in r.retain_test if s.meta["negative"] == "same_intent_other_image"]
            assert all(s.intent in r.scope["intents"] for s in same_intent)


def test_requests_share_concepts(bench):
    specs = bench.specs
    shapes = [s.visual.get("shape") for s in specs]
    assert shapes.count("star") >= 2
    intents = [i for s in specs for i in s.intents]
    assert intents.count("count") >= 2 and intents.count("identify") >= 3


def test_utility_split_is_outside_every_scope(bench):
    utility = bench.utility_split()
    assert len(utility) == 40
    assert all(bench.out_of_all_scopes(s) and not s.should_decline for s in utility)


def test_user_request_file(tmp_path):
    spec = [{"name": "no-red-stars", "description": "Do not discuss red stars.", "mode": "visual",
             "visual": {"shape": "star", "colour": "red"}, "refusals": ["sorry, i cannot discuss red stars."]}]
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(spec))
    bench = Benchmark(BenchmarkConfig(requests_file=str(path), n_forget_train=4, n_forget_test=4,
                                      n_retain_train=4, n_retain_test=4, n_utility=10))
    (request,) = bench.requests()
    assert all(s.meta["scene"].has(shape="star", colour="red") for s in request.forget_test)


@pytest.mark.parametrize("bad, message", [
    ({"mode": "sideways"}, "unknown mode"),
    ({"intents": ["juggle"]}, "unknown intent"),
    ({"visual": {"shape": "hexagon"}}, "unknown shape"),
    ({"refusals": []}, "refusal"),
])
def test_bad_request_specs_name_the_problem(bad, message):
    base = {"name": "x", "description": "d", "refusals": ["sorry."], "mode": "both",
            "visual": {"shape": "star"}, "intents": ["count"]}
    with pytest.raises(ValueError, match=message):
        RequestSpec(**{**base, **bad})


def test_request_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_specs(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: [unclosed")
    with pytest.raises(ValueError, match="could not parse"):
        load_specs(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("- {name: a, description: b, refusals: [c], mode: textual, intents: [count], colour: red}")
    with pytest.raises(ValueError, match="unknown field"):
        load_specs(unknown)


def test_user_paraphrases_are_used_for_evaluation(tmp_path):
    path = tmp_path / "para.yaml"
    path.write_text("count:\n  - 'please count the {objs}.'\n")
    assert load_paraphrases(path)["count"] == ["please count the {objs}."]
    bench = Benchmark(BenchmarkConfig(paraphrases_file=str(path), n_forget_train=4, n_forget_test=6,
                                      n_retain_train=4, n_retain_test=4, n_utility=10))
    red_count = next(r for r in bench.requests() if r.name == "red-count")
    assert all(s.instruction.startswith("please count the") for s in red_count.forget_test)
    assert not any(s.instruction.startswith("please count the") for s in red_count.forget_train)
