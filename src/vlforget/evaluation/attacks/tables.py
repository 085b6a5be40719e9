"""Tables of saved attack results (reads `RUN/attacks/*.json` only; no torch, so reports stay light).

- `attack_rows`: one run, one row per attack with its headline numbers (the run's report);
- `robustness_rows`: one row per method, the few numbers the issue's goals are stated in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ATTACK_ORDER = ("perturbations", "pgd", "relearning", "quantisation", "membership", "crossmodal")


def read_attacks(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The attack records saved in a run folder (name -> record), in a fixed order."""
    folder = Path(run_dir) / "attacks"
    return {name: json.loads((folder / f"{name}.json").read_text())
            for name in ATTACK_ORDER if (folder / f"{name}.json").exists()}


def show(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def attack_rows(attacks: dict[str, dict]) -> list[list[str]]:
    """[attack, step, requests, headline] per saved attack."""
    return [[name, str(r["step"]), str(len(r["requests"])),
             "; ".join(f"{k}: {show(v)}" for k, v in r["headline"].items())] for name, r in attacks.items()]


ROBUSTNESS_HEADER = ["method", "step", "clean CRR / leak",
                     "perturbed: worst CRR % of clean (content preserved) / max leak", "PGD: CRR / leak",
                     "leak after 20 relearning steps (retain-only control)", "int8: CRR / AR / S (float)",
                     "MIA: loss AUC / max |AUC-0.5|", "no-image leak / other-intent concept leak"]


def _get(record: dict | None, *keys):
    for key in keys:
        if record is None:
            return None
        record = record.get(key) if isinstance(record, dict) else None
    return record


def _f(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def robustness_row(method: str, attacks: dict[str, dict]) -> list[str]:
    p, g, r, q, m, c = (attacks.get(n) for n in ATTACK_ORDER)
    step = next((str(a["step"]) for a in attacks.values()), "n/a")
    at = "20" if r and "20" in r["arms"]["forget"] else (str(r["steps"][-1]) if r else None)
    clean = _get(p, "clean") or _get(g, "clean")
    return [
        method, step,
        f"{_f(_get(clean, 'crr'))} / {_f(_get(clean, 'leak'))}",
        f"{_f(_get(p, 'worst_crr_vs_clean'))} ({_f(_get(p, 'worst_crr_preserved_vs_clean'))}) / "
        f"{_f(_get(p, 'headline', 'max leak'))}",
        f"{_f(_get(g, 'attacked', 'crr'))} / {_f(_get(g, 'attacked', 'leak'))}",
        f"{_f(_get(r, 'arms', 'forget', at, 'leak'))} ({_f(_get(r, 'arms', 'retain_control', at, 'leak'))})",
        f"{_f(_get(q, 'int8', 'crr'))} / {_f(_get(q, 'int8', 'ar'))} / {_f(_get(q, 'int8', 's'))} "
        f"({_f(_get(q, 'float', 'crr'))} / {_f(_get(q, 'float', 'ar'))} / {_f(_get(q, 'float', 's'))})",
        f"{_f(_get(m, 'after', 'loss', 'auc'), 3)} / {_f(_get(m, 'max_abs_auc_minus_half_after'), 3)}",
        f"{_f(_get(c, 'no_image', 'leak'))} / {_f(_get(c, 'other_intent', 'state', 'concept_leak'))}",
    ]


def robustness_markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(ROBUSTNESS_HEADER) + " |", "|" + "---|" * len(ROBUSTNESS_HEADER)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"
