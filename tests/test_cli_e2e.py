"""The documented commands, end to end, on a shortened sequence (as a new user runs them)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from vlforget.cli import app

from browser import chromium, open_in_chromium


def test_demo_run_inspect_chat(tmp_path):
    runner = CliRunner()
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert "CRR" in result.output and "OverRef" in result.output and "report:" in result.output
    assert (out / "report.html").exists() and (out / "summary.md").exists()
    results = json.loads((out / "results.json").read_text())
    assert len(results["steps"]) == 2
    if chromium():  # the report the README points to opens in a browser, plots and examples included
        dom, errors = open_in_chromium(out / "report.html", tmp_path / "profile")
        assert not errors and "alt=\"curves\"" in dom and dom.count("<img") >= 3

    result = runner.invoke(app, ["inspect", str(out)])
    assert result.exit_code == 0, result.output
    assert results["requests"][0]["name"] in result.output
    assert "concepts (annotations): visual:" in result.output
    first = results["requests"][0]["name"]
    result = runner.invoke(app, ["inspect", str(out), "--request", first])
    assert result.exit_code == 0 and f"{first} after each step" in result.output
    assert f"{results['steps'][1]['per_request'][first]['crr']:.1f}" in result.output.split("after each step")[1]
    result = runner.invoke(app, ["inspect", str(out), "--request", first + "x"])
    assert result.exit_code == 2 and f"did you mean {first!r}" in result.output

    example = results["examples"][0]
    image = out / example["image"]
    base = runner.invoke(app, ["chat", "--image", str(image), example["instruction"]])
    assert base.exit_code == 0 and "(base model)" in base.output
    after = runner.invoke(app, ["chat", "--image", str(image), "--state", str(out), example["instruction"]])
    assert after.exit_code == 0 and example["request"] in after.output
    step0 = runner.invoke(app, ["chat", "--image", str(image), "--state", str(out), "--step", "0",
                                example["instruction"]])
    assert step0.exit_code == 0 and "requests applied: none" in step0.output


def test_chat_rejects_a_corrupt_image(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    result = CliRunner().invoke(app, ["chat", "--image", str(bad), "what is at the top?"])
    assert result.exit_code == 2
    assert "could not decode image" in result.output and "Traceback" not in result.output
