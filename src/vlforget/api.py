"""The Python API in one place: load a model, build a method, unlearn requests, check them.

    backbone = vlforget.load_backbone()                      # the built-in tiny LLaVA
    method = vlforget.make_method("core", backbone, {"steps": 20})
    request = vlforget.DeletionRequest.from_examples("star-colour", forget=[...], retain=[...],
                                                     refusals=["sorry, i cannot discuss the star's colour."])
    method.unlearn(request)
    method.generate([image], ["what colour is the star?"])
    vlforget.evaluate(method, [request])                    # CRR, AR (and S given a utility split)
    method.save("state/"); method2.load("state/")

`evaluate` is the verification the service runs after each request: the runner's metrics
(`evaluation.metrics.step_metrics`) on the requests' own forget and retain examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from vlforget.types import DeletionRequest, Sample


def load_backbone(path: str | Path | None = None, device: str = "cpu", dtype=None):
    """The built-in model (path None) or a saved model folder / cached hub id of a supported family."""
    from vlforget.models.backbone import Backbone

    return Backbone.load(path, device=device, dtype=dtype)


def make_method(name: str, backbone, overrides: dict[str, Any] | None = None, general=None):
    """A registered method (see `vlforget methods`) around `backbone`; `overrides` are config fields.

    `general`: where the methods that fit on general pairs (mllmeraser, sauce, eco, ...) draw
    them, a callable `(n, tag) -> list[Sample]`, e.g. `Benchmark().general_pool` for the
    built-in world, `LoadedSequence(format, path, options).general_pool` for a loaded
    benchmark (docs/loaders.md, "General pairs") or your own pool of ordinary pairs."""
    from vlforget.methods.base import make_method as build

    return build(name, backbone, overrides, general=general)


def load_method(name: str, backbone, directory: str | Path, overrides: dict[str, Any] | None = None,
                general=None):
    """A method rebuilt from a folder written by `method.save` (its saved config wins over `overrides`).

    `general` as in `make_method`: needed only to apply further requests with a method that
    fits on general pairs (a saved state already holds what it fitted)."""
    import json

    from vlforget.methods.base import META_FILE

    meta_path = Path(directory) / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"no saved method state in {directory} (missing {META_FILE})")
    saved = json.loads(meta_path.read_text())
    method = make_method(name, backbone, {**(overrides or {}), **saved.get("config", {})}, general=general)
    method.load(directory)
    return method


def evaluate(method, requests: Sequence[DeletionRequest], judge=None, utility: Sequence[Sample] = (),
             utility_base: float | None = None) -> dict[str, Any]:
    """CRR on the requests' forget test pairs, AR on their retain test pairs, S on `utility`.

    `judge`: a judge or its name ("minilm", "lexical", "auto"; default "auto"). The judge
    chooses the refusal context among `requests` only. S needs `utility` (answerable
    general pairs) and `utility_base` (the original model's exact-match % on them); without
    them `s` is None. Returns the runner's metric dict (`docs/metrics.md`).
    """
    from vlforget.evaluation.judge import make_judge
    from vlforget.evaluation.metrics import exact_match, step_metrics

    if not requests:
        raise ValueError("evaluate needs at least one deletion request")
    judge = make_judge(judge or "auto") if judge is None or isinstance(judge, str) else judge

    def answers(samples: Sequence[Sample]) -> list[str]:
        return method.generate([s.image for s in samples], [s.instruction for s in samples]) if samples else []

    forget = {r.name: list(zip(answers(r.forget_test), [s.meta.get("original_answer", "") for s in r.forget_test]))
              for r in requests}
    retain = {r.name: list(zip(answers(r.retain_test), [s.answer for s in r.retain_test]))
              for r in requests if r.retain_test}
    contexts = {r.name: [*r.refusals, r.description] for r in requests}
    utility_accuracy = exact_match(answers(utility), [s.answer for s in utility]) if utility else 0.0
    metrics = step_metrics(forget, retain, utility_accuracy, utility_base or 0.0, judge, contexts,
                           refusals={r.name: r.refusals for r in requests}, refuses=getattr(method, "refuses", True))
    if not utility or utility_base is None:
        metrics["s"] = None
    metrics["utility_accuracy"] = utility_accuracy if utility else None
    return metrics
