"""What an attack runs on: a saved run's method at one step, its requests, and the data subsample.

`load_target` rebuilds the run's method (`load_run_state`) and its request sequence
(the built-in benchmark from the recorded `benchmark_config`, or a loaded benchmark
from `--dataset/--data`), and checks that the sequence is the one the run applied.
Attacks see only the requests applied up to the step and a seeded subsample of their
pairs (`AttackConfig.pairs_per_request`), so a robustness row costs minutes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from vlforget.configs import option
from vlforget.evaluation.judge import make_judge
from vlforget.evaluation.metrics import exact_match, pct, step_metrics
from vlforget.evaluation.run_state import load_run_state
from vlforget.types import DeletionRequest, Sample


@dataclass
class AttackConfig:
    """Settings of `vlforget attack` (override any of them with --config FILE)."""

    pairs_per_request: int = option(12, "forget (and forget-train) pairs per applied request that every attack "
                                    "evaluates; a seeded subsample, 0 = all")
    retain_pairs_per_request: int = option(8, "retain test pairs per request of the sequence (quantisation's AR)")
    utility_pairs: int = option(60, "utility pairs (quantisation's S); 0 = skip S")
    seed: int = option(0, "seed of the subsamples and of the random perturbations")
    judge: str = option("minilm", "refusal judge for CRR: minilm or lexical")
    pgd_steps: int = option(10, "PGD: signed-gradient steps on the pixels")
    pgd_epsilon: float = option(8 / 255, "PGD: L-infinity radius in [0, 1] pixel units")
    pgd_step_size: float = option(2 / 255, "PGD: step size in [0, 1] pixel units")
    relearn_steps: list = option([5, 20, 50], "relearning: fine-tuning steps after which leak and CRR are measured")
    relearn_fraction: float = option(0.25, "relearning: share of each request's forget-train pairs fine-tuned on")
    relearn_lr: float = option(3e-4, "relearning: AdamW learning rate on the language model's weights")
    relearn_batch_size: int = option(8, "relearning: pairs per fine-tuning step")
    mia_min_k: float = option(0.2, "membership inference: Min-K% takes the mean of this share of lowest token log-probs")

    def __post_init__(self) -> None:
        if self.pairs_per_request < 0 or self.retain_pairs_per_request < 0 or self.utility_pairs < 0:
            raise ValueError("pairs_per_request, retain_pairs_per_request and utility_pairs must be >= 0")
        if self.pgd_steps < 1 or self.pgd_epsilon <= 0 or self.pgd_step_size <= 0:
            raise ValueError("pgd_steps >= 1, pgd_epsilon > 0 and pgd_step_size > 0 are required")
        if not self.relearn_steps or any(int(k) < 1 for k in self.relearn_steps):
            raise ValueError("relearn_steps must be a non-empty list of positive step counts")
        self.relearn_steps = sorted(int(k) for k in self.relearn_steps)
        if not 0 < self.relearn_fraction <= 1 or self.relearn_lr <= 0 or self.relearn_batch_size < 1:
            raise ValueError("0 < relearn_fraction <= 1, relearn_lr > 0 and relearn_batch_size >= 1 are required")
        if not 0 < self.mia_min_k <= 1:
            raise ValueError("mia_min_k must be in (0, 1]")


class BaseModel:
    """The unmodified backbone behind the method interface (no hooks, no state)."""

    name = "base"

    def __init__(self, backbone):
        self.backbone = backbone

    def generate(self, images, instructions, **kwargs):
        return self.backbone.generate(images, instructions, **kwargs)


def subsample(samples: list[Sample], n: int, seed: str) -> list[Sample]:
    """A seeded subsample of n samples, in their original order (n = 0: all)."""
    if not n or n >= len(samples):
        return list(samples)
    keep = sorted(random.Random(seed).sample(range(len(samples)), n))
    return [samples[i] for i in keep]


@dataclass
class AttackTarget:
    run_dir: Path
    step: int
    method: Any
    results: dict
    requests: list[DeletionRequest]  # the whole sequence of the run
    config: AttackConfig
    model: str | None = None
    placement: tuple = ("cpu", None)
    _base: Any = field(default=None, repr=False)  # the original model, loaded on first use
    _utility: list = field(default_factory=list, repr=False)  # the sequence's utility split
    sequence: Any = field(default=None, repr=False)  # the benchmark the requests come from (its views)

    @property
    def applied(self) -> list[DeletionRequest]:
        return self.requests[: self.step]

    @cached_property
    def judge(self):
        return make_judge(self.config.judge)

    @cached_property
    def contexts(self) -> dict[str, list[str]]:
        return {r.name: r.refusals + [r.description] for r in self.requests}

    def views(self) -> list[str]:
        """The benchmark's extra views of the test pairs (v2: request phrasings, pressure)."""
        return self.sequence.views() if hasattr(self.sequence, "views") else []

    def forget_test(self, view: str | None = None) -> dict[str, list[Sample]]:
        """Per applied request: the subsampled forget test pairs every attack evaluates; with
        `view`, the same pairs (same seed, same images and answers) asked as in that view."""
        def pairs(r):
            return r.forget_test if view is None else self.sequence.test_view(r, view)[0]

        return {r.name: subsample(pairs(r), self.config.pairs_per_request, f"{self.config.seed}-ft-{r.name}")
                for r in self.applied}

    def forget_train(self) -> dict[str, list[Sample]]:
        return {r.name: subsample(r.forget_train, self.config.pairs_per_request, f"{self.config.seed}-fr-{r.name}")
                for r in self.applied}

    def retain_test(self) -> dict[str, list[Sample]]:
        return {r.name: subsample(r.retain_test, self.config.retain_pairs_per_request, f"{self.config.seed}-rt-{r.name}")
                for r in self.requests}

    def base(self) -> BaseModel:
        """The original model, on its own freshly loaded backbone (methods may have edited the shared one)."""
        if self._base is None:
            from vlforget.models.backbone import Backbone

            self._base = BaseModel(Backbone.load(self.model, *self.placement))
        return self._base

    # -- measuring ----------------------------------------------------------------------------
    def forget_metrics(self, model, pairs: dict[str, list[Sample]] | None = None) -> dict[str, Any]:
        """CRR, refusal rate and leak of `model` on forget pairs (default: the forget test subsample).
        Pairs carry the original answer in meta['original_answer'] (leak looks for it)."""
        pairs = self.forget_test() if pairs is None else pairs
        flat = [s for samples in pairs.values() for s in samples]
        answers = iter(model.generate([s.image for s in flat], [s.instruction for s in flat]))
        forget = {name: [(next(answers), s.meta.get("original_answer", "")) for s in samples]
                  for name, samples in pairs.items()}
        metrics = step_metrics(forget, {}, 0.0, 0.0, self.judge, self.contexts)
        return forget_summary(metrics)

    def retain_metrics(self, model) -> dict[str, Any]:
        """AR and over-refusal of `model` on the retain test subsample."""
        pairs = self.retain_test()
        flat = [s for samples in pairs.values() for s in samples]
        answers = model.generate([s.image for s in flat], [s.instruction for s in flat])
        refused = self.judge.is_refusal(answers)
        answered = sum(not f and exact_match([a], [s.answer]) == 100.0 for f, a, s in zip(refused, answers, flat))
        return {"ar": pct(answered, len(flat)), "overrefusal": pct(sum(refused), len(flat)), "n_retain": len(flat)}

    def utility_accuracy(self, model) -> float | None:
        utility = self.benchmark_utility()
        if not utility:
            return None
        return exact_match(model.generate([s.image for s in utility], [s.instruction for s in utility]),
                           [s.answer for s in utility])

    def benchmark_utility(self) -> list[Sample]:
        if not self.config.utility_pairs:
            return []
        return subsample(self._utility, self.config.utility_pairs, f"{self.config.seed}-utility")


