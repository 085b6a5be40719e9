"""The continual runner: apply request t, evaluate everything, record, repeat.

After each request the runner evaluates the forget test pairs of every request seen
so far, the retain test pairs of every request in the sequence, and the utility split
(general pairs no request targets). On benchmark v2 these are in evaluation phrasings
(the headline numbers), and the same pairs are evaluated again in every extra view
(request phrasings; pressure sentences), recorded under each step's `views` and
`summary.views`. It saves the method's state after every step and
rewrites `results.json` atomically, so an interrupted run resumes where it stopped
and never applies a request twice.

Under `accelerate launch` every process runs this same loop: each trains on its slice
of every batch (`methods/training.py`), evaluation answers are split by whole chunks
and gathered (so they are the answers one process gives), and only the main process
writes files (states, results.json, examples).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from vlforget import __version__
from vlforget.configs import to_dict
from vlforget.evaluation.metrics import exact_match, step_metrics, summarize
from vlforget.methods.base import Method, make_method
from vlforget.methods.training import is_main_process, map_sharded, num_processes, wait_for_everyone
from vlforget.types import Sample

RESULTS_FILE = "results.json"
SCHEMA = "vlforget.results/1"
Progress = Callable[[str, dict[str, Any]], None]


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processes": num_processes(),
    }


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux: the process-wide peak resident memory so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def respond(method: Method, samples: list[Sample]) -> list[str]:
    if not samples:
        return []
    return map_sharded(lambda part: method.generate([s.image for s in part], [s.instruction for s in part]), samples)


def state_dir(out_dir: Path, step: int) -> Path:
    return out_dir / "states" / f"step-{step:02d}"


class ContinualRun:
    """One method over one request sequence, writing to `out_dir`.

    `benchmark` is the built-in `Benchmark` or anything with `requests()`,
    `utility_split()`, `version` and `config` (e.g. `data.loaders.sequence.LoadedSequence`).
    """

    def __init__(self, method_name: str, benchmark, out_dir: str | Path, backbone_loader,
                 method_overrides: dict | None = None, judge=None, limit: int | None = None,
                 progress: Progress | None = None, with_views: bool = True):
        self.out_dir = Path(out_dir)
        self.benchmark = benchmark
        self.requests = benchmark.requests()[: limit or None]
        if not self.requests:
            raise ValueError("the request sequence is empty")
        self.method_name = method_name
        self.method = make_method(method_name, backbone_loader(), method_overrides)
        self.judge = judge
        self.progress = progress or (lambda event, info: None)
        self.contexts = {r.name: r.refusals + [r.description] for r in self.requests}
        self.with_views = with_views  # False: headline only (tuning reads nothing else)

    # -- results file ----------------------------------------------------------------------
    def _fresh_results(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "vlforget_version": __version__,
            "benchmark_version": self.benchmark.version,
            "benchmark_config": self.benchmark.config if isinstance(self.benchmark.config, dict)
            else asdict(self.benchmark.config),
            "method": self.method_name,
            "refuses": self.method.refuses,  # False: CRR/dRR are not meaningful (tables show n/a)
            "config": to_dict(self.method.config),
            "seed": self.method.config.seed,
            "machine": machine_info(),
            "judge": self.judge.config() if hasattr(self.judge, "config") else type(self.judge).__name__,
            "requests": [{"id": r.id, "name": r.name, "description": r.description, "scope": r.scope,
                          "concepts": _concept_summary(r)} for r in self.requests],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "base": None,
            "steps": [],
            "summary": None,
        }

    def _load_or_start(self) -> dict[str, Any]:
        path = self.out_dir / RESULTS_FILE
        if not path.exists():
            return self._fresh_results()
        results = json.loads(path.read_text())
        fresh = self._fresh_results()
        for key in ("method", "config", "benchmark_version", "benchmark_config", "requests"):
            if results.get(key) != fresh[key]:
                raise ValueError(f"{path} belongs to a different run ({key} differs); use another --out folder")
        if results["steps"]:
            last = state_dir(self.out_dir, len(results["steps"]))
            self.method.load(last)
            expected = [r.name for r in self.requests[: len(results["steps"])]]
            if self.method.applied != expected:
                raise ValueError(f"saved state in {last} applied {self.method.applied}, expected {expected}")
        return results

    # -- evaluation ----------------------------------------------------------------------------
    def views(self) -> list[str]:
        """The benchmark's extra views of the test pairs (v2: request phrasings, pressure)."""
        return self.benchmark.views() if self.with_views and hasattr(self.benchmark, "views") else []

    def _split(self, request, view: str | None) -> tuple[list[Sample], list[Sample]]:
        if view is None:
            return request.forget_test, request.retain_test
        return self.benchmark.test_view(request, view)

    def _utility(self, view: str | None) -> list[Sample]:
        return self.benchmark.utility_split() if view is None else self.benchmark.utility_view(view)

    def evaluate(self, step: int, utility_base: float, view: str | None = None) -> dict[str, Any]:
        """Metrics after `step` on the headline test pairs (`view` None) or on one extra view."""
        seen = self.requests[:step]
        forget = {}
        for r in seen:
            pairs = self._split(r, view)[0]
            responses = respond(self.method, pairs)
            forget[r.name] = [(resp, s.meta.get("original_answer", "")) for resp, s in zip(responses, pairs)]
        retain = {}
        for r in self.requests:
            pairs = self._split(r, view)[1]
            responses = respond(self.method, pairs)
            retain[r.name] = [(resp, s.answer) for resp, s in zip(responses, pairs)]
        utility = self._utility(view)
        utility_acc = exact_match(respond(self.method, utility), [s.answer for s in utility])
        metrics = step_metrics(forget, retain, utility_acc, utility_base, self.judge, self.contexts)
        if not utility:
            metrics["s"] = None  # no general held-out data: utility is not measured
        return metrics

    def evaluate_views(self, step: int, base: dict[str, Any]) -> dict[str, Any]:
        """The headline metrics of every extra view (per-request breakdowns left out: size)."""
        out = {}
        for view in self.views():
            metrics = self.evaluate(step, base["views"][view]["utility_accuracy"], view)
            out[view] = {k: v for k, v in metrics.items() if k != "per_request"}
        return out

    @staticmethod
    def _summary(results: dict[str, Any]) -> dict[str, Any]:
        summary = summarize(results["steps"])
        summary["unlearn_seconds"] = [s["unlearn_seconds"] for s in results["steps"]]
        views = sorted({v for s in results["steps"] for v in s.get("views", {})})
        if views:
            summary["views"] = {v: summarize([s["views"][v] for s in results["steps"]]) for v in views}
        return summary

    def _example_samples(self) -> list[tuple[str, str, Sample]]:
        """One forget and one hard-negative retain pair per request, for the report."""
        picked = []
        for r in self.requests:
            picked.append((r.name, "forget", r.forget_test[0]))
            picked.append((r.name, "retain", r.retain_test[0]))
        return picked

    def _record_examples_before(self, results: dict[str, Any]) -> None:
        picked = self._example_samples()
        answers = respond(self.method, [s for _, _, s in picked])
        folder = self.out_dir / "examples"
        main = is_main_process()
        if main:
            folder.mkdir(exist_ok=True)
        results["examples"] = []
        for i, ((name, split, sample), answer) in enumerate(zip(picked, answers)):
            image = f"examples/{i:02d}-{split}.png"
            if main:
                sample.image.save(self.out_dir / image)
            results["examples"].append({"request": name, "split": split, "image": image,
                                        "instruction": sample.instruction, "reference": sample.answer,
                                        "before": answer, "after": None})

    def _record_examples_after(self, results: dict[str, Any]) -> None:
        picked = self._example_samples()
        answers = respond(self.method, [s for _, _, s in picked])
        for example, answer in zip(results.get("examples", []), answers):
            example["after"] = answer

    def _write(self, results: dict[str, Any]) -> None:
        """Main process only; the others wait, so no process reads a half-written run."""
        if is_main_process():
            write_json_atomic(self.out_dir / RESULTS_FILE, results)
        wait_for_everyone()

    def run(self) -> dict[str, Any]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        results = self._load_or_start()
        wait_for_everyone()  # every process has read the old results before any writes
        if results["base"] is None:
            utility = self.benchmark.utility_split()
            responses = respond(self.method, utility) if not self.method.applied else None
            if responses is None:
                raise ValueError("cannot measure the base model: the state already has requests applied")
            results["base"] = {"utility_accuracy": exact_match(responses, [s.answer for s in utility]),
                               "utility_size": len(utility)}
            if self.views():  # the base model's utility in every view: S of each view is relative to it
                results["base"]["views"] = {}
                for view in self.views():
                    pairs = self._utility(view)
                    results["base"]["views"][view] = {
                        "utility_accuracy": exact_match(respond(self.method, pairs), [s.answer for s in pairs])}
            self._record_examples_before(results)
            self._write(results)
        base_acc = results["base"]["utility_accuracy"]
        done = len(results["steps"])
        self.progress("start", {"total": len(self.requests), "done": done})
        for t in range(done + 1, len(self.requests) + 1):
            request = self.requests[t - 1]
            self.progress("unlearn", {"step": t, "request": request.name})
            began = time.perf_counter()
            self.method.unlearn(request)
            seconds = time.perf_counter() - began
            if is_main_process():
                self.method.save(state_dir(self.out_dir, t))
            self.progress("evaluate", {"step": t, "request": request.name})
            began_eval = time.perf_counter()
            metrics = self.evaluate(t, base_acc)
            if self.views():
                metrics["views"] = self.evaluate_views(t, results["base"])
            record = {
                "step": t,
                "request": request.name,
                "unlearn_seconds": round(seconds, 3),
                "eval_seconds": round(time.perf_counter() - began_eval, 3),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                **metrics,
            }
            results["steps"].append(record)
            results["summary"] = self._summary(results)
            self._write(results)
            self.progress("step", record)
        results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        results["summary"] = self._summary(results)
        results["extras"] = self.method.report_extras()
        self._record_examples_after(results)
        self._write(results)
        return results


def _concept_summary(request, n: int = 3) -> dict | None:
    """The first few visual and textual concept descriptions, for `vlforget inspect` and reports."""
    if request.concepts is None:
        return None
    return {"visual": request.concepts.visual[:n], "textual": request.concepts.textual[:n],
            "source": request.concepts.source}
