"""One tuning protocol: every method's grid, the rule, resumption, and `compare` using the choice."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vlforget.cli import app
from vlforget.configs import build_config
from vlforget.evaluation.report import markdown_summary
from vlforget.evaluation.tuning import choose, score, tune, tuned_overrides
from vlforget.methods import available_methods, make_method
from vlforget.methods.tuning_grids import GRIDS, MAX_POINTS, grid_for


def test_every_registered_method_has_a_valid_grid_within_the_budget():
    methods = available_methods()
    assert set(methods) <= set(GRIDS), f"no grid for {sorted(set(methods) - set(GRIDS))}"
    for name, cls in methods.items():
        grid = grid_for(name)
        assert 1 <= len(grid) <= MAX_POINTS, name
        assert grid[0] == {}, f"{name}: the first point must be the defaults"
        assert len({json.dumps(p, sort_keys=True) for p in grid}) == len(grid), f"{name}: duplicate points"
        for point in grid:
            build_config(cls.config_class, point, where=f"{name} grid")  # every knob is a real field
    with pytest.raises(ValueError, match="has no tuning grid"):
        grid_for("nosuchmethod")


def test_the_rule_is_a_harmonic_mean_that_punishes_degenerate_points():
    balanced = {"crr_last": 70.0, "ar_last": 70.0, "s_last": 70.0, "leak_last": 50.0}
    assert score(balanced, refuses=True) == pytest.approx(70.0)
    forgets_nothing = {"crr_last": 2.0, "ar_last": 97.0, "s_last": 100.0, "leak_last": 95.0}
    destroyed = {"crr_last": 100.0, "ar_last": 0.0, "s_last": 0.0, "leak_last": 0.0}
    assert score(forgets_nothing, True) < 10 and score(destroyed, True) == 0.0
    # a method that never refuses is scored on 100 - leak instead of CRR
    assert score({"crr_last": 0.0, "ar_last": 80.0, "s_last": 80.0, "leak_last": 20.0}, refuses=False) == \
        pytest.approx(80.0)
    assert score({"crr_last": 70.0, "ar_last": 70.0, "s_last": 140.0}, True) == pytest.approx(70.0 * 3 / (2 + 0.7))
    assert choose([{"score": 50.0}, {"score": 60.0}, {"score": 60.0}, {"score": None}]) == 1  # ties: earlier


def _fake_results(crr: float) -> dict:
    return {"summary": {"crr_last": crr, "ar_last": 80.0, "s_last": 90.0, "leak_last": 10.0}}


def test_tune_records_every_point_chooses_by_the_rule_and_resumes(tmp_path):
    calls = []

    def run_point(overrides, folder):
        folder.mkdir(parents=True, exist_ok=True)
        calls.append((overrides, folder.name))
        return _fake_results(overrides.get("x", 10.0))

    grid = [{}, {"x": 90.0}, {"x": 50.0}]
    record = tune("fake", grid, run_point, tmp_path / "tuned", tmp_path / "work", "2.0", 0, True, 8, log=lambda m: None)
    assert len(calls) == 3 and len({folder for _, folder in calls}) == 3
    assert record["chosen"] == {"x": 90.0} and record["chosen_index"] == 1
    saved = json.loads((tmp_path / "tuned" / "fake.json").read_text())
    assert [p["overrides"] for p in saved["points"]] == grid and saved["sequence"] == "validation"
    assert "(chosen)" in (tmp_path / "tuned" / "fake.md").read_text()
    index = (tmp_path / "tuned" / "README.md").read_text()  # one line per record: the choice at a glance
    assert '| [fake](fake.md) | 3 of 3 | `{"x": 90.0}` |' in index

    calls.clear()  # a second sitting with one more point runs only that point
    record = tune("fake", grid + [{"x": 95.0}], run_point, tmp_path / "tuned", tmp_path / "work", "2.0", 0, True, 8,
                  log=lambda m: None)
    assert calls == [({"x": 95.0}, calls[0][1])] and record["chosen"] == {"x": 95.0}

    chosen, note = tuned_overrides(tmp_path / "tuned", "fake", "2.0")
    assert chosen == {"x": 95.0} and "tuned settings" in note
    assert tuned_overrides(tmp_path / "tuned", "fake", "1.0")[0] is None  # tuned on another version
    assert tuned_overrides(tmp_path / "tuned", "other", "2.0")[0] is None

    # compare does not use a record of other code or defaults
    stale, note = tuned_overrides(tmp_path / "tuned", "fake", "2.0", identity=lambda o: {"source_sha256": "new"})
    assert stale is None and "other code" in note

    calls.clear()  # the method's code or defaults changed: its recorded numbers no longer count
    old_folders = {folder for folder in (tmp_path / "work").iterdir()}
    tune("fake", grid, run_point, tmp_path / "tuned", tmp_path / "work", "2.0", 0, True, 8, log=lambda m: None,
         identity=lambda overrides: {"source_sha256": "new"})
    assert [o for o, _ in calls] == grid
    # ... and runs in new folders: a finished run of the old code is never resumed as the new one
    assert not {tmp_path / "work" / folder for _, folder in calls} & old_folders
    assert tuned_overrides(tmp_path / "tuned", "fake", "2.0", identity=lambda o: {"source_sha256": "new"})[0] == \
        {"x": 90.0}


def test_method_identity_follows_defaults_overrides_and_source():
    from vlforget.evaluation.tuning import method_identity
    from vlforget.methods import method_class

    idknll, core = method_class("idknll"), method_class("core")
    assert method_identity(idknll, {}) == method_identity(idknll, {})
    assert method_identity(idknll, {"steps": 7})["config"]["steps"] == 7
    assert method_identity(idknll, {})["config"] != method_identity(idknll, {"steps": 7})["config"]
    assert method_identity(idknll, {})["source_sha256"] != method_identity(core, {})["source_sha256"]


def test_method_identity_follows_the_methods_shipped_assets(tmp_path):
    """Rebuilt data files a method ships (CORE's concept heads) make its tuned points stale,
    like edited source: the record must not be reused for different heads."""
    from vlforget.evaluation.tuning import method_identity
    from vlforget.methods import method_class

    assert "assets/scorer" in method_class("core").assets
    idknll = method_class("idknll")
    (tmp_path / "heads.safetensors").write_bytes(b"weights v1")
    with_asset = type("WithAsset", (idknll,), {"assets": (str(tmp_path),), "__module__": idknll.__module__})
    before = method_identity(with_asset, {})["source_sha256"]
    assert before != method_identity(idknll, {})["source_sha256"]
    assert method_identity(with_asset, {})["source_sha256"] == before
    (tmp_path / "heads.safetensors").write_bytes(b"weights v2")
    assert method_identity(with_asset, {})["source_sha256"] != before


def test_none_changes_nothing_and_tables_show_na_for_methods_that_never_refuse():
    from vlforget.models.backbone import Backbone
    from vlforget.data.benchmark import Benchmark, BenchmarkConfig

    backbone = Backbone.load()
    method = make_method("none", backbone)
    request = Benchmark(BenchmarkConfig(n_forget_train=4, n_forget_test=4, n_retain_train=4, n_retain_test=4,
                                        n_utility=10)).requests()[0]
    images, questions = [s.image for s in request.forget_test], [s.instruction for s in request.forget_test]
    before = backbone.generate(images, questions)
    method.unlearn(request)
    assert method.applied == [request.name] and method.generate(images, questions) == before
    assert method.refuses is False and available_methods()["core"].refuses is True

    from vlforget.evaluation.report import REPORT_KEYS

    summary = {f"{k}_{w}": 42.0 for k in REPORT_KEYS for w in ("avg", "last")} | {"unlearn_seconds": [1.0]}
    table = markdown_summary({"core": {"summary": summary, "refuses": True},
                              "none": {"summary": summary, "refuses": False}})
    core_row, none_row = table.splitlines()[2], table.splitlines()[3]
    # CRR, dRR and clean refusal, avg and last, mean nothing for a method that never refuses
    assert "n/a" not in core_row and none_row.count("n/a") == 6 and none_row.count("42.0") == 2 * len(REPORT_KEYS) - 6


def test_tune_and_compare_commands_end_to_end(tmp_path):
    runner = CliRunner()
    tuned, work = tmp_path / "tuned", tmp_path / "work"
    result = runner.invoke(app, ["tune", "--method", "none", "--limit", "1", "--judge", "lexical",
                                 "--out", str(tuned), "--work", str(work)])
    assert result.exit_code == 0, result.output
    record = json.loads((tuned / "none.json").read_text())
    assert record["sequence"] == "validation" and record["chosen"] == {} and record["benchmark_version"] == "2.0"
    steps = json.loads(next(work.glob("none/point-*/results.json")).read_text())
    assert steps["benchmark_config"]["sequence"] == "validation"  # never the test sequence
    assert steps["requests"][0]["name"] == "triangle-identity"

    result = runner.invoke(app, ["tune", "--method", "none", "--limit", "1", "--judge", "lexical",
                                 "--out", str(tuned), "--work", str(work)])
    assert result.exit_code == 0 and "recorded, not rerun" in result.output

    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", "--methods", "none", "--limit", "1", "--judge", "lexical",
                                 "--tuned", str(tuned), "--out", str(out)])
    assert result.exit_code == 0, result.output
    comparison = (out / "comparison.md").read_text()
    assert "none: tuned settings {} from" in comparison and "n/a" in comparison
    assert "AR Last (request)" in comparison and "AR Last (pressure)" in comparison
    results = json.loads((out / "none" / "results.json").read_text())
    assert set(results["steps"][0]["views"]) == {"request", "pressure"} and results["refuses"] is False

    result = runner.invoke(app, ["tune", "--method", "nosuch", "--out", str(tuned)])
    assert result.exit_code == 2 and "unknown method" in result.output


def test_run_on_the_validation_sequence(tmp_path):
    """`run --sequence validation`: one setting checked on the sequence tuning reads, not the test one."""
    out = tmp_path / "val"
    result = CliRunner().invoke(app, ["run", "--method", "none", "--limit", "1", "--judge", "lexical",
                                      "--sequence", "validation", "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["benchmark_config"]["sequence"] == "validation"
    assert results["requests"][0]["name"] == "triangle-identity"


def test_evaluate_last_skips_intermediate_evaluations(tmp_path):
    """Tuning's runs evaluate only after the last request (the rule reads nothing else);
    the averages are then undefined rather than the mean of one step."""
    from vlforget.data.benchmark import Benchmark, BenchmarkConfig
    from vlforget.evaluation.runner import ContinualRun
    from vlforget.models.backbone import Backbone

    bench = Benchmark(BenchmarkConfig(seed=3, n_forget_train=4, n_forget_test=2, n_retain_train=4, n_retain_test=2,
                                      n_utility=4, sequence="validation"))
    results = ContinualRun("none", bench, tmp_path / "run", Backbone.load, judge=None, limit=2, with_views=False,
                           evaluate="last").run()
    first, last = results["steps"]
    assert first["evaluated"] is False and "ar" not in first and last["ar"] is not None
    assert results["summary"]["ar_last"] == last["ar"] and results["summary"]["ar_avg"] is None
    with pytest.raises(ValueError, match="evaluate must be"):
        ContinualRun("none", bench, tmp_path / "other", Backbone.load, evaluate="sometimes")
