"""Generation latency of methods after their requests vs the base model, on unrelated queries (JSON out).

Inference-time methods (mllmeraser, sauce, eco) pay at every query: a gate probe,
an SAE encode, a classifier; CORE pays its gate; LoRA methods their adapters; methods
that merge their edit into the weights nothing. This measures that price where it
matters most, on queries no request targets (the utility split). The base model is a
separate copy (methods that edit weights in place would otherwise change it); base and
method runs alternate in one process; medians over `--repeats` runs.

    .venv/bin/python benchmarks/inference_latency.py --method eco --state RUN_DIR/states/step-16
    .venv/bin/python benchmarks/inference_latency.py --method sauce --requests 3   # a fresh short run
    .venv/bin/python benchmarks/inference_latency.py --method core,idknll,eco --runs runs/cmp --markdown

With `--runs DIR` each method's state is the last step saved under DIR/<method>/states.
Works for any registered method.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from vlforget.data.benchmark import Benchmark
from vlforget.methods import make_method
from vlforget.models.backbone import Backbone


def last_state(run_dir: Path) -> Path:
    steps = sorted((run_dir / "states").glob("step-*"))
    if not steps:
        raise SystemExit(f"no saved states under {run_dir / 'states'}")
    return steps[-1]


def measure(name: str, state: Path | None, n_requests: int, repeats: int, n_queries: int) -> dict:
    bench = Benchmark()
    base = Backbone.load()
    method = make_method(name, Backbone.load())
    began = time.perf_counter()
    if state:
        method.load(state)
    else:
        for request in bench.requests()[:n_requests]:
            method.unlearn(request)
    setup = time.perf_counter() - began
    queries = bench.utility_split()[:n_queries]
    images, instructions = [s.image for s in queries], [s.instruction for s in queries]

    base_out = base.generate(images, instructions)  # warm-up, and the reference answers
    method_out = method.generate(images, instructions)
    base_t, method_t = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        base.generate(images, instructions)
        base_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        method.generate(images, instructions)
        method_t.append(time.perf_counter() - t0)
    base_med, method_med = statistics.median(base_t), statistics.median(method_t)
    return {
        "method": name,
        "requests_applied": len(method.applied),
        "queries": len(queries),
        "repeats": repeats,
        "base_seconds_median": round(base_med, 4),
        "method_seconds_median": round(method_med, 4),
        "ratio": round(method_med / base_med, 4),
        "identical_outputs": sum(a == b for a, b in zip(base_out, method_out)),
        "setup_seconds": round(setup, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", required=True, help="registered method name(s), comma-separated")
    parser.add_argument("--state", default=None, help="saved state folder (one method)")
    parser.add_argument("--runs", default=None, help="compare folder: use DIR/<method>'s last saved state")
    parser.add_argument("--requests", type=int, default=3, help="requests applied when no state is given")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=300, help="unrelated queries per run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for name in [m.strip() for m in args.method.split(",") if m.strip()]:
        state = last_state(Path(args.runs) / name) if args.runs else (Path(args.state) if args.state else None)
        rows.append({**measure(name, state, args.requests, args.repeats, args.n), "threads": args.threads})
    print(json.dumps(rows[0] if len(rows) == 1 else rows, indent=1))
    if args.markdown:
        print("\n| method | requests applied | latency vs base (median ratio) | unchanged answers |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['method']} | {r['requests_applied']} | {r['ratio']:.2f}x | "
                  f"{r['identical_outputs']}/{r['queries']} |")


if __name__ == "__main__":
    main()
