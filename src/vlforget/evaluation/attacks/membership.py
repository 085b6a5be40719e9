"""Membership inference on the original answers: can one tell which pairs were deleted?

Members are the pairs a method was asked to forget (each applied request's
forget-train pairs); non-members are never-seen pairs of the same scope (the same
requests' forget-test pairs, which no method trains on), asked in the same phrasing
group as the members where the benchmark has one (v2: forget-train pairs use the request
phrasings, forget-test pairs the evaluation phrasings; the test pairs' "request" view
removes that difference, so the AUC measures membership, not phrasing). Per pair, from the
log-probabilities l_1..l_n of its original answer's tokens, scored *as deployed*
(forced decoding through the method's own generate, so a gate fires as it would):

- loss   = -(1/n) sum_i l_i                                  (Yeom et al. 2018)
- zlib   = -(sum_i l_i) / len(zlib.compress(answer bytes))   (Carlini et al. 2021)
- min_k  = -(1/|K|) sum_{i in K} l_i, K = the ceil(k n) lowest l_i (Min-K% Prob, Shi et al. 2024)

Each score is higher for "less likely", i.e. for what unlearning pushed away; the AUC
(`sklearn.metrics.roc_auc_score`, members = 1) is computed before (original model)
and after (the state). 0.5 = the deleted pairs cannot be told from unseen ones;
far from 0.5 either way = the unlearning left a trace an attacker can read.
"""

from __future__ import annotations

import math
import zlib

import torch
from sklearn.metrics import roc_auc_score

from vlforget.evaluation.attacks.scoring import deployed_logprobs

SCORES = ("loss", "zlib", "min_k")


def pair_scores(model, samples, min_k: float) -> dict[str, list[float]]:
    answers = [s.meta["original_answer"] for s in samples]
    logprobs = deployed_logprobs(model, [s.image for s in samples], [s.instruction for s in samples], answers)
    out = {name: [] for name in SCORES}
    for lp, answer in zip(logprobs, answers):
        lowest = torch.sort(lp).values[: max(1, math.ceil(min_k * len(lp)))]
        out["loss"].append(float(-lp.mean()))
        out["zlib"].append(float(-lp.sum()) / len(zlib.compress(answer.encode("utf-8"))))
        out["min_k"].append(float(-lowest.mean()))
    return out


def auc(member: list[float], other: list[float]) -> float | None:
    if not member or not other:
        return None
    return float(roc_auc_score([1] * len(member) + [0] * len(other), member + other))


def aucs(model, members, others, min_k: float) -> dict[str, dict]:
    member_scores, other_scores = pair_scores(model, members, min_k), pair_scores(model, others, min_k)
    return {name: {"auc": auc(member_scores[name], other_scores[name]),
                   "member_mean": sum(member_scores[name]) / len(members),
                   "nonmember_mean": sum(other_scores[name]) / len(others)} for name in SCORES}


def run(target) -> dict:
    cfg = target.config
    keep = lambda pairs: {r: [s for s in v if s.meta.get("original_answer")] for r, v in pairs.items()}  # noqa: E731
    same_phrasings = "request" in target.views()  # forget-train pairs are in the request phrasings
    members_by = keep(target.forget_train())
    others_by = keep(target.forget_test("request" if same_phrasings else None))
    members = [s for v in members_by.values() for s in v]
    others = [s for v in others_by.values() for s in v]
    if not members or not others:
        raise ValueError("membership inference needs forget-train and forget-test pairs with known original answers")
    before = aucs(target.base(), members, others, cfg.mia_min_k)
    after = aucs(target.method, members, others, cfg.mia_min_k)
    per_request = {}
    for name in members_by:
        if members_by[name] and others_by[name]:
            m = pair_scores(target.method, members_by[name], cfg.mia_min_k)["loss"]
            o = pair_scores(target.method, others_by[name], cfg.mia_min_k)["loss"]
            per_request[name] = {"auc_loss": auc(m, o), "n_members": len(m), "n_nonmembers": len(o)}
    worst = max(abs(v["auc"] - 0.5) for v in after.values() if v["auc"] is not None)
    return {"members": "forget-train pairs of the applied requests (what the method was asked to forget)",
            "nonmembers": "forget-test pairs of the same requests (same scope, never seen by the method)"
                          + (", in the request phrasings as the members" if same_phrasings else ""),
            "n_members": len(members), "n_nonmembers": len(others), "min_k": cfg.mia_min_k,
            "before": before, "after": after, "per_request_after": per_request,
            "max_abs_auc_minus_half_after": worst,
            "headline": {"AUC loss before -> after": f"{before['loss']['auc']:.3f} -> {after['loss']['auc']:.3f}",
                         "AUC zlib after": after["zlib"]["auc"], "AUC Min-K% after": after["min_k"]["auc"],
                         "max |AUC - 0.5| after": worst}}
