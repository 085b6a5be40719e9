"""One tuning protocol for every method: its grid on the validation sequence, one rule.

`tune` runs every point of the method's grid (`methods/tuning_grids.py`) over benchmark
v2's validation sequence (never the test sequence), each point as a resumable run in
`work_dir/point-<hash of its overrides>`, and writes after every point `out_dir/NAME.json` (every point's
numbers and the choice so far) and `out_dir/NAME.md`. A point already recorded with the
same overrides, benchmark version and seed is not run again, so tuning resumes across
sittings. A recorded point counts as done only while its identity holds: the method's
resolved config (defaults + the point's overrides) and a hash of the method's own source
(its module, or every file of its package), so changing a default or the method's code
re-runs the grid instead of keeping numbers of code that no longer exists.

The rule (`score`, the same for every method): the harmonic mean of three numbers after
the last validation request (evaluation phrasings),
  forget = CRR for a method that refuses, 100 - leak for one that never refuses by design
           (`Method.refuses`), since its CRR can only be 0;
  AR     = answer rate on the retain pairs;
  S      = utility relative to the base model (capped at 100).
A harmonic mean is high only when all three are: a point that forgets nothing (forget
near 0) or destroys the model (AR or S near 0) scores near 0 whatever the others are.
Ties go to the earlier grid point (the first point is the method's defaults).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from vlforget.evaluation.runner import write_json_atomic

RULE = ("harmonic mean of (forget, AR, S) after the last validation request, evaluation phrasings; "
        "forget = CRR for methods that refuse, 100 - leak for methods that never refuse by design; "
        "S capped at 100; ties go to the earlier grid point")
SCHEMA = "vlforget.tuning/1"
RECORDED = ("crr_last", "crr_avg", "ar_last", "ar_avg", "s_last", "s_avg", "drr_last", "leak_last",
            "overrefusal_last")


def score(summary: dict[str, Any], refuses: bool) -> float:
    """The tuning rule's score (0-100) of one run's summary."""
    forget = summary.get("crr_last") if refuses else (None if summary.get("leak_last") is None
                                                      else 100.0 - summary["leak_last"])
    values = [forget, summary.get("ar_last"), summary.get("s_last")]
    if any(v is None for v in values):
        return 0.0
    values = [min(max(float(v), 0.0), 100.0) for v in values]
    if min(values) == 0.0:
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def _point_key(overrides: dict) -> str:
    return json.dumps(overrides, sort_keys=True)


def method_identity(cls, overrides: dict, model: str | None = None) -> dict[str, Any]:
    """What a grid point's numbers belong to: the resolved config, the method's source hash
    (with its shipped data files, `Method.assets`) and, when given, the model's fingerprint."""
    from vlforget.configs import build_config, to_dict

    config = to_dict(build_config(cls.config_class, overrides, where=f"{cls.name} config"))
    identity = {"config": config, "source_sha256": cls.source_sha256()}
    return identity if model is None else {**identity, "model": model}


