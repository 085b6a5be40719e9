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
    # The gate threshold trades forget recall against over-refusal; refuser steps and
    # learning rate decide how firmly a gated query is refused; the modulator's negative
    # weight trades recall for fewer false gates, which add up over requests.
    "core": [{}, {"threshold": 0.4}, {"threshold": 0.6}, {"steps": 80}, {"lr": 0.03},
             {"negative_weight": 3.0}],
    # Refusal fine-tuning: how far the LoRA moves (steps x learning rate) is the whole
    # trade between refusing the forget set and refusing everything.
    "idknll": [{}, {"steps": 30}, {"steps": 120}, {"lr": 3e-4}, {"lr": 3e-3}, {"steps": 30, "lr": 3e-3}],
    # Gradient ascent destroys the model at its default budget (AR 0 on the first 4
    # test requests, AR 87 at 10 steps): the grid is a step budget, then a smaller rate.
    "ga": [{}, {"steps": 5}, {"steps": 10}, {"steps": 20}, {"steps": 20, "lr": 3e-4}, {"lr": 1e-4}],
    # Ascent + retain descent: step budget and the retain term's weight decide whether
    # the descent holds the model together.
    "graddiff": [{}, {"steps": 10}, {"steps": 20}, {"steps": 20, "retain_weight": 3.0}, {"lr": 3e-4},
                 {"lr": 1e-4}],
    # Ascent + KL on retain pairs: same knobs as graddiff.
    "kl": [{}, {"steps": 10}, {"steps": 20}, {"steps": 20, "retain_weight": 3.0}, {"lr": 3e-4}, {"lr": 1e-4}],
    # NPO: step budget, and beta (how quickly the forget loss saturates).
    "npo": [{}, {"steps": 10}, {"steps": 20}, {"beta": 0.5}, {"steps": 20, "beta": 0.5}, {"lr": 3e-4}],
    # EWC: the penalty weight is the method; at the default it is ~1e-4 of the loss, so
    # the grid spans orders of magnitude (meaningful until the penalty is scaled to its
    # Fisher, then the same points bracket 1).
    "ewc": [{}, {"ewc_lambda": 5e3}, {"ewc_lambda": 5e5}, {"ewc_lambda": 5e7}, {"steps": 30},
            {"steps": 30, "ewc_lambda": 5e5}],
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
    # CVF: at the default protected energy no direction is left free in most layers (it
    # edits nothing, leak 95): the grid opens free directions, then moves the rate.
    "cvf_nullspace": [{}, {"protect_energy": 0.999}, {"protect_energy": 0.99}, {"protect_energy": 0.9},
                      {"protect_energy": 0.99, "lr": 3e-3}, {"protect_energy": 0.99, "steps": 160}],
    # MMUnlearner: the saliency ratio sets how many weights may move; steps and the
    # ascent weight set how far (its default sits at the destroyed end).
    "mmunlearner": [{}, {"saliency_ratio": 10.0}, {"steps": 5}, {"steps": 10}, {"forget_weight": 0.3},
                    {"steps": 10, "saliency_ratio": 10.0}],
    # MLLMEraser: steering strength and the gate's threshold.
    "mllmeraser": [{}, {"strength": 0.5}, {"strength": 2.0}, {"gate_threshold": 0.3},
                   {"gate_threshold": 0.7}, {"layer": 1}],
    # SAUCE: how many SAE features are clamped and how hard.
    "sauce": [{}, {"top_k": 4}, {"top_k": 16}, {"clamp_scale": 0.0}, {"clamp_scale": -6.0},
              {"top_k": 16, "clamp_scale": -6.0}],
    # ECO: the strength search's recall target and its upper end.
    "eco": [{}, {"max_recall": 0.05}, {"max_recall": 0.2}, {"max_strength": 4.0}, {"max_strength": 16.0},
            {"hidden": 128}],
    # EProj: the key quantile decides which queries reach a request's projector.
    "eproj": [{}, {"key_quantile": 0.05}, {"key_quantile": 0.2}, {"steps": 30}, {"steps": 120},
              {"lr": 3e-3}],
    # GMM (refuses everything after one request at its default): a smaller, shorter update.
    "gmm": [{}, {"steps": 20}, {"lr": 3e-3}, {"lr": 1e-3}, {"steps": 20, "lr": 3e-3},
            {"output_adapter_rank": 0}],
    # MoE-Adapters: the autoencoder acceptance (quantile x margin) gates the experts.
    "moe_adapters": [{}, {"ae_quantile": 0.9}, {"ae_quantile": 0.99}, {"ae_margin": 1.5}, {"steps": 30},
                     {"steps": 120}],
    # O3: the detector's full-strength quantile and ramp gate each LoRA; the orthogonality
    # weight trades interference for capacity.
    "o3": [{}, {"full_quantile": 0.05}, {"full_quantile": 0.2}, {"ramp_width": 0.05}, {"ramp_width": 0.2},
           {"orthogonal_weight": 1.0}],
}


def grid_for(name: str) -> list[dict]:
    """The tuning grid of method `name` (a clear error for a method without one)."""
    if name not in GRIDS:
        raise ValueError(f"method {name!r} has no tuning grid; add one to vlforget/methods/tuning_grids.py")
    return [dict(point) for point in GRIDS[name]]
