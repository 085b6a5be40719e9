"""Attacks and probes on a saved run: does the forgetting hold under pressure?

One module per attack family (perturbations, pgd, relearning, quantisation,
membership, crossmodal), `scoring` (answer log-probabilities through a method's own
inference path), `target` (the run's method at a step, its data subsample, metrics)
and `runner` (the registry; writes `RUN/attacks/<name>.json`). Formulas and
parameters: docs/metrics.md, "Attacks".
"""
