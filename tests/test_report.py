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
