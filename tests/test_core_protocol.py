"""CORE's protocol as one command: `vlforget run --dataset core --data DIR --method core`.

Data: CORE's published layout holding all 60 keywords and 80 ImageNet-R classes
(generated, `core_protocol_data.py`), so the loader builds CORE's 16 requests in CORE's
order; a stand-in checkout of CORE's repository gives the refusal sentences, prompt
pools and refusal patterns (`--core-repo`)."""

from __future__ import annotations

import gzip
import json

import pytest
import yaml
from typer.testing import CliRunner

from core_protocol_data import CHECKOUT_SENTENCES, make_core_checkout, make_core_release
from vlforget.cli import app
from vlforget.data.loaders import load_sequence
from vlforget.data.loaders.core_release import CORE_SAFE_KEYWORDS
from vlforget.evaluation.judge import make_judge

pytestmark = pytest.mark.usefixtures("one_thread")
TINY_CORE = {"steps": 2, "modulator_steps": 20, "router_steps": 5, "pool_size": 4,
             "prototypes": 2}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_core_release(tmp_path_factory.mktemp("core-release"))


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    return make_core_checkout(tmp_path_factory.mktemp("core-checkout"))


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_the_full_release_gives_cores_sixteen_requests_in_order(release, checkout):
    requests = load_sequence("core", release, core_repo=checkout)
    assert len(requests) == 16
    assert [r.scope["keywords"] for r in requests[:12]] == [CORE_SAFE_KEYWORDS[i:i + 5] for i in range(0, 60, 5)]
    assert [r.scope["kind"] for r in requests] == ["safety"] * 12 + ["classification"] * 4
    # the checkout's sentences, not vlforget's
    assert requests[0].refusals == CHECKOUT_SENTENCES["Sex"]
    assert requests[12].refusals == ["Stand-in: I cannot classify this image."]
    assert {s.instruction for s in requests[12].forget_train} == {"Stand-in: which class is this?"}
    own = load_sequence("core", release)
    assert own[0].refusals != requests[0].refusals  # without a checkout: vlforget's own sentences


def test_core_judge_uses_the_checkouts_patterns_and_the_nearest_refusal(checkout):
    contexts = {"sex": CHECKOUT_SENTENCES["Sex"], "weapon": CHECKOUT_SENTENCES["Weapon"]}
    judge = make_judge("core", core_repo=checkout)
    responses = ["Stand-in refusal 1 for Weapon: I cannot help with this Weapon request.",
                 "Stand-in refusal 2 for Weapon: I cannot help with this Weapon request.",
                 "I must decline."]  # a refusal by vlforget's rules, not by the checkout's patterns
    verdicts = judge.judge(responses, ["weapon", "sex", "weapon"], contexts)
    assert [v.refused for v in verdicts] == [True, True, False]
    assert [v.context_ok for v in verdicts] == [True, False, False]
    assert make_judge("core").judge(["I must decline."], ["weapon"], contexts)[0].refused  # vlforget's patterns


def test_core_protocol_runs_to_the_report(release, checkout, tmp_path):
    out = tmp_path / "core"
    config = tmp_path / "core.yaml"
    config.write_text(yaml.safe_dump(TINY_CORE))
    result = _cli("run", "--dataset", "core", "--data", release, "--core-repo", checkout, "--method", "core",
                  "--judge", "core", "--config", config, "--limit", 2, "--out", out)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["use_retain"] is False  # forget-only training, as CORE's paper
    assert results["judge"]["name"] == "core" and results["judge"]["patterns"] == "core"
    assert results["benchmark_config"]["options"]["core_repo"] == str(checkout)
    assert set(results["steps"][-1]["per_mode"]) >= {"HH", "HU", "UH", "UU"}
    assert (out / "report.html").exists()
    with gzip.open(out / "responses.jsonl.gz", "rt") as handle:
        rows = [json.loads(line) for line in handle]
    assert {r["refusal"] for r in rows if r["split"] == "forget"} <= set(CHECKOUT_SENTENCES["Sex"])
    overridden = _cli("run", "--dataset", "core", "--data", release, "--method", "core", "--judge", "lexical",
                      "--config", _write(tmp_path / "own.yaml", {**TINY_CORE, "use_retain": True}), "--limit", 1,
                      "--out", tmp_path / "own")
    assert overridden.exit_code == 0, overridden.output
    assert json.loads((tmp_path / "own" / "results.json").read_text())["config"]["use_retain"] is True


@pytest.mark.parametrize("temperature", [0.0, 0.05])
def test_neighbour_temperature_from_a_config_file_on_builtin_and_loaded_data(temperature, release, tmp_path):
    """`neighbour_temperature` (0 = the uniform 1/k weights) set in the file `--config`
    reads, on the built-in benchmark and on data in CORE's layout: the run records it and
    its saved state answers through `chat` with it."""
    config = _write(tmp_path / "t.yaml", {**TINY_CORE, "neighbour_temperature": temperature})
    data = {"builtin": [], "loaded": ["--dataset", "core", "--data", release, "--judge", "lexical"]}
    for name, extra in data.items():
        out = tmp_path / name
        result = _cli("run", *extra, "--method", "core", "--config", config, "--limit", 1, "--out", out)
        assert result.exit_code == 0, (name, result.output)
        results = json.loads((out / "results.json").read_text())
        assert results["config"]["neighbour_temperature"] == temperature, name
        example = results["examples"][0]
        chat = _cli("chat", "--image", out / example["image"], "--state", out, example["instruction"])
        assert chat.exit_code == 0, (name, chat.output)


