"""CORE's configuration: one dataclass, every field with help text.

The three ablation switches of the paper are `use_modulator`, `concept_routing` and
`calibration`; `concept_source` picks where concept descriptions come from.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlforget.configs import option
from vlforget.methods.base import MethodConfig

CONCEPT_SOURCES = ("request", "annotations", "model")
GATE_MODES = ("hard", "soft")


@dataclass
class CoreConfig(MethodConfig):
    # -- refusers and routing ----------------------------------------------------------
    pool_size: int = option(20, "number of refusers (connector copies); fixed, whatever the number of requests", ge=1)
    top_k: int = option(2, "refusers a query is routed to", ge=1)
    output_adapter_rank: int = option(16, "rank of each refuser's gated output adapter on the LM head input "
                                          "(0 = connector-only refusers, as in the paper)", ge=0)
    steps: int = option(150, "optimiser steps of the refusers per request", ge=0)
    batch_size: int = option(16, "forget pairs per step (plus as many gated retain pairs)", ge=1)
    lr: float = option(1e-2, "AdamW learning rate of the refusers and the request's router row", gt=0)
    retain_weight: float = option(1.0, "weight of the answer loss on retain pairs the gate lets through", ge=0)
    recommend_weight: float = option(1.0, "weight of the recommendation loss (reuse refusers of similar requests)", ge=0)
    load_weight: float = option(1.0, "weight of the load loss (avoid refusers of dissimilar requests)", ge=0)
    protect_weight: float = option(1.0, "weight of keeping shared refusers' outputs on earlier requests' prototypes", ge=0)
    freeze_shared: bool = option(True, "a refuser shared with earlier requests is read, not trained again "
                                       "(off: it is trained with output protection, closer to the paper)")
    similar_threshold: float = option(0.5, "task similarity from which an earlier request counts as related")
    router_steps: int = option(100, "steps fitting the request's router row to the routing losses before training", ge=0)
    # -- concepts ----------------------------------------------------------------------
    concept_source: str = option("request", "where concept descriptions come from: request | annotations | model")
    max_descriptions: int = option(48, "descriptions kept per side (visual/textual) per request", ge=1)
    textual_exemplars: bool | str = option("auto", "also score instructions against the forget instructions "
                                                   "themselves (the textual concept as the request shows it), not "
                                                   "only the descriptions: true | false | auto = only when the "
                                                   "concepts were mined from the model (measured better there, "
                                                   "worse with written descriptions: docs/methods.md)")
    visual_scores: str = option("scorer", "visual concept scores at inference: scorer = the aligned scorer's "
                                          "image projection itself; distilled = a per-request ridge map (the paper)")
    text_buckets: int = option(1024, "hash buckets of the instruction's bag of token unigrams and bigrams", ge=1)
    ridge: float = option(1.0, "ridge penalty of the concept layer's least-squares fit", ge=0)
    prototypes: int = option(8, "prototypes (k-means centroids of features) kept per request", ge=1)
    # -- modulator ---------------------------------------------------------------------
    use_modulator: bool = option(True, "learn how a request's visual and textual scores combine (AND/OR/...); "
                                       "off = a fixed average of the two")
    negative_weight: float = option(10.0, "weight of the modulator's negatives relative to its positives; above 1 "
                                          "trades forget recall for fewer false gates, which add up over requests", ge=0)
    modulator_steps: int = option(300, "full-batch steps of a request's modulator head", ge=0)
    text_tuning_steps: int = option(300, "steps refining the head jointly with a linear correction of the textual "
                                       "score on the instruction's token bag (0 = off)", ge=0)
    text_tuning_l2: float = option(0.05, "L2 penalty of that textual correction", ge=0)
    # -- routing / calibration ---------------------------------------------------------
    concept_routing: bool = option(True, "route on the modulator's concept relevances; off = on instruction "
                                         "similarity to stored prototypes (MVP-style)")
    calibration: bool = option(True, "gate refusers by relevance (skip them for unrelated queries); "
                                     "off = always apply them with g = 1")
    gate_mode: str = option("hard", "hard: g = 1 when relevance >= threshold else 0; soft: g = relevance")
    threshold: float = option(0.5, "relevance below which the refusers are skipped (output untouched)", ge=0, le=1)
    route_temperature: float = option(0.1, "temperature sharpening the relevance weights the router reads", gt=0)

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {self.pool_size}")
        if not 1 <= self.top_k <= self.pool_size:
            raise ValueError(f"top_k must be in 1..pool_size ({self.pool_size}), got {self.top_k}")
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("steps >= 0, batch_size >= 1 and lr > 0 are required")
        if self.concept_source not in CONCEPT_SOURCES:
            raise ValueError(f"unknown concept_source {self.concept_source!r}; valid: {', '.join(CONCEPT_SOURCES)}")
        if self.textual_exemplars not in (True, False, "auto"):
            raise ValueError(f"textual_exemplars must be true, false or auto, got {self.textual_exemplars!r}")
        if self.visual_scores not in ("scorer", "distilled"):
            raise ValueError(f"unknown visual_scores {self.visual_scores!r}; valid: scorer, distilled")
        if self.gate_mode not in GATE_MODES:
            raise ValueError(f"unknown gate_mode {self.gate_mode!r}; valid: {', '.join(GATE_MODES)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.prototypes < 1 or self.max_descriptions < 1:
            raise ValueError("prototypes and max_descriptions must be >= 1")

    def uses_exemplars(self, concept_source: str) -> bool:
        """Whether a request whose concepts came from `concept_source` gets textual exemplars."""
        return self.textual_exemplars is True or (self.textual_exemplars == "auto" and concept_source == "model")
