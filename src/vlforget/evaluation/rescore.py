"""Re-score a finished (or partial) run with another judge, from its kept responses alone.

The run's `responses.jsonl.gz` holds every answer of every step (`responses.py`); the
metrics of each step are recomputed from those rows with the new judge, exactly as the
runner computes them. The run's own `results.json` is never edited: the re-scored
results go to `RUN/rescored/<judge>/results.json` (same schema, `judge` and `steps`
replaced, `rescored_from` added), with their rows beside them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from vlforget.evaluation.metrics import summarize
from vlforget.evaluation.responses import append_rows, read_rows, score_rows, utility_accuracy
from vlforget.evaluation.runner import RESULTS_FILE, write_json_atomic


def rescore(run_dir: Path, judge, judge_name: str) -> tuple[dict[str, Any], Path]:
    import json

    path = run_dir / RESULTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no run in {run_dir} (missing {RESULTS_FILE})")
    results = json.loads(path.read_text())
    rows = read_rows(run_dir)
    contexts = results.get("contexts") or {r["name"]: [r["description"]] for r in results["requests"]}
    # The runner records each request's contexts as its refusal sentences + its description:
    # the sentences are what a clean refusal equals (runs without contexts know none).
    refusals = {name: texts[:-1] for name, texts in (results.get("contexts") or {}).items()}
    refuses = results.get("refuses", True)
    by_step: dict[int, list[dict]] = {}
    for row in rows:
        by_step.setdefault(int(row["step"]), []).append(row)
    base_rows = by_step.get(0, [])
    utility_base = (utility_accuracy(base_rows) if any(r["split"] == "utility" for r in base_rows)
                    else results.get("base", {}).get("utility_accuracy"))
    new = copy.deepcopy(results)
    new["judge"] = judge.config() if hasattr(judge, "config") else judge_name
    new["rescored_from"] = {"judge": results.get("judge")}
    out_dir = run_dir / "rescored" / judge_name
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "responses.jsonl.gz").unlink(missing_ok=True)
    if base_rows:
        score_rows(base_rows, None, judge, contexts)
        append_rows(out_dir, base_rows)
    for record in new["steps"]:
        step_rows = by_step.get(record["step"])
        if not step_rows:
            raise ValueError(f"{run_dir}: no responses kept for step {record['step']}; cannot re-score it")
        metrics = score_rows(step_rows, utility_base, judge, contexts, base_rows, refusals=refusals,
                             refuses=refuses)
        for key in [k for k in record if k not in ("step", "request", "unlearn_seconds", "eval_seconds",
                                                   "peak_rss_mb")]:
            record.pop(key)
        record.update(metrics)
        append_rows(out_dir, step_rows)
    if new["steps"]:
        new["summary"] = {**summarize(new["steps"]),
                          "unlearn_seconds": [s["unlearn_seconds"] for s in new["steps"]]}
    write_json_atomic(out_dir / RESULTS_FILE, new)
    return new, out_dir
