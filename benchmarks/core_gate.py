"""How well CORE's gate separates forget queries from everything else (no refusers trained).

Applies every request of benchmark v2's *validation* sequence (the tuning split; the
test sequence never chooses a setting) with `steps=0` (concept layer, modulator
and router only, seconds per request), then reads the modulator's relevance on each
request's forget/retain test pairs and on the utility split. Upper bounds of what the
refusers can reach: a forget pair counts when its own request has the highest relevance
and passes the threshold (CRR bound); a retain/utility pair when no request passes it
(AR / S bound). `errors` says, from the benchmark's labels, which side of the gate was
wrong: for a false gate by request j, whether the image shows j's visual concept and
whether the instruction has one of j's intents; for a missed forget pair, whether its
scaled visual / textual score reached 0.5 (both did: the head's cut is too strict).
Prints JSON.

`--probe` adds request types the validation sequence lacks but the test sequence has
(`PROBE_REQUESTS`: either-scope requests on comparing and on size, a two-value and a three-value
visual concept), still on validation images and phrasings, with 150 utility pairs (the wider
scopes leave fewer general pairs outside every request). A setting that only the
test sequence's request types would reward shows here, not only on the test.

    python benchmarks/core_gate.py ['{"negative_weight": 3}'] [--probe]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import torch

from vlforget.data.benchmark import Benchmark, BenchmarkConfig
from vlforget.data.requests import VALIDATION_REQUESTS, RequestSpec, load_specs
from vlforget.methods import make_method
from vlforget.models.backbone import Backbone

# Request types of the test sequence that the validation sequence has none of. Their
# objects and intents avoid the validation requests' own, so no earlier request's forget
# pairs fall in their scopes.
PROBE_REQUESTS = [
    RequestSpec(name="star-or-compare", description="Do not discuss images with stars, and do not compare sizes.",
                refusals=["sorry, i cannot discuss stars or compare sizes."], mode="either",
                visual={"shape": "star"}, intents=["compare"]),
    RequestSpec(name="square-or-size", description="Do not discuss images with squares, and do not judge sizes.",
                refusals=["sorry, i cannot discuss squares or judge sizes."], mode="either",
                visual={"shape": "square"}, intents=["size"]),
    RequestSpec(name="zero-one-background", description="Do not name the background of images with a zero or a one.",
                refusals=["sorry, i cannot name backgrounds behind zeros and ones."], mode="both",
                visual={"shape": ["zero", "one"]}, intents=["background"]),
    # A concept of three values: each is held by about a third of the forget images, like
    # the rarer value of an unbalanced two-value concept. One intent only, so that enough
    # general pairs stay outside every scope; it overlaps triangle-identity's, so adding
    # this request changed the validation requests' draws in --probe runs (bounds from
    # before it are not comparable).
    RequestSpec(name="three-circle-zero-identity", description="Do not say what the threes, circles or zeros are.",
                refusals=["sorry, i cannot identify threes, circles or zeros."], mode="both",
                visual={"shape": ["three", "circle", "zero"]}, intents=["identify"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description="CORE's gate bounds on the validation sequence (JSON)")
    parser.add_argument("overrides", nargs="?", default="{}", help="CORE config overrides as JSON")
    parser.add_argument("--probe", action="store_true", help="append PROBE_REQUESTS to the validation sequence")
    args = parser.parse_args()
    overrides, probe = json.loads(args.overrides), args.probe
    backbone = Backbone.load()
    if probe:
        bench = Benchmark(BenchmarkConfig(sequence="validation", n_utility=150),
                          specs=load_specs(VALIDATION_REQUESTS) + PROBE_REQUESTS)
    else:
        bench = Benchmark(BenchmarkConfig(sequence="validation"))
    core = make_method("core", backbone, {"steps": 0, "router_steps": 5, **overrides}, general=bench.general_pool)
    requests = bench.requests()
    began = time.perf_counter()
    for request in requests:
        core.unlearn(request)
    seconds = time.perf_counter() - began

    def relevance(samples, with_scores=False):
        features = core.visual_embeddings([s.image for s in samples])
        instructions = core.instruction_features([s.instruction for s in samples])
        with torch.no_grad():
            rel = core.relevance(features, instructions)
            return (rel, core.bank.scores(features, instructions)) if with_scores else rel

    th = core.config.threshold
    errors: Counter = Counter()

    def count_false_gates(split, samples, rel):
        for sample, row in zip(samples, rel):
            for j in (row >= th).nonzero().flatten().tolist():
                spec = bench.specs[j]
                shows = "concept shown" if spec.shows_concept(sample.meta["scene"]) else "concept not shown"
                asks = "intent asked" if sample.intent in spec.intents else "intent not asked"
                errors[f"{split} false gate, {spec.mode}-scope request: {shows}, {asks}"] += 1

    utility_samples = bench.utility_split()
    utility = relevance(utility_samples)
    count_false_gates("utility", utility_samples, utility)
    rows = {}
    for i, request in enumerate(requests):
        (forget, zf), retain = relevance(request.forget_test, True), relevance(request.retain_test)
        count_false_gates("retain", request.retain_test, retain)
        for z, row in zip(zf[:, i], forget):
            if row[i] < th:
                sides = [side for side, value in (("visual", z[0]), ("textual", z[1])) if value < 0.5]
                errors[f"forget miss, {bench.specs[i].mode}-scope: " + (" and ".join(sides) + " below 0.5"
                                                                          if sides else "both scores >= 0.5")] += 1
            elif int(row.argmax()) != i:
                errors["forget pair gated but routed to another request"] += 1
        rows[request.name] = {
            "forget_own_gate": round(float((forget[:, i] >= th).float().mean()), 3),
            "forget_routed_to_own": round(float(((forget.argmax(1) == i) & (forget[:, i] >= th)).float().mean()), 3),
            "retain_ungated": round(float((retain.max(1).values < th).float().mean()), 3),
            "utility_false_gate": round(float((utility[:, i] >= th).float().mean()), 4),
        }
    mean = lambda key: round(100 * sum(r[key] for r in rows.values()) / len(rows), 1)
    views = {}
    for view in bench.views():  # the same bounds on the request phrasings and with pressure sentences
        crr, ar = [], []
        for i, request in enumerate(requests):
            forget, retain = (relevance(split) for split in bench.test_view(request, view))
            crr.append(float(((forget.argmax(1) == i) & (forget[:, i] >= th)).float().mean()))
            ar.append(float((retain.max(1).values < th).float().mean()))
        util = relevance(bench.utility_view(view))
        views[view] = {"crr_bound": round(100 * sum(crr) / len(crr), 1), "ar_bound": round(100 * sum(ar) / len(ar), 1),
                       "s_bound": round(100 * float((util.max(1).values < th).float().mean()), 1)}
    print(json.dumps({
        "overrides": overrides,
        "sequence": "validation + probe requests" if probe else "validation",
        "crr_bound": mean("forget_routed_to_own"),
        "ar_bound": mean("retain_ungated"),
        "s_bound": round(100 * float((utility.max(1).values < th).float().mean()), 1),
        "views": views,
        "apply_seconds_total": round(seconds, 1),
        "per_request": rows,
        "errors": dict(errors.most_common()),
    }, indent=1))


if __name__ == "__main__":
    main()
