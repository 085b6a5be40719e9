"""Every response a run generates, kept, and the step metrics computed from them.

Each evaluation step answers pairs; the answers are turned into rows

    {step, request, split, mode, instruction, response, reference, refusal, verdict}

(`split`: forget / retain / utility; `mode`: the pair's combination when the data has
one, e.g. CORE's HH/HU/UH/UU, else its intent; `reference`: what the metric compares the
response with: the original answer for forget pairs, the correct answer otherwise;
`refusal`: the refusal a forget pair should get). The metrics of a step are computed
from its rows alone (`score_rows`), so a finished run can be re-scored later with
another judge from `OUT/responses.jsonl.gz` (`vlforget rescore`) without the model.

The file is gzip'd JSON lines, appended once per step (gzip members concatenate, and
Python's gzip reads them as one stream); a resumed run first drops rows of steps it did
not finish.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from vlforget.evaluation.agreement import retain_agreement
from vlforget.evaluation.choices import predicted_choice
from vlforget.evaluation.metrics import exact_match, pct, step_metrics
from vlforget.types import Sample

RESPONSES_FILE = "responses.jsonl.gz"
# Modes a pair must be refused in, and the one it must be answered in (CORE's protocol).
REFUSE_MODES = ("HH", "HU", "UH")
ANSWER_MODES = ("UU",)


def pair_rows(step: int, request: str | None, split: str, samples: Sequence[Sample],
              responses: Sequence[str]) -> list[dict[str, Any]]:
    """One row per answered pair (verdicts are filled in by `score_rows`)."""
    rows = []
    for index, (sample, response) in enumerate(zip(samples, responses)):
        forget = split == "forget"
        row = {
            "step": step, "request": request, "split": split, "index": index,
            "mode": sample.meta.get("combination") or sample.intent,
            "instruction": sample.instruction, "response": response,
            "reference": sample.meta.get("original_answer", "") if forget else sample.answer,
            "refusal": sample.answer if forget else None,
            "verdict": None,
        }
        if "options" in sample.meta:  # a multiple-choice utility question (`data/utility.py`)
            row["options"] = sample.meta["options"]
        rows.append(row)
    return rows


def utility_correct(row: dict[str, Any]) -> bool:
    """Multiple choice: the option the response picked is the reference letter; else exact match."""
    if row.get("options"):
        return predicted_choice(row["response"], row["options"]) == row["reference"]
    return exact_match([row["response"]], [row["reference"]]) == 100.0


def utility_accuracy(rows: Sequence[dict[str, Any]]) -> float:
    """% of utility rows answered correctly (0.0 for none)."""
    utility = [r for r in rows if r["split"] == "utility"]
    return 100.0 * sum(map(utility_correct, utility)) / len(utility) if utility else 0.0


def score_rows(rows: list[dict[str, Any]], utility_base: float | None, judge,
               contexts: dict[str, list[str]], base_rows: Sequence[dict[str, Any]] = (), *,
               refusals: dict[str, Sequence[str]] | None = None, refuses: bool = True) -> dict[str, Any]:
    """The step metrics of one step's rows; fills each row's `verdict` in place.

    `refusals` (request name -> its refusal sentences) and `refuses` (False: the method
    never refuses) are for clean_refusal (`metrics.step_metrics`).

    `utility_base`: the base model's utility accuracy (None when there is no utility split:
    S is then undefined). Adds `per_mode` (refusal / context-correct / answered rates per
    pair mode) when the pairs carry CORE-style modes, and, given the zero-shot model's rows
    (`base_rows`, step 0), the retain answers' agreement with them (`agreement.py`).
    """
    forget: dict[str, list[tuple[str, str]]] = {}
    retain: dict[str, list[tuple[str, str]]] = {}
    owners: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if row["split"] in ("forget", "retain"):
            target = forget if row["split"] == "forget" else retain
            target.setdefault(row["request"], []).append((row["response"], row["reference"] or ""))
            owners.setdefault((row["split"], row["request"]), []).append(row)
    utility = [row for row in rows if row["split"] == "utility"]
    utility_acc = utility_accuracy(utility)
    verdicts: dict[str, dict[str, list]] = {}
    metrics = step_metrics(forget, retain, utility_acc, utility_base or 0.0, judge, contexts, verdicts,
                           refusals=refusals, refuses=refuses)
    if not utility or utility_base is None:
        metrics["s"] = None  # no general held-out data: utility is not measured
    for name, judged in verdicts.get("forget", {}).items():
        for row, verdict in zip(owners[("forget", name)], judged):
            row["verdict"] = {"refused": verdict.refused, "context_ok": verdict.context_ok,
                              "context": verdict.context, "generic": verdict.generic}
    for name, flags in verdicts.get("retain", {}).items():
        for row, refused in zip(owners[("retain", name)], flags):
            row["verdict"] = {"refused": bool(refused)}
    for row in utility:
        row["verdict"] = {"correct": utility_correct(row)}
    modes = mode_breakdown(rows)
    if modes:
        metrics["per_mode"] = modes
    if any(r["split"] == "retain" for r in base_rows):
        metrics.update(retain_agreement(rows, base_rows))
    return metrics


def mode_breakdown(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per CORE mode: pairs, % refused, % refused with the right context, % answered.

    HH, HU and UH forget pairs must be refused; UU retain pairs must be answered. A mode
    label on the other side (CORE's loader marks retained ImageNet-R classification "UH")
    is kept apart as "<mode>/<split>". Empty when no row carries one of these modes.
    """
    groups: dict[str, list[dict]] = {}
    for row in rows:
        mode, split = row["mode"], row["split"]
        if mode not in REFUSE_MODES + ANSWER_MODES or split not in ("forget", "retain"):
            continue
        expected = (mode in REFUSE_MODES) == (split == "forget")
        groups.setdefault(mode if expected else f"{mode}/{split}", []).append(row)
    out = {}
    for key in sorted(groups, key=lambda k: ((REFUSE_MODES + ANSWER_MODES).index(k[:2]), k)):
        group = groups[key]
        refused = sum(bool(r["verdict"] and r["verdict"].get("refused")) for r in group)
        ok = sum(bool(r["verdict"] and r["verdict"].get("context_ok")) for r in group)
        out[key] = {"n": len(group), "refused": pct(refused, len(group)),
                    "crr": pct(ok, len(group)) if group[0]["split"] == "forget" else None,
                    "answered": pct(len(group) - refused, len(group))}
    return out


# -- the file -------------------------------------------------------------------------------
def append_rows(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    with gzip.open(out_dir / RESPONSES_FILE, "at", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_rows(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / RESPONSES_FILE
    if not path.exists():
        raise FileNotFoundError(f"no responses in {out_dir} (missing {RESPONSES_FILE}; runs before "
                                "vlforget kept them cannot be re-scored)")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def keep_steps(out_dir: Path, last_step: int) -> None:
    """Drop rows of steps after `last_step` (a step interrupted between its rows and results.json)."""
    path = out_dir / RESPONSES_FILE
    if not path.exists():
        return
    rows = [row for row in read_rows(out_dir) if row["step"] <= last_step]
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