def forget_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The forget-side numbers of `step_metrics`, with a compact per-request breakdown."""
    return {"crr": metrics["crr"], "rr_forget": metrics["rr_forget"], "leak": metrics["leak"],
            "n_forget": metrics["n_forget"],
            "per_request": {name: {k: e.get(k) for k in ("crr", "leak", "n_forget")}
                            for name, e in metrics["per_request"].items()}}


def sequence_of(results: dict, dataset: str | None, data: Path | None):
    """The request sequence a run applied: rebuilt from its recorded benchmark config, or loaded."""
    # A run with --utility records its general-benchmark file under "utility" (its name only):
    # attacks measure S on the sequence's own utility split instead.
    recorded = {k: v for k, v in (results.get("benchmark_config") or {}).items() if k != "utility"}
    if dataset or data or "format" in recorded:
        if not (dataset or recorded.get("format")) or not data:
            raise ValueError(f"this run used the loaded benchmark {recorded.get('format')!r} "
                             f"({recorded.get('dataset')}); pass --dataset FORMAT --data PATH to attack it")
        from vlforget.data.loaders.sequence import LoadedSequence

        return LoadedSequence(dataset or recorded["format"], data, recorded.get("options"))
    from vlforget.data.benchmark import Benchmark, BenchmarkConfig

    return Benchmark(BenchmarkConfig(**recorded))


def load_target(run_dir: Path, step: int | None, config: AttackConfig, model: str | None = None,
                dataset: str | None = None, data: Path | None = None,
                placement: tuple = ("cpu", None)) -> AttackTarget:
    """The run's method at `step` (default: the last), with the run's request sequence."""
    method, results = load_run_state(run_dir, step, model, placement=placement)
    model = model or (results.get("backbone") or {}).get("source")  # the original model is the run's backbone
    step = len(results["steps"]) if step is None else step
    if step < 1:
        raise ValueError(f"step {step}: attacks need at least one applied request (steps 1..{len(results['steps'])})")
    sequence = sequence_of(results, dataset, data)
    requests = sequence.requests()[: len(results["requests"])]
    names, recorded = [r.name for r in requests], [r["name"] for r in results["requests"]]
    if names != recorded:
        raise ValueError(f"the rebuilt request sequence {names} is not the run's {recorded}")
    target = AttackTarget(run_dir, step, method, results, requests, config, model, placement, sequence=sequence)
    target._utility = list(sequence.utility_split()) if config.utility_pairs else []
    return target
