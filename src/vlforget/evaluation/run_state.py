"""A saved run's method, back in memory: its state after any step of the run.

A run folder (written by `vlforget run`) holds `results.json` (method name, config,
steps) and the method's state after every step (`runner.state_dir`); `load_run_state`
rebuilds the method on a freshly loaded backbone and loads the state of the step asked
for (step 0 is the base model). The backbone is the one the run recorded (`backbone`
in results.json) unless `model` names one, which must then have the same fingerprint.
"""

from __future__ import annotations

from pathlib import Path

from vlforget.evaluation.runner import RESULTS_FILE, read_results, state_dir
from vlforget.methods import make_method
from vlforget.models.backbone import Backbone
from vlforget.models.identity import backbone_record, check_same_backbone


def load_run_state(run_dir: Path, step: int | None = None, model: str | None = None,
                   overrides: dict | None = None, placement: tuple = ("cpu", None)):
    """The method of a run, with its state after `step` (default: the last one)."""
    results_path = run_dir / RESULTS_FILE
    if not results_path.exists():
        raise FileNotFoundError(f"no run in {run_dir} (missing {RESULTS_FILE})")
    results = read_results(results_path)
    done = len(results["steps"])
    step = done if step is None else step
    if not 0 <= step <= done:
        raise ValueError(f"step {step} is not available in {run_dir}; it has steps 0..{done}")
    recorded = results.get("backbone") or {}
    if model is None and recorded.get("source"):
        model = recorded["source"]
        if not Path(model).exists() and Path(model).is_absolute():
            raise FileNotFoundError(f"{run_dir} was run on {model}, which is no longer there; "
                                    "pass --model the folder holding that checkpoint now")
    if model is None:  # the built-in model of the benchmark version the run used
        from vlforget.models.checkpoints import builtin_path

        # A loaded dataset (benchmark_version "<format>-loaded") ran on the current built-in model.
        model = str(builtin_path({"1.0": 1, "2.0": 2}.get(results.get("benchmark_version"))))
    backbone = Backbone.load(model, *placement)
    check_same_backbone(recorded, backbone_record(backbone), str(run_dir))
    method = make_method(results["method"], backbone, {**results["config"], **(overrides or {})})
    if step:
        method.load(state_dir(run_dir, step))
    return method, results
