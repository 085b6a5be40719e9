"""Published-layout data through every command: run to the report, compare, base-eval,
inspect, chat, rescore; loader options from the command line; runs recording their backbone."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vlforget.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")
F = Path(__file__).parent / "fixtures" / "loaders"

# every loader, its fixture, and the options that make the fixture a sequence of several requests
LOADER_FIXTURES = [
    ("core", "core", dict(keywords_per_request=2, classes_per_request=2, imagenet_requests=2)),
    ("safeeraser", "safeeraser", {}),
    ("mllmu", "mllmu", dict(profiles_per_request=2)),
    ("clear", "clear", dict(names_per_request=2)),
    ("fiubench", "fiubench", dict(people_per_request=2)),
    ("llava_json", "llava/conversations.json", dict(spec=str(F / "llava" / "spec.yaml"))),
    ("jsonl", "table/pairs.jsonl", {}),
    ("parquet", "table/pairs.parquet", {}),
]


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _rows(run: Path) -> list[dict]:
    with gzip.open(run / "responses.jsonl.gz", "rt") as handle:
        return [json.loads(line) for line in handle]


@pytest.mark.parametrize("name,path,options", LOADER_FIXTURES, ids=[f[0] for f in LOADER_FIXTURES])
def test_every_loader_fixture_runs_to_the_report(name, path, options, tmp_path):
    if name in ("mllmu", "clear", "parquet"):
        pytest.importorskip("pyarrow")
    out = tmp_path / "run"
    result = _cli("run", "--dataset", name, "--data", F / path, "--data-config", _yaml(tmp_path / "d.yaml", options),
                  "--method", "idknll", "--config", _yaml(tmp_path / "m.yaml", {"steps": 1}), "--limit", 2,
                  "--judge", "lexical", "--out", out)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "S   n/a" in result.output  # no utility split: S undefined
    assert (out / "report.html").exists() and "n/a" in (out / "summary.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert len(results["steps"]) == 2 and results["steps"][-1]["s"] is None
    assert results["benchmark_config"]["options"] == options
    assert results["backbone"]["model_type"] == "llava" and results["backbone"]["fingerprint"]
    rows = _rows(out)
    assert {r["step"] for r in rows} >= {1, 2}
    assert all(r["verdict"] is not None for r in rows if r["step"] > 0)
    forget = [r for r in rows if r["split"] == "forget" and r["step"] == 2]
    assert len(forget) == results["steps"][-1]["n_forget"]
    inspected = _cli("inspect", out)
    assert inspected.exit_code == 0, inspected.output


def test_core_run_breaks_refusals_down_by_mode_and_chat_and_rescore_read_it(tmp_path):
    out = tmp_path / "core"
    config = _yaml(tmp_path / "m.yaml", {"steps": 1, "dataset": {"keywords_per_request": 2,
                                                                  "classes_per_request": 2,
                                                                  "imagenet_requests": 2}})
    result = _cli("run", "--dataset", "core", "--data", F / "core", "--method", "idknll", "--config", config,
                  "--limit", 2, "--judge", "lexical", "--out", out)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["benchmark_config"]["options"]["keywords_per_request"] == 2  # the dataset: block was read
    modes = results["steps"][-1]["per_mode"]
    assert {"HH", "HU", "UH", "UU"} <= set(modes)
    rows = [r for r in _rows(out) if r["step"] == 2]
    for mode in ("HH", "HU", "UH"):
        group = [r for r in rows if r["mode"] == mode and r["split"] == "forget"]
        assert modes[mode]["n"] == len(group)
        assert modes[mode]["refused"] == pytest.approx(100 * sum(r["verdict"]["refused"] for r in group) / len(group))
    assert "| HH |" in (out / "summary.md").read_text() and "By mode after the last request" in (
        out / "report.html").read_text()
    inspected = _cli("inspect", out)
    assert inspected.exit_code == 0 and "By mode" in inspected.output
    uu = [r for r in rows if r["mode"] == "UU"]
    assert modes["UU"]["answered"] == pytest.approx(100 * sum(not r["verdict"]["refused"] for r in uu) / len(uu))

    # the same judge over the kept responses gives the run's numbers back
    again = _cli("rescore", out, "--judge", "lexical")
    assert again.exit_code == 0, again.output
    rescored = json.loads((out / "rescored" / "lexical" / "results.json").read_text())
    for before, after in zip(results["steps"], rescored["steps"]):
        assert after == before
    other = _cli("rescore", out, "--judge", "minilm")
    assert other.exit_code == 0, other.output

    sample = rows[0]
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (48, 48), "gray").save(image)
    chat = _cli("chat", "--image", image, "--state", out, sample["instruction"])
    assert chat.exit_code == 0, chat.output
    assert "requests applied:" in chat.output


def test_compare_and_base_eval_take_a_dataset(tmp_path):
    options = _yaml(tmp_path / "d.yaml", {"keywords_per_request": 2, "classes_per_request": 2,
                                         "imagenet_requests": 2})
    methods = _yaml(tmp_path / "m.yaml", {"idknll": {"steps": 1}, "ga": {"steps": 1}})
    out = tmp_path / "cmp"
    result = _cli("compare", "--methods", "idknll,ga", "--dataset", "core", "--data", F / "core",
                  "--data-config", options, "--config", methods, "--limit", 1, "--judge", "lexical", "--out", out)
    assert result.exit_code == 0, result.output
    assert "n/a" in (out / "comparison.md").read_text()
    for name in ("idknll", "ga"):
        assert json.loads((out / name / "results.json").read_text())["benchmark_version"] == "core-loaded"
    base = _cli("base-eval", "--dataset", "core", "--data", F / "core", "--data-config", options, "--json")
    assert base.exit_code == 0, base.output
    report = json.loads(base.output)
    assert report["n"] > report["n_scored"] > 0  # UU pairs have no reference answer: answered, not scored


@pytest.mark.parametrize("options,message", [
    ({"keywords_per_reqest": 2}, "did you mean 'keywords_per_request'"),
    ({"keywords_per_request": "two"}, "expects an integer"),
    ({"keep_unanswered": 1}, "expects true or false"),
])
def test_bad_loader_options_are_one_line_with_exit_code_2(options, message, tmp_path):
    result = _cli("run", "--dataset", "core", "--data", F / "core", "--data-config",
                  _yaml(tmp_path / "d.yaml", options), "--out", tmp_path / "x")
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_a_folder_in_the_wrong_layout_is_one_line_with_exit_code_2(tmp_path):
    wrong = tmp_path / "not-core"
    wrong.mkdir()
    (wrong / "data.json").write_text("[]")
    result = _cli("run", "--dataset", "core", "--data", wrong, "--out", tmp_path / "x")
    assert result.exit_code == 2 and "no CORE data under" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_loader_options_without_a_dataset_are_refused(tmp_path):
    result = _cli("run", "--data-config", _yaml(tmp_path / "d.yaml", {"spec": "x"}), "--out", tmp_path / "x")
    assert result.exit_code == 2 and "need --dataset and --data" in result.output


def test_resume_and_chat_check_the_recorded_backbone(tmp_path):
    from vlforget.models.tiny_families import save_family

    tiny = save_family("llava", tmp_path / "tiny-llava")
    out = tmp_path / "run"
    args = ["run", "--method", "idknll", "--config", _yaml(tmp_path / "m.yaml", {"steps": 1}), "--limit", 1,
            "--judge", "lexical", "--dataset", "jsonl", "--data", F / "table" / "pairs.jsonl", "--out", out]
    result = _cli(*args, "--model", tiny)
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "results.json").read_text())["backbone"]
    assert recorded["source"] == str(tiny.resolve()) and recorded["model_type"] == "llava"

    # chat --state loads the run's model without being told (the built-in one would not fit the state)
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (48, 48), "gray").save(image)
    chat = _cli("chat", "--image", image, "--state", out, "what is this?")
    assert chat.exit_code == 0, chat.output
    wrong = _cli("chat", "--image", image, "--state", out, "--model", save_family("llava", tmp_path / "other", seed=1),
                 "what is this?")
    assert wrong.exit_code == 2 and "fingerprint" in wrong.output
    # resuming on another model is refused
    resumed = _cli(*args[:-2], "--out", out)  # same run, built-in model
    assert resumed.exit_code == 2 and "was run on" in resumed.output
