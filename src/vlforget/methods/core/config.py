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
TEXT_ENCODERS = ("minilm", "concept")


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
    concept_encoder: str | None = option(None, "image-text model grounding the visual concepts: a Hugging Face "
                                                "CLIP- or SigLIP-style folder or cached hub id (LLaVA-1.5: "
                                                "openai/clip-vit-large-patch14-336); none = small heads on the "
                                                "backbone's vision features (shipped for the built-in model, else "
                                                "trained once on the benchmark's general pairs and cached on disk)")
    image_patches: bool = option(False, "with concept_encoder: also score every patch token, not only the pooled "
                                        "image embedding (concepts in one part of the image)")
    text_encoder: str = option("minilm", "what reads instructions and textual descriptions: minilm | concept (the "
                                         "concept encoder's text tower)")
    textual_share: float = option(0.75, "share of a request's textual descriptions whose top similarities make its "
                                        "textual score (0.25: a question close to a few phrasings of an intent "
                                        "counted as that intent)", gt=0, le=1)
    intent_projection: bool = option(True, "project text embeddings onto the directions that separate kinds of "
                                           "answers in the general pairs (drops object words; off = raw encoder "
                                           "similarities); needs general pairs, skipped without them")
    intent_kinds: int = option(12, "answer clusters the intent projection separates", ge=2)
    intent_dim: int = option(16, "dimensions the intent projection keeps (at most intent_kinds - 1: "
                                 "the rest would be arbitrary)", ge=1)
    intent_shrink: float = option(0.8, "shrinkage of the projection's within-kind covariance toward isotropic "
                                       "(1 = encoder geometry, 0 = plain LDA)", ge=0, le=1)
    pick_question: bool = option(True, "score only the clause of an instruction that most resembles a general "
                                       "question (the question inside a pressing sentence); off = the max over "
                                       "the whole text and its clauses. Needs general pairs, skipped without them")
    intent_neighbours: int = option(15, "a query's textual score is the weighted mean over its k nearest general "
                                        "instructions in the backbone's answer state (the model's last hidden "
                                        "state at the end of the prompt, on a blank image), which tells a "
                                        "shape question from a count or a position one; 0 = the query's own "
                                        "encoder similarity. Needs general pairs, skipped without them", ge=0)
    neighbour_temperature: float = option(0.1, "with intent_neighbours: weight each of the k neighbours by "
                                               "exp((cosine - nearest cosine) / temperature) instead of 1/k, so an "
                                               "intent the general pool asks in few distinct ways is not averaged "
                                               "with the next intent's questions; 0 = uniform 1/k", ge=0)
    coverage_penalty: float = option(1.0, "with intent_neighbours: a general instruction that none of the request's "
                                          "forget questions reads like (max answer-state cosine c) has its textual "
                                          "similarity lowered by coverage_penalty * (1 - c); 0 = descriptions alone",
                                     ge=0)
    general_pairs: int = option(3000, "general pairs the intent projection is fitted on", ge=10)
    clean_refusals: bool = option(True, "a gated answer that opens like a refusal becomes the gating request's "
                                        "refusal sentence exactly (no repeated, garbled or stray words; the request "
                                        "with the highest relevance is the one named)")
    gated_question_only: bool = option(True, "a gated query asked inside a longer message is put to the model as "
                                             "the question the gate read (pick_question), the rest dropped; "
                                             "ungated queries reach the model as asked")
    prototypes: int = option(8, "prototypes (k-means centroids of features) kept per request", ge=1)
    # -- modulator ---------------------------------------------------------------------
    use_modulator: bool = option(True, "learn how a request's visual and textual scores combine (AND/OR/...); "
                                       "off = a fixed average of the two")
    negative_weight: float = option(10.0, "weight of the modulator's negatives relative to its positives; above 1 "
                                          "trades forget recall for fewer false gates, which add up over requests", ge=0)
    modulator_steps: int = option(300, "full-batch steps of a request's modulator head", ge=0)
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
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"unknown text_encoder {self.text_encoder!r}; valid: {', '.join(TEXT_ENCODERS)}")
        if self.text_encoder == "concept" and not self.concept_encoder:
            raise ValueError("text_encoder 'concept' reads instructions with the concept encoder's text tower; "
                             "set concept_encoder too")
        if self.concept_encoder:
            from vlforget.methods.core.encoders import check_encoder_source

            check_encoder_source(str(self.concept_encoder), loading=False)
        if self.gate_mode not in GATE_MODES:
            raise ValueError(f"unknown gate_mode {self.gate_mode!r}; valid: {', '.join(GATE_MODES)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.prototypes < 1 or self.max_descriptions < 1:
            raise ValueError("prototypes and max_descriptions must be >= 1")
