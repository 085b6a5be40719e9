"""Generation latency of a method after N requests vs the base model, on unrelated queries (JSON out).

Inference-time methods (mllmeraser, sauce, eco) pay at every query: a gate probe,
an SAE encode, a classifier. This measures that price where it matters most, on
queries no request targets (the utility split). Base and method runs alternate in one
process; medians over `--repeats` runs.

    .venv/bin/python benchmarks/inference_latency.py --method eco --state RUN_DIR/states/step-16
    .venv/bin/python benchmarks/inference_latency.py --method sauce --requests 3   # a fresh short run

Works for any registered method.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from vlforget.data.benchmark import Benchmark
from vlforget.methods import make_method
from vlforget.models.backbone import Backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", required=True, help="registered method name")
    parser.add_argument("--state", default=None, help="saved state folder (default: apply --requests requests now)")
    parser.add_argument("--requests", type=int, default=3, help="requests applied when no --state is given")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=300, help="unrelated queries per run")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    bench = Benchmark()
    backbone = Backbone.load()
    method = make_method(args.method, backbone)
    began = time.perf_counter()
    if args.state:
        method.load(args.state)
    else:
        for request in bench.requests()[: args.requests]:
            method.unlearn(request)
    setup = time.perf_counter() - began
    queries = bench.utility_split()[: args.n]
    images, instructions = [s.image for s in queries], [s.instruction for s in queries]

    base_out = backbone.generate(images, instructions)  # warm-up, and the reference answers
    method_out = method.generate(images, instructions)
    base_t, method_t = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        backbone.generate(images, instructions)
        base_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        method.generate(images, instructions)
        method_t.append(time.perf_counter() - t0)
    base_med, method_med = statistics.median(base_t), statistics.median(method_t)
    print(json.dumps({
        "method": args.method,
        "requests_applied": len(method.applied),
        "queries": len(queries),
        "repeats": args.repeats,
        "threads": args.threads,
        "base_seconds_median": round(base_med, 4),
        "method_seconds_median": round(method_med, 4),
        "ratio": round(method_med / base_med, 4),
        "identical_outputs": sum(a == b for a, b in zip(base_out, method_out)),
        "setup_seconds": round(setup, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
