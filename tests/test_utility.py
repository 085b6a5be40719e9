"""S from a general benchmark file (`--utility`), multiple-choice scoring, and retain answers
compared with the zero-shot model's (ROUGE-L, embedding similarity)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from utility_data import make_llava_choices, make_mmbench_tsv, make_scienceqa
from vlforget.cli import app
from vlforget.data.utility import load_utility
from vlforget.evaluation.agreement import retain_agreement
from vlforget.evaluation.choices import predicted_choice

pytestmark = pytest.mark.usefixtures("one_thread")
F = Path(__file__).parent / "fixtures" / "loaders"


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("make", [make_mmbench_tsv, make_scienceqa, make_llava_choices],
                         ids=["mmbench", "scienceqa", "llava"])
def test_every_utility_format_reads_the_same_questions(make, tmp_path):
    path = make(tmp_path / "u.tsv" if make is make_mmbench_tsv else tmp_path)
    samples = load_utility(path)
    assert [s.answer for s in samples] == ["A", "B", "C"]  # unanswered / imageless items skipped
    assert all(s.meta["options"] == {"A": "red", "B": "green", "C": "blue"} for s in samples)
    assert samples[0].instruction.splitlines()[-1].startswith("Answer with the option's letter")
    assert samples[1].image.getpixel((0, 0)) == (30, 200, 30)
    assert len(load_utility(path, limit=2)) == 2


def test_choices_are_read_from_free_form_answers():
    options = {"A": "red", "B": "green", "C": "dark blue"}
    assert [predicted_choice(r, options) for r in ["B", "(C) dark blue", "B. green", "The answer is A.",
                                                    "it is dark blue", "red or green", "Because..."]] == [
        "B", "C", "B", "A", "C", None, None]


def test_unknown_utility_formats_are_one_line_with_exit_code_2(tmp_path):
    odd = tmp_path / "u.csv"
    odd.write_text("a,b\n")
    scalar = tmp_path / "u.json"
    scalar.write_text("3")
    for path, message in ((odd, "unknown utility format '.csv'"), (scalar, "unknown utility format")):
        result = _cli("run", "--utility", path, "--out", tmp_path / "x", "--limit", 1)
        assert result.exit_code == 2 and message in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_retain_agreement_compares_with_the_zero_shot_answers():
    base = [{"split": "retain", "request": "r", "index": i, "response": t}
            for i, t in enumerate(["a red star", "two", ""])]
    same = retain_agreement([dict(b) for b in base], base)
    assert same["retain_rougeL"] == pytest.approx(200 / 3)  # ROUGE-L of two empty strings is 0
    assert same["retain_similarity"] == pytest.approx(100.0, abs=1e-3)
    changed = retain_agreement([{**base[0], "response": "a red star"}, {**base[1], "response": "seven"},
                                {**base[2], "response": ""}], base)
    assert changed["retain_rougeL"] < same["retain_rougeL"] and changed["retain_similarity"] < 99.0


def test_run_with_a_utility_file_reports_s_and_retain_agreement(tmp_path):
    utility = make_mmbench_tsv(tmp_path / "mmbench.tsv")
    config = tmp_path / "m.yaml"
    config.write_text(yaml.safe_dump({"steps": 1}))
    out = tmp_path / "run"
    result = _cli("run", "--dataset", "jsonl", "--data", F / "table" / "pairs.jsonl", "--utility", utility,
                  "--method", "idknll", "--config", config, "--limit", 1, "--judge", "lexical", "--out", out)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["benchmark_config"]["utility"] == {"file": "mmbench.tsv", "format": "mmbench", "questions": 3}
    with gzip.open(out / "responses.jsonl.gz", "rt") as handle:
        rows = [json.loads(line) for line in handle]
    base = [r for r in rows if r["step"] == 0 and r["split"] == "utility"]
    now = [r for r in rows if r["step"] == 1 and r["split"] == "utility"]
    assert len(base) == len(now) == 3 and all(r["options"] for r in base)
    base_acc = 100 * sum(r["verdict"]["correct"] for r in base) / 3
    assert results["base"]["utility_accuracy"] == pytest.approx(base_acc)
    step = results["steps"][0]
    if base_acc:
        assert step["s"] == pytest.approx(100 * step["utility_accuracy"] / base_acc)
    else:
        assert step["s"] in (None, 100.0)
    assert step["retain_rougeL"] is not None and 0 <= step["retain_rougeL"] <= 100
    assert step["retain_similarity"] is not None
    assert "Retain ROUGE-L" in (out / "summary.md").read_text()
