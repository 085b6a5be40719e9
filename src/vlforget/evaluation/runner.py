"""The continual runner: apply request t, evaluate everything, record, repeat.

After each request the runner evaluates the forget test pairs of every request seen
so far, the retain test pairs of every request in the sequence, and the utility split
(general pairs no request targets). On benchmark v2 these are in evaluation phrasings
(the headline numbers), and the same pairs are evaluated again in every extra view
(request phrasings; pressure sentences), recorded under each step's `views` and
`summary.views`. It saves the method's state after every step and
rewrites `results.json` atomically, so an interrupted run resumes where it stopped
and never applies a request twice; a resume under other method code (`Method.source_sha256`)
or another config is refused, so one folder never mixes two versions. A run holds a lock on its output folder
(`OUT/.lock`) while it works, so a second run on the same folder stops at once with
one clear line instead of training everything again beside the first.

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
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock, Timeout

from vlforget import __version__
from vlforget.configs import to_dict
from vlforget.evaluation.metrics import exact_match, step_metrics, summarize
from vlforget.evaluation.responses import (
    RESPONSES_FILE, append_rows, keep_steps, pair_rows, read_rows, score_rows, utility_accuracy,
)
from vlforget.methods.base import Method, make_method
from vlforget.methods.training import is_main_process, map_sharded, num_processes, wait_for_everyone
from vlforget.models.identity import backbone_record, check_same_backbone
from vlforget.types import Sample

RESULTS_FILE = "results.json"
LOCK_FILE = ".lock"
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
    """Write to a temporary file of this process in the same folder, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-{os.getpid()}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(data, indent=1))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def folder_lock(out_dir: Path):
    """Hold `out_dir/.lock` (an OS file lock, released when the process dies) or fail with one line."""
    if not is_main_process():  # under accelerate the main process holds it for all
        yield
        return
    lock = FileLock(str(out_dir / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ValueError(f"{out_dir} is in use by another vlforget run (lock {out_dir / LOCK_FILE}); "
                         "wait for it or use another --out folder") from None
    try:
        yield
    finally:
        lock.release()


def prepare_out_dir(out_dir: Path) -> None:
    """Create `out_dir` (a folder we can write), or one clear ValueError saying why not."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"--out {out_dir}: a part of this path is a file, not a folder") from None
    except OSError as error:
        raise ValueError(f"cannot create the output folder {out_dir}: {error.strerror}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise ValueError(f"the output folder {out_dir} is not writable")


def read_results(path: Path) -> dict[str, Any]:
    """A run's results.json, or one ValueError when it is not a readable results file."""
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); the run folder is damaged") from None
    if not isinstance(results, dict) or not isinstance(results.get("steps"), list) \
            or not isinstance(results.get("requests"), list):
        raise ValueError(f"{path} is not a vlforget results file (no steps / requests lists)")
    return results


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
                 progress: Progress | None = None, with_views: bool = True, evaluate: str = "every"):
        self.out_dir = Path(out_dir)
        self.benchmark = benchmark
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"--limit must be a whole number >= 1, got {limit!r}")
        self.requests = benchmark.requests()[:limit]
        if not self.requests:
            raise ValueError("the request sequence is empty")
        self.method_name = method_name
        backbone = backbone_loader()
        self.backbone = backbone_record(backbone)
        # The benchmark in use supplies the general pairs a method may fit on (None: it has none).
        self.method = make_method(method_name, backbone, method_overrides,
                                  general=getattr(benchmark, "general_pool", None))
        self.judge = judge
        self.progress = progress or (lambda event, info: None)
        self.contexts = {r.name: r.refusals + [r.description] for r in self.requests}
        self.refusals = {r.name: list(r.refusals) for r in self.requests}  # what a clean refusal equals
        self.base_rows: list[dict[str, Any]] = []  # the zero-shot model's answers (step 0)
        self.with_views = with_views  # False: headline only (tuning reads nothing else)
        if evaluate not in ("every", "last"):
            raise ValueError(f"evaluate must be 'every' or 'last', got {evaluate!r}")
        # "last": only the state after the last request is evaluated (tuning's rule reads
        # nothing else, and evaluation is about half a run's time); averages are then undefined.
        self.evaluate_every_step = evaluate == "every"

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
            # what the method read while unlearning (forget/retain pairs, text, general pairs), as configured
            "reads": None if self.method.effective_reads() is None else list(self.method.effective_reads()),
            "config": to_dict(self.method.config),
            # the method's code (`Method.source_sha256`): a resume under changed code is refused
            "method_source_sha256": type(self.method).source_sha256(),
            "seed": self.method.config.seed,
            "machine": machine_info(),
            "backbone": self.backbone,
            "judge": self.judge.config() if hasattr(self.judge, "config") else type(self.judge).__name__,
            "requests": [{"id": r.id, "name": r.name, "description": r.description, "scope": r.scope,
                          "concepts": _concept_summary(r)} for r in self.requests],
            # what the judge chooses among (`vlforget rescore` needs them without the data)
            "contexts": self.contexts,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "base": None,
            "steps": [],
            "summary": None,
        }

    def _load_or_start(self) -> dict[str, Any]:
        path = self.out_dir / RESULTS_FILE
        if not path.exists():
            return self._fresh_results()
        results = read_results(path)
        fresh = self._fresh_results()
        for key in ("method", "config", "benchmark_version", "benchmark_config", "requests"):
            if results.get(key) != fresh[key]:
                raise ValueError(f"{path} belongs to a different run ({key} differs); use another --out folder")
        recorded = results.get("method_source_sha256")  # absent in runs written before it was recorded
        if recorded is not None and recorded != fresh["method_source_sha256"]:
            raise ValueError(f"{path} was written by other {self.method_name} code (source {recorded}, now "
                             f"{fresh['method_source_sha256']}); resuming would mix the two versions' steps and "
                             "numbers: use another --out folder, or delete this one to run again")
        check_same_backbone(results.get("backbone"), self.backbone, str(path))
        if results["steps"]:
            last = state_dir(self.out_dir, len(results["steps"]))
            self.method.load(last)  # verifies the tensors and the applied list against their checksums
            expected = [r.name for r in self.requests[: len(results["steps"])]]
            if self.method.applied != expected:
                raise ValueError(f"saved state in {last} applied {self.method.applied}, expected {expected}")
        return results

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, step: int, utility_base: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The step's headline metrics and its response rows (see `responses.py`)."""
        rows = []
        for r in self.requests[:step]:
            rows += pair_rows(step, r.name, "forget", r.forget_test, respond(self.method, r.forget_test))
        for r in self.requests:
            rows += pair_rows(step, r.name, "retain", r.retain_test, respond(self.method, r.retain_test))
        utility = self.benchmark.utility_split()
        rows += pair_rows(step, None, "utility", utility, respond(self.method, utility))
        return score_rows(rows, utility_base, self.judge, self.contexts, self.base_rows, refusals=self.refusals,
                          refuses=self.method.refuses), rows

    def views(self) -> list[str]:
        """The benchmark's extra views of the test pairs (v2: request phrasings, pressure)."""
        return self.benchmark.views() if self.with_views and hasattr(self.benchmark, "views") else []

    def evaluate_view(self, step: int, utility_base: float, view: str) -> dict[str, Any]:
        """Metrics after `step` on one extra view of the test pairs (responses not kept)."""
        forget = {}
        for r in self.requests[:step]:
            pairs = self.benchmark.test_view(r, view)[0]
            responses = respond(self.method, pairs)
            forget[r.name] = [(resp, s.meta.get("original_answer", "")) for resp, s in zip(responses, pairs)]
        retain = {}
        for r in self.requests:
            pairs = self.benchmark.test_view(r, view)[1]
            retain[r.name] = [(resp, s.answer) for resp, s in zip(respond(self.method, pairs), pairs)]
        utility = self.benchmark.utility_view(view)
        utility_acc = exact_match(respond(self.method, utility), [s.answer for s in utility])
        metrics = step_metrics(forget, retain, utility_acc, utility_base, self.judge, self.contexts,
                               refusals=self.refusals, refuses=self.method.refuses)
        if not utility:
            metrics["s"] = None  # no general held-out data: utility is not measured
        return metrics

    def evaluate_views(self, step: int, base: dict[str, Any]) -> dict[str, Any]:
        """The headline metrics of every extra view (per-request breakdowns left out: size)."""
        out = {}
        for view in self.views():
            metrics = self.evaluate_view(step, base["views"][view]["utility_accuracy"], view)
            out[view] = {k: v for k, v in metrics.items() if k != "per_request"}
        return out

    @staticmethod
    def _summary(results: dict[str, Any]) -> dict[str, Any]:
        summary = summarize(results["steps"])
        if any(not s.get("evaluated", True) for s in results["steps"]):
            # Only some steps were evaluated: a mean over them would pass for the average.
            summary = {k: (None if k.endswith("_avg") else v) for k, v in summary.items()}
        summary["unlearn_seconds"] = [s["unlearn_seconds"] for s in results["steps"]]
        views = sorted({v for s in results["steps"] for v in s.get("views", {})})
        if views:
            summary["views"] = {v: summarize([s["views"][v] for s in results["steps"]]) for v in views}
        return summary

    def _example_samples(self) -> list[tuple[str, str, Sample]]:
        """One forget and one hard-negative retain pair per request, for the report."""
        picked = []
        for r in self.requests:  # loaded data may lack either test split for a request
            picked += [(r.name, "forget", r.forget_test[0])] if r.forget_test else []
            picked += [(r.name, "retain", r.retain_test[0])] if r.retain_test else []
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

    def run(self, lock: bool = True) -> dict[str, Any]:
        """Apply every request not applied yet, evaluating after each. `lock=False` when the
        caller already holds `folder_lock(out_dir)` (the CLI takes it before loading the model)."""
        if is_main_process():
            prepare_out_dir(self.out_dir)
        wait_for_everyone()
        if not lock:
            return self._run()
        with folder_lock(self.out_dir):
            return self._run()

    def _run(self) -> dict[str, Any]:
        results = self._load_or_start()
        wait_for_everyone()  # every process has read the old results before any writes
        if results["base"] is None:
            if self.method.applied:
                raise ValueError("cannot measure the base model: the state already has requests applied")
            # Step 0: the zero-shot model's answers on the utility and retain pairs: S is relative
            # to its utility accuracy, retain agreement to its retain answers (`agreement.py`).
            utility = self.benchmark.utility_split()
            rows = pair_rows(0, None, "utility", utility, respond(self.method, utility))
            for r in self.requests:
                rows += pair_rows(0, r.name, "retain", r.retain_test, respond(self.method, r.retain_test))
            score_rows(rows, None, self.judge, self.contexts)
            results["base"] = {"utility_accuracy": utility_accuracy(rows), "utility_size": len(utility)}
            if is_main_process():
                (self.out_dir / RESPONSES_FILE).unlink(missing_ok=True)
                append_rows(self.out_dir, rows)
            self.base_rows = rows
            if self.views():  # the base model's utility in every view: S of each view is relative to it
                results["base"]["views"] = {}
                for view in self.views():
                    pairs = self.benchmark.utility_view(view)
                    results["base"]["views"][view] = {
                        "utility_accuracy": exact_match(respond(self.method, pairs), [s.answer for s in pairs])}
            self._record_examples_before(results)
            self._write(results)
        elif (self.out_dir / RESPONSES_FILE).exists():
            self.base_rows = [row for row in read_rows(self.out_dir) if row["step"] == 0]
        base_acc = results["base"]["utility_accuracy"]
        done = len(results["steps"])
        if is_main_process():
            keep_steps(self.out_dir, done)  # rows of a step interrupted before results.json
        self.progress("start", {"total": len(self.requests), "done": done})
        for t in range(done + 1, len(self.requests) + 1):
            request = self.requests[t - 1]
            self.progress("unlearn", {"step": t, "request": request.name})
            began = time.perf_counter()
            self.method.unlearn(request)
            seconds = time.perf_counter() - began
            if is_main_process():
                self.method.save(state_dir(self.out_dir, t))
            if self.evaluate_every_step or t == len(self.requests):
                self.progress("evaluate", {"step": t, "request": request.name})
                began_eval = time.perf_counter()
                metrics, rows = self.evaluate(t, base_acc)
                if is_main_process():
                    append_rows(self.out_dir, rows)
                if self.views():
                    metrics["views"] = self.evaluate_views(t, results["base"])
            else:
                began_eval, metrics = time.perf_counter(), {"evaluated": False}
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
