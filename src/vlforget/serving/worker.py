"""The one worker thread: applies requests in submission order, verifies, reverts.

Each step builds a fresh method from the newest recorded state (the served one keeps
answering meanwhile), applies the request, saves the new state atomically and records
it with the request's new status and its event in one transaction. Only then is the new
state served. After a crash, `recover` removes unrecorded state folders and puts a
request caught mid-application back in the queue: no accepted request is lost (it is in
the database before the client gets its id) and none is applied twice (the state it is
applied to never contains it).
"""

from __future__ import annotations

import logging
import threading
import traceback
from dataclasses import dataclass, field

from vlforget.serving import ledger as L
from vlforget.serving.settings import ServiceSettings
from vlforget.serving.states import StateStore
from vlforget.serving.uploads import load_request

log = logging.getLogger("vlforget.serve")


@dataclass
class Served:
    """The state answering chat requests; generation on it is one call at a time."""

    version: int
    method: object
    lock: threading.Lock = field(default_factory=threading.Lock)

    def generate(self, images, instructions) -> list[str]:
        with self.lock:
            return self.method.generate(images, instructions)


class Worker:
    def __init__(self, settings: ServiceSettings, ledger: L.Ledger):
        self.settings = settings
        self.ledger = ledger
        self.store = StateStore(settings.data_dir / "states")
        self.served: Served | None = None
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self._judge = None
        self.utility = []
        self.utility_base: float | None = None

    # -- building states ---------------------------------------------------------------------
    def build(self, state):
        """A fresh backbone + method, loaded from a recorded state (version 0: the original model)."""
        from vlforget.api import load_backbone, make_method
        from vlforget.data.benchmark import Benchmark

        # General pairs for methods that fit on them: the built-in world's pool, the same
        # distribution the service's utility check draws from.
        method = make_method(self.settings.method, load_backbone(self.settings.model), self.settings.method_overrides,
                             general=Benchmark().general_pool)
        if state.applied:
            method.load(self.store.path(state.folder))
        return method

    def request(self, request_id: str):
        row = self.ledger.get(request_id)
        return load_request(row.id, row.name, row.payload, self.settings)

    # -- start-up ------------------------------------------------------------------------------
    def recover(self) -> None:
        latest = self.ledger.latest_state()
        if latest is None:
            from types import SimpleNamespace

            method = self.build(SimpleNamespace(applied=[]))
            self.ledger.record_state(0, self.store.save(method, 0), [])
            latest = self.ledger.latest_state()
        removed = self.store.prune({s.folder for s in self.ledger.states()})
        self._remove_unrecorded_uploads()
        requeued = self.ledger.requeue_interrupted()
        self.served = Served(latest.version, self.build(latest))
        self._measure_base()
        self.ledger.record("service_started", state_version=latest.version, removed_unrecorded_states=removed,
                           requeued=requeued, method=self.settings.method, utility_base=self.utility_base)

    def _remove_unrecorded_uploads(self) -> None:
        """Images of a submission killed before its row committed: never accepted, never answered
        with an id, so nothing refers to them."""
        import shutil

        uploads = self.settings.data_dir / "uploads"
        if uploads.is_dir():
            known = {r.id for r in self.ledger.requests()}
            for folder in uploads.iterdir():
                if folder.name not in known:
                    shutil.rmtree(folder, ignore_errors=True)

    def _measure_base(self) -> None:
        """The original model's accuracy on the utility pairs (S = now / this)."""
        if self.settings.utility_pairs <= 0:
            return
        from vlforget.api import load_backbone
        from vlforget.data.benchmark import general_samples
        from vlforget.evaluation.metrics import exact_match

        self.utility = [s for s in general_samples(self.settings.utility_pairs, "service", "test")
                        if not s.should_decline]
        base = load_backbone(self.settings.model)
        answers = base.generate([s.image for s in self.utility], [s.instruction for s in self.utility])
        self.utility_base = exact_match(answers, [s.answer for s in self.utility])

    @property
    def judge(self):
        if self._judge is None:
            from vlforget.evaluation.judge import make_judge

            self._judge = make_judge(self.settings.judge)
        return self._judge

    # -- the loop ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self.thread = threading.Thread(target=self.run, name="vlforget-worker", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 60) -> None:
        self.stopping.set()
        self.wake.set()
        if self.thread:
            self.thread.join(timeout)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                if not self.step():
                    self.wake.wait(0.5)
                    self.wake.clear()
            except Exception:  # the worker must outlive any one bad step; the ledger has the details
                log.error("worker step failed:\n%s", traceback.format_exc())
                self.stopping.wait(1.0)

    def step(self) -> bool:
        """Do one thing (verify, revert or apply); False when there was nothing to do."""
        for row in self.ledger.unverified():  # applied, then a restart before its numbers were recorded
            self.verify(row.id, self.served)
            return True
        revert = self.ledger.next_revert()
        if revert is not None:
            try:
                self.revert(revert.id)
            except Exception as error:
                log.warning("revert of %s failed: %s", revert.id, error)
                self.ledger.revert_failed(revert.id, f"{type(error).__name__}: {error}")
            return True
        queued = self.ledger.next_queued()
        if queued is not None:
            self.apply(queued.id)
            return True
        return False

    def apply(self, request_id: str) -> None:
        self.ledger.mark_applying(request_id)
        latest = self.ledger.latest_state()
        try:
            method = self.build(latest)
            method.unlearn(self.request(request_id))
            version = latest.version + 1
            folder = self.store.save(method, version)
        except Exception as error:  # bad data, a method that cannot take this request
            log.warning("request %s failed: %s", request_id, error)
            self.ledger.mark_failed(request_id, f"{type(error).__name__}: {error}")
            return
        self.ledger.record_state(version, folder, method.applied, applied_request=request_id)
        self.served = Served(version, method)
        self.verify(request_id, self.served)

    def verify(self, request_id: str, served: Served) -> None:
        """CRR on the request's forget examples, AR on its retain examples, S on the utility pairs."""
        from vlforget.api import evaluate

        with served.lock:
            metrics = evaluate(served.method, [self.request(request_id)], judge=self.judge,
                               utility=self.utility, utility_base=self.utility_base)
        ar = metrics["ar"] if metrics.get("n_retain") else None
        self.ledger.mark_verified(request_id, served.version, metrics["crr"], ar, metrics["s"])

    def revert(self, request_id: str) -> None:
        """CORE: drop the request's pieces from the served state (`revert.drop_request`).
        Other methods (or `settings.drop_reverts` off): rebuild."""
        from types import SimpleNamespace

        from vlforget.serving.revert import DROPPABLE, drop_request, load_dropped

        states = self.ledger.states()
        latest = states[-1]
        if request_id not in latest.applied:
            raise ValueError("the request is not in the served state")
        if self.settings.drop_reverts and self.settings.method in DROPPABLE:
            meta, tensors = drop_request(self.store.path(latest.folder), request_id)
            method = self.build(SimpleNamespace(applied=[]))
            load_dropped(method, meta, tensors)
            version = latest.version + 1
            self.ledger.record_state(version, self.store.save(method, version), method.applied,
                                     reverted_request=request_id, how="dropped")
            self.served = Served(version, method)
            return
        self.rebuild_without(request_id, states)

    def rebuild_without(self, request_id: str, states) -> None:
        """Rebuild without the request: from the newest recorded state whose applied list is a
        prefix of the list without it, re-applying the later requests in their order. Every
        intermediate state is recorded too, so each prefix stays available to later reverts."""
        latest = states[-1]
        target = [r for r in latest.applied if r != request_id]
        start = max((s for s in states if s.applied == target[:len(s.applied)]),
                    key=lambda s: (len(s.applied), s.version))
        method = self.build(start)
        version = latest.version
        remaining = target[len(start.applied):]
        for i, rid in enumerate(remaining):
            method.unlearn(self.request(rid))
            version += 1
            last = i == len(remaining) - 1
            self.ledger.record_state(version, self.store.save(method, version), method.applied,
                                     reverted_request=request_id if last else None, how="rebuilt")
        if not remaining:
            version += 1
            self.ledger.record_state(version, self.store.save(method, version), method.applied,
                                     reverted_request=request_id, how="rebuilt")
        self.served = Served(version, method)
