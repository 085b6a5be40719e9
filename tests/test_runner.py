"""The continual runner: records, schema, resume after interruption, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlforget.cli import app
from vlforget.methods import available_methods
from vlforget.data.benchmark import Benchmark, BenchmarkConfig
from vlforget.evaluation.judge import make_judge
from vlforget.evaluation.runner import ContinualRun
from vlforget.models.backbone import Backbone

SMALL = BenchmarkConfig(seed=1, n_forget_train=8, n_forget_test=6, n_retain_train=8, n_retain_test=6,
                        n_utility=12)
SUMMARY_KEYS = {"crr_avg", "crr_last", "ar_avg", "ar_last", "s_avg", "s_last", "drr_avg", "drr_last",
                "unlearn_seconds"}


class Interrupt(Exception):
    pass


def _run(out, progress=None, limit=2):
    run = ContinualRun("idknll", Benchmark(SMALL), out, Backbone.load, {"steps": 4},
                       make_judge("lexical"), limit=limit, progress=progress)
    return run, run.run()


def test_run_writes_documented_results(tmp_path):
    _, results = _run(tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["schema"] == "vlforget.results/1"
    assert saved["benchmark_version"] and saved["vlforget_version"]
    assert saved["config"]["steps"] == 4 and saved["seed"] == 0
    assert [s["request"] for s in saved["steps"]] == [r["name"] for r in saved["requests"]]
    assert SUMMARY_KEYS <= set(saved["summary"])
    assert all(0 <= saved["summary"][k] <= 100 for k in SUMMARY_KEYS - {"unlearn_seconds", "s_avg", "s_last"})
    assert saved["summary"]["s_last"] > 0  # relative utility: may exceed 100, never negative
    for step in saved["steps"]:
        assert step["unlearn_seconds"] > 0 and step["peak_rss_mb"] > 0
    assert (tmp_path / "states" / "step-02" / "state.safetensors").exists()


def test_interrupted_run_resumes_without_reapplying(tmp_path):
    def stop_at_second(event, info):
        if event == "unlearn" and info["step"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        _run(tmp_path, stop_at_second)
    partial = json.loads((tmp_path / "results.json").read_text())
    assert len(partial["steps"]) == 1
    seen = []
    run, results = _run(tmp_path, lambda event, info: seen.append((event, info.get("step"))))
    assert ("unlearn", 1) not in seen and ("unlearn", 2) in seen
    assert run.method.applied == [r["name"] for r in results["requests"]]
    assert results["steps"][0] == partial["steps"][0]  # the finished step is kept as it was


def test_resume_refuses_a_different_run(tmp_path):
    _run(tmp_path, limit=1)
    other = ContinualRun("idknll", Benchmark(SMALL), tmp_path, Backbone.load, {"steps": 5},
                         make_judge("lexical"), limit=1)
    with pytest.raises(ValueError, match="different run"):
        other.run()


def test_resume_refuses_a_run_written_by_changed_method_code(tmp_path, monkeypatch):
    """Same method, config and benchmark, other code: resuming would mix two versions'
    steps (and `compare` would report a finished old run as the new code's)."""
    from vlforget.methods import method_class

    _run(tmp_path, limit=1)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["method_source_sha256"] == method_class("idknll").source_sha256()
    monkeypatch.setattr(method_class("idknll"), "source_sha256", classmethod(lambda cls: "0123456789abcdef"))
    with pytest.raises(ValueError, match="other idknll code.*another --out folder"):
        _run(tmp_path, limit=1)
    # a run folder from before the hash was recorded still resumes
    del saved["method_source_sha256"]
    (tmp_path / "results.json").write_text(json.dumps(saved))
    _run(tmp_path, limit=1)


LOADED_PAIRS = Path(__file__).parent / "fixtures" / "loaders" / "table" / "pairs.jsonl"


@pytest.mark.parametrize("data", [[], ["--dataset", "jsonl", "--data", str(LOADED_PAIRS)]], ids=["builtin", "loaded"])
def test_cli_resume_under_changed_method_code_is_refused(data, tmp_path, monkeypatch):
    """`vlforget run` (and `compare`, which runs through the same runner) on a folder that
    other code of the method wrote: one line, exit code 2, nothing in the folder changed."""
    from vlforget.methods import method_class

    config = tmp_path / "m.yaml"
    config.write_text("steps: 1\n")
    out = tmp_path / "run"
    args = ["run", "--method", "idknll", "--config", str(config), "--limit", "1", "--judge", "lexical",
            *data, "--out", str(out)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    written = (out / "results.json").read_bytes()
    monkeypatch.setattr(method_class("idknll"), "source_sha256", classmethod(lambda cls: "0123456789abcdef"))
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "other idknll code" in again.output and "Traceback" not in again.output
    assert (out / "results.json").read_bytes() == written


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--method", "idknl", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "did you mean 'idknll'" in result.output
    assert "Traceback" not in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,")
    result = runner.invoke(app, ["run", "--method", "idknll", "--config", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "could not parse" in result.output
    result = runner.invoke(app, ["run", "--tasks", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not found" in result.output


def test_cli_methods_lists_every_baseline():
    result = CliRunner().invoke(app, ["methods"])
    assert result.exit_code == 0
    for name in ("idknll", "ga", "graddiff", "kl", "npo", "ewc", "lwf"):
        assert name in result.output
    names = CliRunner().invoke(app, ["methods", "--names"])  # what benchmarks/reproduce_results.sh reads
    assert names.exit_code == 0 and names.output.split() == sorted(available_methods())


@pytest.mark.parametrize("argv, config, message", [
    (["compare", "--methods", "idknll,ga"], {"idknl": {}}, "did you mean 'idknll'"),
    (["compare", "--methods", "idknll,ga"], {"ga": {"step": 3}}, "did you mean 'steps'"),
    (["demo"], {"stepz": 3}, "did you mean 'steps'"),
    (["base-eval"], {"n_general_tst": 5}, "did you mean 'n_general_test'"),
    (["pretrain"], {"vision_step": 5}, "did you mean 'vision_steps'"),
    (["methods"], {"idknll": {"step": 3}}, "did you mean 'steps'"),
    (["methods"], {"idknl": {}}, "did you mean 'idknll'"),
    (["inspect", "RUN_DIR"], {"reqest": "star-identity"}, "did you mean 'request'"),
])
def test_every_command_takes_a_config_and_names_the_nearest_key(tmp_path, argv, config, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    out = ["--out", str(tmp_path / "out")] if argv[0] in ("compare", "demo", "pretrain") else []
    argv = [str(tmp_path) if a == "RUN_DIR" else a for a in argv]
    result = CliRunner().invoke(app, [*argv, *out, "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "results.json").exists()  # nothing ran, nothing was written


def test_methods_config_shows_the_effective_config(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("npo:\n  steps: 7\n")
    result = CliRunner().invoke(app, ["methods", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "*steps = 7" in result.output and " lr = " in result.output  # set by the file / default
    assert "idknll" not in result.output  # only the methods the file names
    path.write_text("steps: 7\n")
    result = CliRunner().invoke(app, ["methods", "--config", str(path)])
    assert result.exit_code == 2 and "method name -> {field: value}" in result.output


def test_base_eval_config_sets_the_benchmark(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("n_general_test: 12\n")
    result = CliRunner().invoke(app, ["base-eval", "--json", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["n"] == 12
