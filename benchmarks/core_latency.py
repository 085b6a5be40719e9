"""Generation latency of CORE with every request applied vs the base model (JSON out).

Unrelated queries (the utility split: general pairs no request targets) should run the
original connector untouched, so CORE's cost is the gate: a few small matmuls inside
the connector hook plus a cached instruction-embedding lookup. Reported twice: on all
utility queries (falsely gated ones included) and on the ones the gate leaves alone;
and both again "cold", with CORE's per-string instruction cache emptied before each
run, so every instruction is read anew (what a stream of new questions costs). Base and CORE runs are
interleaved in one process; medians over `--repeats` runs.

    .venv/bin/python benchmarks/core_latency.py [--state OUT/states/step-16] [--repeats 7]

Without `--state` the 16 built-in requests are applied first (default config).
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
    parser.add_argument("--state", default=None, help="saved CORE state folder (default: apply all requests now)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--n", type=int, default=300, help="utility queries per run")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    bench = Benchmark()
    backbone = Backbone.load()
    core = make_method("core", backbone, general=bench.general_pool)
    began = time.perf_counter()
    if args.state:
        core.load(args.state)
    else:
        for request in bench.requests():
            core.unlearn(request)
    setup = time.perf_counter() - began
    queries = bench.utility_split()[: args.n]
    images, instructions = [s.image for s in queries], [s.instruction for s in queries]

    base_out = backbone.generate(images, instructions)  # warm-up, and the reference answers
    core_out = core.generate(images, instructions)
    with torch.no_grad():
        relevance = core.relevance(core.visual_embeddings(images), core.instruction_features(instructions))
    ungated = (core.gates(relevance) == 0).nonzero().squeeze(1).tolist()
    quiet = [images[i] for i in ungated], [instructions[i] for i in ungated]

    def timed(fn, *inputs) -> float:
        t0 = time.perf_counter()
        fn(*inputs)
        return time.perf_counter() - t0

    def cold(*inputs) -> None:
        core.clear_instruction_cache()  # every instruction new to CORE, as in a stream of new questions
        core.generate(*inputs)

    base_t, core_t, base_q, core_q, cold_t, cold_q = [], [], [], [], [], []
    for _ in range(args.repeats):  # interleaved, so machine noise hits both sides alike
        base_t.append(timed(backbone.generate, images, instructions))
        core_t.append(timed(core.generate, images, instructions))
        cold_t.append(timed(cold, images, instructions))
        base_q.append(timed(backbone.generate, *quiet))
        core_q.append(timed(core.generate, *quiet))
        cold_q.append(timed(cold, *quiet))
    base_med, core_med = statistics.median(base_t), statistics.median(core_t)
    print(json.dumps({
        "requests_applied": len(core.applied),
        "queries": len(queries),
        "repeats": args.repeats,
        "threads": args.threads,
        "base_seconds_median": round(base_med, 4),
        "core_seconds_median": round(core_med, 4),
        # All utility queries: a falsely gated query answers with a refusal, several
        # times longer than the short answers, and its whole generation batch waits for it.
        "ratio": round(core_med / base_med, 4),
        # Only the queries the gate leaves alone: what the gate itself costs.
        "ungated_queries": len(ungated),
        "ratio_ungated": round(statistics.median(core_q) / statistics.median(base_q), 4),
        # The same with CORE's per-string instruction cache emptied before every run: each
        # instruction is read anew (the answer-state forward, or the text encoder).
        "ratio_cold": round(statistics.median(cold_t) / base_med, 4),
        "ratio_ungated_cold": round(statistics.median(cold_q) / statistics.median(base_q), 4),
        "identical_outputs": sum(a == b for a, b in zip(base_out, core_out)),
        "refuser_parameters": core.pool.parameter_count(),
        "setup_seconds": round(setup, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
