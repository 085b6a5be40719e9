"""A saved run's method, back in memory: its state after any step of the run.

A run folder (written by `vlforget run`) holds `results.json` (method name, config,
steps) and the method's state after every step (`runner.state_dir`); `load_run_state`
rebuilds the method on a freshly loaded backbone and loads the state of the step asked
for (step 0 is the base model).
"""

from __future__ import annotations

import json
from pathlib import Path

from vlforget.evaluation.runner import RESULTS_FILE, state_dir
from vlforget.methods import make_method
from vlforget.models.backbone import Backbone


def load_run_state(run_dir: Path, step: int | None = None, model: str | None = None,
                   overrides: dict | None = None, placement: tuple = ("cpu", None)):
    """The method of a run, with its state after `step` (default: the last one)."""
    results_path = run_dir / RESULTS_FILE
    if not results_path.exists():
        raise FileNotFoundError(f"no run in {run_dir} (missing {RESULTS_FILE})")
    results = json.loads(results_path.read_text())
    done = len(results["steps"])
    step = done if step is None else step
    if not 0 <= step <= done:
        raise ValueError(f"step {step} is not available in {run_dir}; it has steps 0..{done}")
    if model is None:  # the built-in model of the benchmark version the run used
        from vlforget.models.checkpoints import builtin_path

        # A loaded dataset (benchmark_version "<format>-loaded") ran on the current built-in model.
        model = str(builtin_path({"1.0": 1, "2.0": 2}.get(results.get("benchmark_version"))))
    method = make_method(results["method"], Backbone.load(model, *placement),
                         {**results["config"], **(overrides or {})})
    if step:
        method.load(state_dir(run_dir, step))
    return method, results
