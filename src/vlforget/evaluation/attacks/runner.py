"""The attack registry and the loop that runs attacks on a saved run and writes `RUN/attacks/<name>.json`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from vlforget.configs import did_you_mean, to_dict
from vlforget.evaluation.attacks import crossmodal, membership, perturbations, pgd, quantisation, relearning
from vlforget.evaluation.attacks.tables import ATTACK_ORDER
from vlforget.evaluation.attacks.target import AttackTarget

ATTACKS_DIR = "attacks"
# name -> (what it measures, function(target) -> result dict with a "headline" mapping)
ATTACKS: dict[str, tuple[str, Callable[[AttackTarget], dict]]] = {
    "perturbations": ("CRR and leak on forget images under noise, blur, JPEG, crop, colour jitter (2 strengths each)",
                      perturbations.run),
    "pgd": ("CRR and leak after white-box PGD on the pixels towards the original answer", pgd.run),
    "relearning": ("leak and CRR after k fine-tuning steps on some forget pairs vs a retain-only control",
                   relearning.run),
    "quantisation": ("CRR, AR, S with the language model in dynamic int8", quantisation.run),
    "membership": ("AUC of loss / zlib / Min-K% scores, deleted vs never-seen pairs of the same scope",
                   membership.run),
    "crossmodal": ("the forgotten concept asked without its image, or via another intent", crossmodal.run),
}
assert tuple(ATTACKS) == ATTACK_ORDER, "tables.ATTACK_ORDER lists the registry's attacks in its order"


def parse_attack_names(text: str | None) -> list[str]:
    """Comma-separated attack names (None or 'all': every attack); an unknown name is a clear error."""
    if text is None or text.strip() == "all":
        return list(ATTACKS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("--attack needs at least one attack name")
    for name in names:
        if name not in ATTACKS:
            raise ValueError(f"unknown attack {name!r}{did_you_mean(name, list(ATTACKS))}; "
                             f"available: {', '.join(ATTACKS)}")
    return names


def attack_path(run_dir: Path, name: str) -> Path:
    return run_dir / ATTACKS_DIR / f"{name}.json"


def run_attacks(target: AttackTarget, names: list[str], progress: Callable[[str], None] = lambda _: None
                ) -> dict[str, dict[str, Any]]:
    """Run each attack on the target and write its JSON file; returns name -> record."""
    folder = target.run_dir / ATTACKS_DIR
    folder.mkdir(exist_ok=True)
    records = {}
    for name in names:
        progress(name)
        began = time.perf_counter()
        result = ATTACKS[name][1](target)
        record = {"schema": "vlforget.attack/1", "attack": name, "description": ATTACKS[name][0],
                  "method": target.results["method"], "step": target.step,
                  "requests": [r.name for r in target.applied], "config": to_dict(target.config),
                  "seconds": round(time.perf_counter() - began, 1), **result}
        path = attack_path(target.run_dir, name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(path)
        records[name] = record
    return records