def load_record(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if record.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a tuning record ({SCHEMA})")
    return record


def choose(points: list[dict[str, Any]]) -> int | None:
    """Index of the best finished point (ties: the earlier), None if none finished."""
    best = None
    for i, point in enumerate(points):
        if point.get("score") is not None and (best is None or point["score"] > points[best]["score"]):
            best = i
    return best


def _cell(value) -> str:
    return "" if value is None else f"{value:.1f}"


def markdown(record: dict[str, Any]) -> str:
    lines = [f"# Tuning: {record['method']}", "",
             f"Validation sequence of benchmark {record['benchmark_version']} ({record['n_requests']} requests), "
             f"seed {record['seed']}; never the test sequence.", "", f"Rule: {record['rule']}.", "",
             "| # | overrides | score | CRR Last | AR Last | S Last | Leak Last | Over-refusal Last |",
             "|---|---|---|---|---|---|---|---|"]

    for i, point in enumerate(record["points"]):
        numbers = point.get("summary") or {}
        mark = " (chosen)" if i == record.get("chosen_index") else ""
        crr = "n/a" if not record["refuses"] else _cell(numbers.get("crr_last"))
        lines.append(f"| {i}{mark} | `{_point_key(point['overrides'])}` | {_cell(point.get('score'))} | {crr} | "
                     f"{_cell(numbers.get('ar_last'))} | {_cell(numbers.get('s_last'))} | "
                     f"{_cell(numbers.get('leak_last'))} | {_cell(numbers.get('overrefusal_last'))} |")
    chosen = record.get("chosen")
    lines += ["", f"Chosen overrides: `{json.dumps(chosen, sort_keys=True)}`" if chosen is not None
              else "No point finished yet."]
    return "\n".join(lines) + "\n"


def tune(method: str, grid: list[dict], run_point: Callable[[dict, Path], dict], out_dir: Path, work_dir: Path,
         benchmark_version: str, seed: int, refuses: bool, n_requests: int,
         log: Callable[[str], None] = print,
         identity: Callable[[dict], dict] | None = None) -> dict[str, Any]:
    """Run every grid point not yet recorded (`run_point(overrides, folder) -> results`);
    `identity(overrides)` (see `method_identity`) must match a recorded point's for it to count."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{method}.json"
    old = load_record(path)
    done = {}
    if old and old["benchmark_version"] == benchmark_version and old["seed"] == seed:
        done = {_point_key(p["overrides"]): p for p in old["points"] if p.get("score") is not None}
    record = {"schema": SCHEMA, "method": method, "benchmark_version": benchmark_version, "sequence": "validation",
              "seed": seed, "n_requests": n_requests, "refuses": refuses, "rule": RULE, "grid_size": len(grid),
              "points": [],
              "chosen_index": None, "chosen": None}
    for i, overrides in enumerate(grid):
        key = _point_key(overrides)
        now = identity(overrides) if identity else None
        if key in done and done[key].get("identity") != now:
            log(f"{method} point {i} {key}: recorded for another config or source of {method}, run again")
            del done[key]
        if key in done:
            log(f"{method} point {i} {key}: recorded, not rerun (score {done[key]['score']:.1f})")
            record["points"].append(done[key])
            continue
        began = time.time()
        # The folder is named by the overrides and the identity, so neither a grid edited
        # between sittings nor changed method code resumes a run of something else.
        name = key + (json.dumps(now, sort_keys=True) if now is not None else "")
        results = run_point(overrides, work_dir / f"point-{hashlib.sha1(name.encode()).hexdigest()[:10]}")
        summary = results.get("summary") or {}
        point = {"overrides": overrides, "identity": now, "score": score(summary, refuses),
                 "summary": {k: summary.get(k) for k in RECORDED},
                 "minutes": round((time.time() - began) / 60, 1)}
        record["points"].append(point)
        _finish(record, path, out_dir)
        log(f"{method} point {i} {key}: score {point['score']:.1f}")
    _finish(record, path, out_dir)
    return record


def _finish(record: dict[str, Any], path: Path, out_dir: Path) -> None:
    index = choose(record["points"])
    record["chosen_index"] = index
    record["chosen"] = None if index is None else record["points"][index]["overrides"]
    write_json_atomic(path, record)
    (out_dir / f"{record['method']}.md").write_text(markdown(record))
    (out_dir / "README.md").write_text(index_markdown(out_dir))


def index_markdown(out_dir: Path) -> str:
    """One line per tuning record in `out_dir`: what each method chose, and whether its
    chosen point is degenerate (a score near 0 means it forgets nothing or breaks the model)."""
    lines = ["# Tuning records", "",
             "Every method's grid on the validation sequence (`vlforget tune --method NAME`; rule and",
             "protocol: `docs/tuning.md`). One line per record; the per-method files list every point.", "",
             "| method | points run | chosen overrides | score | defaults' score | CRR Last | AR Last | S Last | "
             "Leak Last |", "|---|---|---|---|---|---|---|---|---|"]

    for path in sorted(out_dir.glob("*.json")):
        record = load_record(path)
        points, index = record["points"], record.get("chosen_index")
        finished = sum(p.get("score") is not None for p in points)
        chosen = points[index] if index is not None else {}
        numbers = chosen.get("summary") or {}
        defaults = next((p.get("score") for p in points if p["overrides"] == {}), None)
        crr = "n/a" if not record["refuses"] else _cell(numbers.get("crr_last"))
        lines.append(f"| [{record['method']}]({record['method']}.md) | {finished} of {record['grid_size']} | "
                     f"`{_point_key(record.get('chosen'))}` | {_cell(chosen.get('score'))} | {_cell(defaults)} | "
                     f"{crr} | {_cell(numbers.get('ar_last'))} | {_cell(numbers.get('s_last'))} | "
                     f"{_cell(numbers.get('leak_last'))} |")
    return "\n".join(lines) + "\n"


def tuned_overrides(out_dir: Path, method: str, benchmark_version: str,
                    identity: Callable[[dict], dict] | None = None) -> tuple[dict | None, str]:
    """(chosen overrides or None, a note saying where they come from or why none).

    `identity(overrides)`: what the chosen point must still be (see `method_identity`;
    every key it gives must equal the recorded one); a record of older code or defaults
    is not used."""
    path = out_dir / f"{method}.json"
    record = load_record(path)
    if record is None:
        return None, f"{method}: no tuning record in {out_dir}, defaults"
    if record["benchmark_version"] != benchmark_version:
        return None, f"{method}: {path} was tuned on benchmark {record['benchmark_version']}, defaults"
    if record.get("chosen") is None:
        return None, f"{method}: {path} has no finished grid point, defaults"
    if identity is not None:
        recorded = record["points"][record["chosen_index"]].get("identity") or {}
        now = identity(record["chosen"])
        if any(recorded.get(key) != value for key, value in now.items()):
            return None, (f"{method}: {path} was tuned on other code, defaults or model "
                          f"(re-run `vlforget tune --method {method}`), defaults")
    finished = sum(p.get("score") is not None for p in record["points"])
    note = f" (partial: {finished} of {record['grid_size']} grid points run)" if finished < record["grid_size"] else ""
    return (dict(record["chosen"]),
            f"{method}: tuned settings {json.dumps(record['chosen'], sort_keys=True)} from {path}{note}")
