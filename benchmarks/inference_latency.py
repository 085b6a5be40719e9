"""Generation latency of methods after their requests vs the base model, on unrelated queries (JSON out).

Inference-time methods (mllmeraser, sauce, eco) pay at every query: a gate probe,
an SAE encode, a classifier; CORE pays its gate; LoRA methods their adapters; methods
that merge their edit into the weights nothing. This measures that price where it
matters most, on queries no request targets (the utility split). The base model is a
separate copy (methods that edit weights in place would otherwise change it); base and
method runs alternate in one process; medians over `--repeats` runs.

Two ratios: `ratio` is wall time (what a user waits), which also moves when a method
changes how long its answers are (a refusal is ~10 tokens, most answers 1-3; in a batch
the longest answer sets the number of decode steps); `ratio_equal_length` times both
sides generating exactly `--fixed-tokens` tokens per query (end-of-sequence suppressed),
so it isolates the method's compute overhead at equal work.

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


def answer_tokens(backbone: Backbone, answers: list[str]) -> int:
    """Decode steps the answers took: their tokens plus the end-of-sequence token."""
    return sum(len(ids) + 1 for ids in backbone.encode_text(answers))


def timed(generate, images, instructions, **kwargs) -> float:
    began = time.perf_counter()
    generate(images, instructions, **kwargs)
    return time.perf_counter() - began


def measure(name: str, state: Path | None, n_requests: int, repeats: int, n_queries: int,
            batch_size: int = 64, fixed_tokens: int = 8) -> dict:
    bench = Benchmark()
    base = Backbone.load()
    method = make_method(name, Backbone.load(), general=bench.general_pool)
    began = time.perf_counter()
    if state:
        method.load(state)
    else:
        for request in bench.requests()[:n_requests]:
            method.unlearn(request)
    setup = time.perf_counter() - began
    queries = bench.utility_split()[:n_queries]
    images, instructions = [s.image for s in queries], [s.instruction for s in queries]

    base_out = base.generate(images, instructions, batch_size=batch_size)  # warm-up, reference answers
    method_out = method.generate(images, instructions, batch_size=batch_size)
    fixed = {"batch_size": batch_size, "min_new_tokens": fixed_tokens, "max_new_tokens": fixed_tokens}
    base_t, method_t, base_fixed_t, method_fixed_t = [], [], [], []
    for _ in range(repeats):  # alternate base and method so machine noise hits both alike
        base_t.append(timed(base.generate, images, instructions, batch_size=batch_size))
        method_t.append(timed(method.generate, images, instructions, batch_size=batch_size))
        base_fixed_t.append(timed(base.generate, images, instructions, **fixed))
        method_fixed_t.append(timed(method.generate, images, instructions, **fixed))
    base_med, method_med = statistics.median(base_t), statistics.median(method_t)
    base_tokens, method_tokens = answer_tokens(base, base_out), answer_tokens(base, method_out)
    return {
        "method": name,
        "requests_applied": len(method.applied),
        "queries": len(queries),
        "repeats": repeats,
        "base_seconds_median": round(base_med, 4),
        "method_seconds_median": round(method_med, 4),
        "ratio": round(method_med / base_med, 4),
        "base_answer_tokens": base_tokens,
        "method_answer_tokens": method_tokens,
        "fixed_tokens": fixed_tokens,
        "ratio_equal_length": round(statistics.median(method_fixed_t) / statistics.median(base_fixed_t), 4),
        "batch_size": batch_size,
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
    parser.add_argument("--batch-size", type=int, default=64, help="generation batch size")
    parser.add_argument("--fixed-tokens", type=int, default=8, help="answer length of the equal-length timing")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for name in [m.strip() for m in args.method.split(",") if m.strip()]:
        state = last_state(Path(args.runs) / name) if args.runs else (Path(args.state) if args.state else None)
        rows.append({**measure(name, state, args.requests, args.repeats, args.n, args.batch_size,
                                 args.fixed_tokens),
                     "threads": args.threads})
    print(json.dumps(rows[0] if len(rows) == 1 else rows, indent=1))
    if args.markdown:
        print("\n| method | requests applied | wall time vs base | answer tokens vs base | equal-length time vs base "
              "| unchanged answers |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['method']} | {r['requests_applied']} | {r['ratio']:.2f}x | "
                  f"{r['method_answer_tokens'] / r['base_answer_tokens']:.2f}x | {r['ratio_equal_length']:.2f}x | "
                  f"{r['identical_outputs']}/{r['queries']} |")


if __name__ == "__main__":
    main()
