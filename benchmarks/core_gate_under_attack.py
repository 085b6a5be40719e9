"""Does an attack lower CORE's refusals by switching its gate off, or by beating the refusers?

Loads a saved CORE run (its last step), and for the forget test subsample of the
attack settings counts how often CORE's gate fires (max relevance >= threshold) on the
clean images, on PGD images and on a few perturbations (`vlforget attack`'s own code),
and the CRR on the same images. Prints JSON.

    python benchmarks/core_gate_under_attack.py runs/robust2/core [examples/attacks/robustness.yaml]
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from vlforget.configs import build_config, read_mapping
from vlforget.evaluation.attacks import perturbations, pgd
from vlforget.evaluation.attacks.target import AttackConfig, load_target


def main(run_dir: str, settings: str | None = None) -> None:
    config = build_config(AttackConfig, read_mapping(settings) if settings else {})
    target = load_target(Path(run_dir), None, config)
    core = target.method
    if target.results["method"] != "core":
        raise SystemExit(f"{run_dir} is a {target.results['method']} run, not core")
    fired: list[torch.Tensor] = []
    gates = core.gates

    def counting(relevance):
        g = gates(relevance)
        fired.append((g > 0).float())
        return g
    core.gates = counting
    pairs = target.forget_test()
    flat = [s for samples in pairs.values() for s in samples]

    def measure(samples):
        fired.clear()
        core.generate([s.image for s in samples], [s.instruction for s in samples])
        rate = 100.0 * float(torch.cat(fired).mean())
        it = iter(samples)
        regrouped = {r: [next(it) for _ in v] for r, v in pairs.items()}
        return {"gate_fires": rate, "crr": target.forget_metrics(core, regrouped)["crr"]}

    out = {"clean": measure(flat)}
    adv = pgd.pgd(core, [s.image for s in flat], [s.instruction for s in flat],
                  [s.meta["original_answer"] for s in flat], config.pgd_epsilon, config.pgd_step_size, config.pgd_steps)
    out["pgd"] = measure([replace(s, image=im) for s, im in zip(flat, pgd.to_images(adv))])
    for name in ("noise-24", "jpeg-50", "jpeg-15", "crop-0.9", "crop-0.75"):
        # perturbed per request, exactly as the perturbations attack does (same images, same seeds)
        out[name] = measure([s for samples in pairs.values() for s in perturbations.perturbed(samples, name, config.seed)])
    print(json.dumps({"run": Path(run_dir).name, "n": len(flat), "threshold": core.config.threshold, **out}, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
