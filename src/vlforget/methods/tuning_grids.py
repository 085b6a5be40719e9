"""Every method's tuning grid: the settings `vlforget tune` tries on the validation sequence.

One budget for every method, CORE included: at most `MAX_POINTS` points over the
method's key knobs (the ones that move it between "forgets nothing" and "destroys the
model"). The first point of every grid is `{}` (the method's defaults), so tuning can
only move a method away from its defaults if that scores better on the validation
sequence. Overrides are field names of the method's config (checked by
`tests/test_tuning.py`); the rule that picks a point is `vlforget.evaluation.tuning`.
"""

from __future__ import annotations

MAX_POINTS = 6

GRIDS: dict[str, list[dict]] = {
    # Nothing to tune: the reference row.
    "none": [{}],
    # The meaning-based gate (issue 19): the modulator's negative weight moves CORE along
    # one frontier of recall against false gates (validation gate bounds, docs/methods.md:
    # 5 -> more recall, 20 -> fewer false gates), the threshold trades the same way at
    # inference; refuser steps decide how firmly a gated query is refused.
    "core": [{}, {"negative_weight": 20.0}, {"negative_weight": 5.0}, {"threshold": 0.4}, {"threshold": 0.6},
             {"steps": 80}],
    # Refusal fine-tuning + retain NLL: how far the LoRA moves (steps x learning rate) and
    # how much the retain term holds it decide between refusing the forget set and
    # refusing everything (without the retain term: AR 0 on the validation sequence).
    "idknll": [{}, {"steps": 30}, {"steps": 120}, {"lr": 3e-3}, {"retain_weight": 0.3}, {"retain_weight": 3.0}],
    # Gradient ascent has no floor: the step budget is the method (validation, 3 requests:
    # 5 steps leak 92, 10 keep AR 69, 15+ destroy the model). Steps around the default,
    # then longer budgets at smaller rates (a gentler path to the same cliff).
    "ga": [{}, {"steps": 5}, {"steps": 7}, {"steps": 12}, {"steps": 20, "lr": 3e-4}, {"steps": 40, "lr": 1e-4}],
    # Ascent + retain descent: the step budget (60 destroyed the model on the validation
    # sequence, 20-40 did not) and the retain weight, which decides whether the descent
    # holds the model together.
    "graddiff": [{}, {"steps": 20}, {"steps": 40}, {"retain_weight": 3.0}, {"steps": 60, "retain_weight": 3.0},
                 {"steps": 60, "lr": 3e-4}],
    # Ascent + KL on retain pairs: same knobs as graddiff (60 steps destroyed the model,
    # 20-40 did not).
    "kl": [{}, {"steps": 20}, {"steps": 40}, {"retain_weight": 3.0}, {"steps": 60, "retain_weight": 3.0},
           {"steps": 60, "lr": 3e-4}],
    # NPO (+ retain NLL): the step budget is not monotone here (validation: 20 / 30 / 60 / 120
    # steps -> AR 15 / 38 / 46 / 31, leak 67 / 72 / 48 / 19: the retain term repairs what the
    # early ascent breaks), so steps around the default; beta (how quickly the forget
    # loss saturates) and the retain weight.
    "npo": [{}, {"steps": 40}, {"steps": 90}, {"beta": 0.5}, {"retain_weight": 3.0}, {"lr": 3e-4}],
    # EWC: the penalty weight is the method. On the Fisher normalised to mean 1 a request's
    # unpenalised move weighs ~40, so lambda 0.1 is weak and 1-100 binding; the grid
    # spans that range, then the step budget.
    "ewc": [{}, {"ewc_lambda": 0.1}, {"ewc_lambda": 1.0}, {"ewc_lambda": 100.0}, {"steps": 30},
            {"steps": 120}],
    # LwF: distillation weight (how much the previous state is kept) and step budget.
    "lwf": [{}, {"distill_weight": 0.3}, {"distill_weight": 3.0}, {"steps": 30}, {"steps": 120},
            {"lr": 3e-4}],
    # SCRUB: step budget, how long it maximises on forget pairs, and the teacher KL weight.
    "scrub": [{}, {"steps": 30}, {"max_phase": 5}, {"alpha": 3.0}, {"forget_kl_weight": 0.3},
              {"lr": 3e-4}],
    # SIU: the dual masked KL weight holds the model; steps and rate move it.
    "siu": [{}, {"kl_weight": 3.0}, {"kl_weight": 0.3}, {"steps": 30}, {"steps": 120}, {"lr": 3e-4}],
    # SMFA: the conflict margin decides how much of the forget adapter survives the mask.
    "smfa": [{}, {"conflict_margin": 0.5}, {"conflict_margin": 2.0}, {"steps": 30}, {"steps": 120},
             {"lr": 3e-3}],
    # CVF: how much of each layer stays free decides whether it edits at all (validation:
    # min_free 0.1-0.25 edit nothing that shows, 0.75 leak 69, 0.9 AR 35); then how far
    # it moves (rate, steps) and the protected energy share.
    "cvf_nullspace": [{}, {"min_free": 0.5}, {"min_free": 0.9}, {"lr": 3e-3}, {"steps": 160},
                      {"protect_energy": 0.99}],
    # MMUnlearner: ascent has no floor, so the step budget first (validation: 20 steps
    # destroyed the model, 10-15 did not); the saliency ratio sets how many weights may
    # move and the ascent weight how hard.
    "mmunlearner": [{}, {"steps": 10}, {"steps": 20}, {"saliency_ratio": 10.0}, {"forget_weight": 0.5},
                    {"steps": 20, "saliency_ratio": 10.0}],
    # MLLMEraser: steering strength and the gate's threshold.
    "mllmeraser": [{}, {"strength": 0.5}, {"strength": 2.0}, {"gate_threshold": 0.3},
                   {"gate_threshold": 0.7}, {"layer": 1}],
    # SAUCE: how many SAE features are clamped and how hard.
    "sauce": [{}, {"top_k": 4}, {"top_k": 16}, {"clamp_scale": 0.0}, {"clamp_scale": -6.0},
              {"top_k": 16, "clamp_scale": -6.0}],
    # ECO: the strength search's recall target and its upper end.
    "eco": [{}, {"max_recall": 0.05}, {"max_recall": 0.2}, {"max_strength": 4.0}, {"max_strength": 16.0},
            {"hidden": 128}],
    # EProj: the gate's negative weight decides which queries reach a request's projector
    # (validation: 1 -> CRR 60 / AR 56, 1.5 -> CRR 28 / AR 94); steps and rate how firmly a
    # routed query is refused. (key_quantile only acts without retain pairs.)
    "eproj": [{}, {"negative_weight": 1.2}, {"negative_weight": 1.35}, {"steps": 30}, {"steps": 120},
              {"lr": 3e-3}],
    # GMM (no gate): how far the shared projector moves (rate, steps) against how much the
    # retain term holds it; without the retain term it refused everything after one request.
    "gmm": [{}, {"lr": 1e-2}, {"lr": 1e-3}, {"retain_weight": 3.0}, {"steps": 30},
            {"output_adapter_rank": 0}],
    # MoE-Adapters: the autoencoder gate's negative weight and margin decide which queries
    # reach the experts (validation: negative_weight 3 shut it, CRR 13); steps how firmly.
    "moe_adapters": [{}, {"negative_weight": 1.5}, {"ae_margin": 1.2}, {"ae_margin": 0.8}, {"steps": 30},
                     {"steps": 120}],
    # O3: the detector's cut (negative weight) and ramp width gate each LoRA (validation:
    # negative_weight 0.5 / 1 / 3 -> CRR 50 / 46 / 28); the orthogonality weight trades
    # interference for capacity.
    "o3": [{}, {"negative_weight": 0.5}, {"negative_weight": 2.0}, {"ramp_width": 0.05}, {"ramp_width": 0.2},
           {"orthogonal_weight": 1.0}],
}


def grid_for(name: str) -> list[dict]:
    """The tuning grid of method `name` (a clear error for a method without one)."""
    if name not in GRIDS:
        raise ValueError(f"method {name!r} has no tuning grid; add one to vlforget/methods/tuning_grids.py")
    return [dict(point) for point in GRIDS[name]]