def test_concepts_mined_from_the_model_from_a_config_file_on_builtin_and_loaded_data(release, tmp_path):
    """`concept_source: model` as the README's comparison runs it: the request's written
    descriptions are not read, the model's captions (against the general images of the
    benchmark in use) and the general questions give the concepts, on the built-in
    benchmark and on data in CORE's layout; the saved state says where they came from."""
    config = _write(tmp_path / "mined.yaml", {**TINY_CORE, "concept_source": "model"})
    data = {"builtin": [], "loaded": ["--dataset", "core", "--data", release, "--judge", "lexical"]}
    for name, extra in data.items():
        out = tmp_path / name
        result = _cli("run", *extra, "--method", "core", "--config", config, "--limit", 1, "--out", out)
        assert result.exit_code == 0, (name, result.output)
        assert json.loads((out / "results.json").read_text())["config"]["concept_source"] == "model", name
        state = json.loads(next((out / "states").glob("step-*/method.json")).read_text())["state"]
        assert [c["source"] for c in state["concepts"]] == ["model"], name
        assert state["concept_encoder"]["identity"], name  # the state names the encoder that embedded it


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_folder_that_is_not_a_core_checkout_is_one_line(release, tmp_path):
    result = _cli("run", "--dataset", "core", "--data", release, "--core-repo", tmp_path, "--out", tmp_path / "x")
    assert result.exit_code == 2 and "does not look like a copy of CORE's repository" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("method", ["core", "idknll"])
@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3"])
def test_core_protocol_on_every_family_runs_all_sixteen_requests(family, method, release, checkout, tmp_path):
    """The issue's done-when: tiny hub-layout checkpoints of every family (no vlforget.json),
    all 16 requests, the HH/HU/UH/UU breakdown, per-pair responses and S from a utility file."""
    from utility_data import make_mmbench_tsv
    from vlforget.data.benchmark import Benchmark
    from vlforget.methods.core import encoders
    from vlforget.models.backbone import Backbone
    from vlforget.models.tiny_families import save_hub_layout

    folder = save_hub_layout(family, tmp_path / family)  # its family's chat format, its own settings
    backbone = Backbone.load(folder)
    assert "vlforget.json" not in {p.name for p in folder.iterdir()}
    key = encoders.vision_fingerprint(backbone)
    if key not in encoders._LOADED:  # a few steps of CORE's heads: the full fit tests nothing more here
        encoders._LOADED[key] = encoders.train_heads(backbone, Benchmark().general_pool, n=48, steps=10, batch=32)
    settings = {**TINY_CORE, "threshold": 0.0} if method == "core" else {"steps": 2}
    out = tmp_path / "run"
    result = _cli("run", "--dataset", "core", "--data", release, "--core-repo", checkout, "--model", folder,
                  "--method", method, "--judge", "core", "--config", _write(tmp_path / "m.yaml", settings),
                  "--utility", make_mmbench_tsv(tmp_path / "mmbench.tsv"), "--out", out)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert len(results["steps"]) == 16 and results["backbone"]["model_type"] == family
    assert {"HH", "HU", "UH", "UU"} <= set(results["steps"][-1]["per_mode"])
    assert results["steps"][-1]["s"] is not None or results["base"]["utility_accuracy"] == 0
    assert (out / "report.html").exists() and (out / "responses.jsonl.gz").exists()


@pytest.mark.parametrize("name", ["graddiff", "core"])
def test_use_retain_off_hides_retain_pairs_from_a_method(name, monkeypatch):
    from vlforget.data.benchmark import Benchmark, BenchmarkConfig
    from vlforget.methods import make_method
    from vlforget.models.backbone import Backbone

    request = Benchmark(BenchmarkConfig(seed=1, n_forget_train=4, n_retain_train=4)).requests()[0]
    assert request.retain_train
    for use_retain, expected in ((True, len(request.retain_train)), (False, 0)):
        method = make_method(name, Backbone.load(), {"use_retain": use_retain})
        seen = []
        monkeypatch.setattr(method, "_unlearn", lambda r: seen.append(len(r.retain_train)))
        method.unlearn(request)
        assert seen == [expected] and method.applied == [request.name]


def test_core_with_a_clip_folder_on_a_hub_layout_llava_and_cores_layout(release, checkout, tmp_path):
    """Issue 19's done-when: CORE with a (tiny, random) CLIP-style folder as its concept
    encoder on a hub-layout LLaVA checkpoint and data in CORE's published layout, with no
    warning about training anything for this backbone."""
    import warnings

    from test_core_gate import tiny_clip
    from vlforget.models.tiny_families import save_hub_layout

    folder = save_hub_layout("llava", tmp_path / "llava")
    settings = {**TINY_CORE, "concept_encoder": tiny_clip(tmp_path / "clip"), "general_pairs": 50}
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _cli("run", "--dataset", "core", "--data", release, "--core-repo", checkout, "--model", folder,
                      "--method", "core", "--judge", "core", "--config", _write(tmp_path / "m.yaml", settings),
                      "--limit", 2, "--out", out)
    assert result.exit_code == 0, result.output
    trained = [str(w.message) for w in caught if "train" in str(w.message).lower()]
    assert not trained and "train" not in result.output.lower(), trained
    results = json.loads((out / "results.json").read_text())
    assert results["backbone"]["model_type"] == "llava" and len(results["steps"]) == 2
    assert results["config"]["concept_encoder"] == settings["concept_encoder"]
