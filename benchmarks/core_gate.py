"""How well CORE's gate separates forget queries from everything else (no refusers trained).

Applies every request of the built-in sequence with `steps=0` (concept layer, modulator
and router only, seconds per request), then reads the modulator's relevance on each
request's forget/retain test pairs and on the utility split. Upper bounds of what the
refusers can reach: a forget pair counts when its own request has the highest relevance
and passes the threshold (CRR bound); a retain/utility pair when no request passes it
(AR / S bound). Prints JSON.

    python benchmarks/core_gate.py ['{"negative_weight": 3}']
"""

from __future__ import annotations

import json
import sys
import time

import torch

from vlforget.data.benchmark import Benchmark
from vlforget.methods import make_method
from vlforget.models.backbone import Backbone


def main() -> None:
    overrides = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    backbone = Backbone.load()
    core = make_method("core", backbone, {"steps": 0, "router_steps": 5, **overrides})
    bench = Benchmark()
    requests = bench.requests()
    began = time.perf_counter()
    for request in requests:
        core.unlearn(request)
    seconds = time.perf_counter() - began

    def relevance(samples):
        features = backbone.vision_features([s.image for s in samples])
        with torch.no_grad():
            return core.relevance(features, core.instruction_features([s.instruction for s in samples]))

    th = core.config.threshold
    utility = relevance(bench.utility_split())
    rows = {}
    for i, request in enumerate(requests):
        forget, retain = relevance(request.forget_test), relevance(request.retain_test)
        rows[request.name] = {
            "forget_own_gate": round(float((forget[:, i] >= th).float().mean()), 3),
            "forget_routed_to_own": round(float(((forget.argmax(1) == i) & (forget[:, i] >= th)).float().mean()), 3),
            "retain_ungated": round(float((retain.max(1).values < th).float().mean()), 3),
            "utility_false_gate": round(float((utility[:, i] >= th).float().mean()), 4),
        }
    mean = lambda key: round(100 * sum(r[key] for r in rows.values()) / len(rows), 1)
    print(json.dumps({
        "overrides": overrides,
        "crr_bound": mean("forget_routed_to_own"),
        "ar_bound": mean("retain_ungated"),
        "s_bound": round(100 * float((utility.max(1).values < th).float().mean()), 1),
        "apply_seconds_total": round(seconds, 1),
        "per_request": rows,
    }, indent=1))


if __name__ == "__main__":
    main()
