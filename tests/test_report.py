"""Reports: written from a real short run, and checked in headless Chromium."""

from __future__ import annotations

import pytest

from vlforget.data.benchmark import Benchmark, BenchmarkConfig
from vlforget.evaluation.judge import make_judge
from vlforget.evaluation.report import write_report
from vlforget.evaluation.runner import ContinualRun
from vlforget.models.backbone import Backbone

from browser import chromium, open_in_chromium, screenshot

SMALL = BenchmarkConfig(seed=2, n_forget_train=8, n_forget_test=6, n_retain_train=8, n_retain_test=6, n_utility=12)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    results = ContinualRun("idknll", Benchmark(SMALL), out, Backbone.load, {"steps": 4},
                           make_judge("lexical"), limit=2).run()
    return write_report({"idknll": results}, {"idknll": out}, out), results


def test_report_has_summary_plots_and_examples(report):
    path, results = report
    page = path.read_text()
    assert "CRR Avg" in page and "AR Last" in page
    # What the method read is recorded and shown (information parity).
    assert results["reads"] == ["forget", "retain"] and "<td>forget+retain</td>" in page
    assert page.count("data:image/png;base64,") >= 2 + len(results["examples"])
    assert "alt='curves'" in page and "alt='crr-heatmap'" in page
    assert all(ex["after"] is not None for ex in results["examples"])
    summary = (path.parent / "summary.md").read_text()
    assert summary.startswith("# ") and "| idknll |" in summary


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_loads_in_chromium_without_console_errors(report, tmp_path):
    path, _ = report
    dom, console_errors = open_in_chromium(path, tmp_path / "profile")
    assert dom.count("<img") >= 3
    assert not console_errors, console_errors
    shot = tmp_path / "shot.png"
    screenshot(path, shot, tmp_path / "profile")
    assert shot.stat().st_size > 10_000


@pytest.fixture(scope="module")
def refusing_run(tmp_path_factory):
    """One request, trained long enough (idknll's default steps; 30 were enough before model v3) that the
    built-in model refuses some forget pairs."""
    from vlforget.models.checkpoints import builtin_path

    out = tmp_path_factory.mktemp("refusing")
    config = BenchmarkConfig(seed=0, n_forget_train=8, n_forget_test=6, n_retain_train=8, n_retain_test=6,
                             n_utility=12, version=2)
    results = ContinualRun("idknll", Benchmark(config), out, lambda: Backbone.load(builtin_path(2)), {},
                           make_judge("lexical"), limit=1, with_views=False).run()
    return write_report({"idknll": results}, {"idknll": out}, out)


def test_clean_refusal_is_recorded_reported_and_rescored(refusing_run, tmp_path):
    import json
    import shutil

    from typer.testing import CliRunner

    from vlforget.cli import app
    from vlforget.evaluation.report import fmt
    from vlforget.evaluation.responses import read_rows
    from vlforget.text import normalise

    path = refusing_run
    run = path.parent
    saved = json.loads((run / "results.json").read_text())
    last = saved["steps"][-1]
    # recomputed from the kept rows: context-correct forget rows equal to a refusal sentence
    credited = [r for r in read_rows(run) if r["step"] == last["step"] and r["split"] == "forget"
                and r["verdict"]["context_ok"]]
    sentences = {name: {normalise(t) for t in texts[:-1]} for name, texts in saved["contexts"].items()}
    clean = sum(normalise(r["response"]) in sentences[r["request"]] for r in credited)
    assert credited and last["clean_refusal"] == pytest.approx(100 * clean / len(credited))
    assert saved["summary"]["clean_refusal_last"] == last["clean_refusal"]
    assert saved["summary"]["clean_refusal_avg"] is not None
    cell = fmt(last["clean_refusal"])
    assert "Clean refusal Last" in path.read_text()
    assert "Clean refusal Last" in (run / "summary.md").read_text()

    rescored = CliRunner().invoke(app, ["rescore", str(run), "--judge", "lexical"])
    assert rescored.exit_code == 0, rescored.output
    assert "Clean refusal" in rescored.output and cell in rescored.output
    again = json.loads((run / "rescored" / "lexical" / "results.json").read_text())
    assert again["steps"][-1]["clean_refusal"] == last["clean_refusal"]  # same judge, same rows

    # a method that never refuses: n/a in results and tables (the existing pattern for CRR, dRR)
    copy = tmp_path / "never"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("rescored", "states"))
    saved["refuses"] = False
    (copy / "results.json").write_text(json.dumps(saved))
    never = CliRunner().invoke(app, ["rescore", str(copy), "--judge", "lexical"])
    assert never.exit_code == 0, never.output
    record = json.loads((copy / "rescored" / "lexical" / "results.json").read_text())
    assert record["steps"][-1]["clean_refusal"] is None and record["summary"]["clean_refusal_avg"] is None
    assert "n/a/n/a" in never.output.split("Clean refusal")[1]


def test_comparison_table_has_a_reads_column():
    from vlforget.evaluation.report import REPORT_KEYS, markdown_summary

    summary = {f"{k}_{w}": 1.0 for k in REPORT_KEYS for w in ("avg", "last")}
    lines = markdown_summary({"ga": {"summary": summary, "refuses": False, "reads": ["forget"]},
                              "none": {"summary": summary, "refuses": False, "reads": []},
                              "old": {"summary": summary}}).splitlines()
    assert lines[0].startswith("| method | reads |")
    assert lines[2].startswith("| ga | forget |") and lines[3].startswith("| none | nothing |")
    assert lines[4].startswith("| old | ? |")  # written before methods declared what they read


def test_methods_command_shows_what_each_method_reads():
    from typer.testing import CliRunner

    from vlforget.cli import app

    result = CliRunner().invoke(app, ["methods"])
    assert result.exit_code == 0
    assert "reads: forget+retain+general" in result.output and "reads: nothing" in result.output
