"""Run by tests/test_accelerate.py (directly, or under `accelerate launch`): a few short
training steps of each named method on 2 small requests; each process saves its state."""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import save_file

from vlforget.data.benchmark import Benchmark, BenchmarkConfig
from vlforget.methods import make_method
from vlforget.methods.training import get_accelerator
from vlforget.models.backbone import Backbone

# General pairs for the methods that fit on them (the built-in benchmark's pool).
GENERAL_POOL = Benchmark().general_pool

SHORT = {"idknll": {"steps": 6}, "ga": {"steps": 4}, "graddiff": {"steps": 4}, "kl": {"steps": 4},
         "npo": {"steps": 4}, "ewc": {"steps": 4, "fisher_batches": 2}, "lwf": {"steps": 4},
         "smfa": {"steps": 3}, "siu": {"steps": 3}, "scrub": {"steps": 6, "max_phase": 4},
         "core": {"steps": 8, "lr": 0.03}, "gmm": {"steps": 4}, "eproj": {"steps": 4},
         "moe_adapters": {"steps": 4}, "o3": {"steps": 4}, "mmunlearner": {"steps": 4, "fisher_batches": 2},
         "cvf_nullspace": {"steps": 6}}
# Methods with nothing to split over processes: their fits (probe, SAE, classifier and
# strength search) are computed identically on every process (README, "Several processes").
UNSPLIT = {"mllmeraser": "probe fit on every process", "sauce": "SAE fit on every process",
           "eco": "classifier and strength search on every process", "none": "nothing is trained"}


def requests():
    bench = Benchmark(BenchmarkConfig(seed=3, n_forget_train=16, n_forget_test=8, n_retain_train=16,
                                      n_retain_test=8, n_utility=20))
    return [r for r in bench.requests() if r.name in ("star-identity", "red-count")]


if __name__ == "__main__":
    out, names = Path(sys.argv[1]), sys.argv[2].split(",")
    rank = get_accelerator().process_index
    reqs = requests()
    for name in names:
        method = make_method(name, Backbone.load(), SHORT[name], general=GENERAL_POOL)
        for request in reqs:
            method.unlearn(request)
        tensors = {k: v.detach().contiguous().clone() for k, v in method.state_tensors().items()}
        save_file(tensors, str(out / f"{name}-p{get_accelerator().num_processes}-rank{rank}.safetensors"))
