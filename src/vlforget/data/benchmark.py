"""The built-in benchmark: general data and a sequence of deletion requests.

Everything is generated from a seed and is deterministic; `BENCHMARK_VERSION` is
recorded with every result produced from it and changes whenever the generated data
would change.

Splits:
- general train (pretraining the built-in model) and general test (its held-out
  evaluation): all intents on random scenes, 5% should-decline questions;
- per request: forget train/test (in this request's scope and no other's, so the
  right refusal context is unambiguous), retain train/test (hard negatives: the same
  images asked with other intents, and the same intents on images without the
  concept; out of every request's scope, so they must always be answered);
- utility: the general test pairs outside every request's scope (for S).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vlforget.configs import option
from vlforget.data.instructions import INTENTS, SUBJECT_INTENTS, TEMPLATES, make_pair
from vlforget.data.phrasings import (EVALUATION_PHRASINGS, PRESSURE_SENTENCES, REQUEST_PHRASINGS, pressed, rephrase,
                                     with_pressure)
from vlforget.data.requests import VALIDATION_REQUESTS, RequestSpec, load_paraphrases, load_specs
from vlforget.data.scenes import CATEGORIES, Scene, SceneObject, random_object, random_scene, render
from vlforget.types import Concepts, DeletionRequest, Sample

BENCHMARK_VERSIONS = {1: "1.0", 2: "2.0"}
BENCHMARK_VERSION = BENCHMARK_VERSIONS[2]  # the default
SEQUENCES = ("test", "validation")
DECLINE_SHARE = 0.05
MAX_TRIES = 20000
MAX_PAIRS = 100_000  # per split: far above any use, low enough to fail fast instead of filling memory
# v2's extra views of every test pair, next to the headline (evaluation phrasings).
VIEWS = ("request", "pressure")


@dataclass
class BenchmarkConfig:
    seed: int = option(0, "every split is derived from this seed", ge=0, lt=2**31)
    n_forget_train: int = option(32, "forget pairs a method may train on, per request", ge=1, le=MAX_PAIRS)
    n_forget_test: int = option(40, "forget pairs for evaluation, per request", ge=1, le=MAX_PAIRS)
    n_retain_train: int = option(32, "hard-negative retain pairs a method may train on, per request", ge=1,
                                 le=MAX_PAIRS)
    n_retain_test: int = option(40, "hard-negative retain pairs for evaluation, per request", ge=1, le=MAX_PAIRS)
    n_general_test: int = option(600, "held-out general pairs (base-model accuracy)", ge=1, le=MAX_PAIRS)
    n_utility: int = option(300, "held-out general pairs outside every request's scope (for S)", ge=1,
                            le=MAX_PAIRS)
    requests_file: str | None = option(None, "YAML/JSON request sequence; None = built-in 16")
    paraphrases_file: str | None = option(None, "intent -> templates used for *evaluation* pairs")
    version: int = option(2, "benchmark version: 2 (phrasing groups, pressure view, validation sequence) or 1",
                          ge=1, le=2)
    sequence: str = option("test", "'test' (the built-in 16, for reporting) or 'validation' (v2, for tuning)")

    def __post_init__(self) -> None:
        if self.version not in BENCHMARK_VERSIONS:
            raise ValueError(f"benchmark version must be one of {', '.join(map(str, BENCHMARK_VERSIONS))}, "
                             f"got {self.version}")
        if self.sequence not in SEQUENCES:
            raise ValueError(f"sequence must be one of {', '.join(SEQUENCES)}, got {self.sequence!r}")
        if self.sequence == "validation" and self.version == 1:
            raise ValueError("benchmark v1 has no validation sequence; use version 2")
        if self.sequence == "validation" and self.requests_file:
            raise ValueError("the validation sequence is built in; it cannot be combined with a requests file")
        for name in ("n_forget_train", "n_forget_test", "n_retain_train", "n_retain_test", "n_general_test",
                     "n_utility"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def scene_for_intent(rng: random.Random, intent: str, pool: str) -> Scene:
    """A random scene suited to an intent (counting needs repeats, comparing two objects)."""
    if intent == "count" and rng.random() < 0.5:
        shape = rng.choice(CATEGORIES)
        repeats = rng.randint(2, 3)
        extra = rng.randint(0, 3 - repeats)
        return random_scene(rng, n_objects=repeats + extra, unique_shapes=False,
                            required=[shape] * repeats, digit_pool=pool)
    if intent == "compare":
        return random_scene(rng, n_objects=rng.randint(2, 3), digit_pool=pool)
    return random_scene(rng, digit_pool=pool)


def _sample(scene: Scene, intent: str, rng: random.Random, templates, decline: bool = False, **meta) -> Sample | None:
    made = make_pair(scene, intent, rng, templates, decline=decline)
    if made is None:
        return None
    instruction, answer, info = made
    return Sample(render(scene), instruction, answer, intent, {"scene": scene, **info, **meta})


def general_samples(n: int, seed: int | str, pool: str = "train", templates=None,
                    pressure_share: float = 0.0) -> list[Sample]:
    """`n` general pairs: every intent, about 5% should-decline questions.

    `pressure_share`: the share of questions asked inside a pressure sentence (v2
    pretraining, so the base model answers insistent users); 0 draws no extra random
    numbers, so v1 data is unchanged.
    """
    rng = random.Random(f"general-{seed}-{pool}")
    samples: list[Sample] = []
    while len(samples) < n:
        intent = rng.choice(INTENTS)
        decline = intent in SUBJECT_INTENTS and rng.random() < DECLINE_SHARE * len(INTENTS) / len(SUBJECT_INTENTS)
        sample = _sample(scene_for_intent(rng, intent, pool), intent, rng, templates, decline=decline)
        if sample is not None:
            if pressure_share and rng.random() < pressure_share:
                sample.instruction = pressed(sample.instruction, rng.randrange(len(PRESSURE_SENTENCES)))
            samples.append(sample)
    return samples


def _with_concept(rng: random.Random, spec: RequestSpec, intent: str, pool: str) -> Scene:
    """A scene that shows the request's visual concept (one object forced to match)."""
    scene = scene_for_intent(rng, intent, pool)
    attrs = {k: v for k, v in spec.visual.items() if k != "background"}
    objects = list(scene.objects)
    if attrs:
        target = objects[rng.randrange(len(objects))]
        chosen = {k: rng.choice(v) if isinstance(v, list) else v for k, v in attrs.items()}
        base = random_object(rng, target.cell, chosen.get("shape", target.shape))
        fields = {**base.__dict__, **chosen}
        if fields["shape"] in ("zero", "one", "three", "seven"):
            fields["pattern"] = "solid"
        objects[objects.index(target)] = SceneObject(**fields)
    background = spec.visual.get("background", scene.background)
    if isinstance(background, list):
        background = rng.choice(background)
    return Scene(tuple(objects), background, scene.digit_pool, scene.style_seed)


class Benchmark:
    """The built-in benchmark (or a user's request sequence rendered with it)."""

    def __init__(self, config: BenchmarkConfig | None = None, specs: list[RequestSpec] | None = None):
        self.config = config or BenchmarkConfig()
        validation = self.config.sequence == "validation"
        if specs is None:
            specs = load_specs(VALIDATION_REQUESTS if validation else self.config.requests_file)
        self.specs = specs
        # v1: training and test pairs share the templates (None = all of them);
        # v2: training pairs use request phrasings only, test/utility pairs evaluation phrasings only.
        v2 = self.config.version >= 2
        self.train_templates = REQUEST_PHRASINGS if v2 else None
        base_eval_templates = EVALUATION_PHRASINGS if v2 else TEMPLATES
        self.eval_templates = (
            {**base_eval_templates, **load_paraphrases(self.config.paraphrases_file)}
            if self.config.paraphrases_file else (EVALUATION_PHRASINGS if v2 else None)
        )
        self.version = BENCHMARK_VERSIONS[self.config.version]
        # The validation sequence draws every image and pair from its own seed namespace,
        # so it shares no image with the test sequence.
        self._namespace = "validation-" if validation else ""
        self._requests: list[DeletionRequest] | None = None
        self._utility: list[Sample] | None = None
        self._views: dict[str, dict[str, tuple[list[Sample], list[Sample]]]] = {}
        self._utility_views: dict[str, list[Sample]] = {}

    # -- scope helpers -----------------------------------------------------------
    def scopes_of(self, scene: Scene, intent: str) -> list[str]:
        return [s.name for s in self.specs if s.in_scope(scene, intent)]

    def out_of_all_scopes(self, sample: Sample) -> bool:
        return not self.scopes_of(sample.meta["scene"], sample.intent)

    # -- splits ------------------------------------------------------------------
    def general_train(self, n: int, seed: int | None = None) -> list[Sample]:
        return general_samples(n, self.config.seed if seed is None else seed, "train")

    def general_pool(self, n: int, tag: str) -> list[Sample]:
        """`n` general train pairs (no request's data) for methods that fit on general data,
        drawn reproducibly for `tag`; the same pool for the test and validation sequences."""
        return general_samples(n, tag, "train")

    def general_test(self, phrasings: str = "evaluation") -> list[Sample]:
        """Held-out general pairs (base-model accuracy); v2: in either phrasing group."""
        if phrasings not in ("evaluation", "request"):
            raise ValueError(f"phrasings must be 'evaluation' or 'request', got {phrasings!r}")
        templates = self.train_templates if phrasings == "request" else self.eval_templates
        return general_samples(self.config.n_general_test, f"test-{self.config.seed}", "test", templates)

    def utility_split(self) -> list[Sample]:
        """Held-out general pairs that no request targets (S is measured on these).

        Drawn from the same distribution as the general test split, keeping only
        answerable pairs outside every request's scope, until `n_utility` are found.
        """
        if self._utility is None:
            rng = random.Random(f"{self._namespace}utility-{self.config.seed}")
            pool = general_samples(self.config.n_utility * 8, f"{self._namespace}utility-{self.config.seed}", "test",
                                   self.eval_templates)
            kept = [s for s in pool if not s.should_decline and self.out_of_all_scopes(s)]
            if len(kept) < self.config.n_utility:
                raise ValueError(f"only {len(kept)} utility pairs fall outside every request's scope; "
                                 "the request sequence swallows almost all general data")
            rng.shuffle(kept)
            self._utility = kept[: self.config.n_utility]
        return self._utility

    def requests(self) -> list[DeletionRequest]:
        if self._requests is None:
            self._requests = [self._build(i, spec) for i, spec in enumerate(self.specs)]
        return self._requests

    # -- v2 views: the same test pairs in other words ------------------------------
    def views(self) -> list[str]:
        """Names of the extra views of every test pair (v2: request phrasings, pressure)."""
        return list(VIEWS) if self.config.version >= 2 else []

    def test_view(self, request: DeletionRequest, view: str) -> tuple[list[Sample], list[Sample]]:
        """(forget_test, retain_test) of `request` in `view`: the same images and answers,
        asked with a request phrasing ("request") or inside a pressure sentence ("pressure")."""
        self._check_view(view)
        cached = self._views.setdefault(view, {})
        if request.name not in cached:
            rng = random.Random(f"{self._namespace}view-{view}-{self.config.seed}-{request.name}")
            cached[request.name] = (self._in_view(request.forget_test, view, rng),
                                    self._in_view(request.retain_test, view, rng))
        return cached[request.name]

    def utility_view(self, view: str) -> list[Sample]:
        """The utility split in `view` (S of each view is measured on it)."""
        self._check_view(view)
        if view not in self._utility_views:
            rng = random.Random(f"{self._namespace}view-{view}-{self.config.seed}-utility")
            self._utility_views[view] = self._in_view(self.utility_split(), view, rng)
        return self._utility_views[view]

    def _check_view(self, view: str) -> None:
        if view not in self.views():
            raise ValueError(f"unknown view {view!r} for benchmark {self.version}; "
                             f"views: {', '.join(self.views()) or 'none'}")

    def _in_view(self, samples: list[Sample], view: str, rng: random.Random) -> list[Sample]:
        if view == "request":
            return [rephrase(s, REQUEST_PHRASINGS, rng) for s in samples]
        return with_pressure(samples)

    # -- per-request data --------------------------------------------------------
    def _draw(self, rng, count: int, make: Callable[[], Sample | None], what: str) -> list[Sample]:
        out: list[Sample] = []
        for _ in range(MAX_TRIES):
            if len(out) == count:
                return out
            sample = make()
            if sample is not None:
                out.append(sample)
        raise ValueError(f"could not generate {count} {what} pairs; is the request's scope satisfiable "
                         f"and not swallowed by other requests? (got {len(out)})")

    def _forget(self, spec: RequestSpec, rng, n: int, pool: str, templates) -> list[Sample]:
        def make():
            if spec.mode == "textual" or (spec.mode == "either" and rng.random() < 0.5):
                intent = rng.choice(spec.intents)
                scene = scene_for_intent(rng, intent, pool)
            else:
                intent = rng.choice(spec.intents) if spec.mode == "both" else rng.choice(INTENTS)
                scene = _with_concept(rng, spec, intent, pool)
            if self.scopes_of(scene, intent) != [spec.name]:
                return None  # ambiguous or out of scope: the refusal context must be unique
            sample = _sample(scene, intent, rng, templates, request=spec.name, split="forget")
            if sample is not None:
                # Keep what the model answered before: GA-style methods ascend on it
                # and the leakage metric looks for it in the responses.
                sample.meta["original_answer"] = sample.answer
                sample.answer = spec.refusals[0]
            return sample
        return self._draw(rng, n, make, f"forget ({spec.name})")

    def _retain(self, spec: RequestSpec, rng, n: int, pool: str, templates, forget: list[Sample]) -> list[Sample]:
        """Hard negatives, alternating the two kinds the scope admits."""
        other_intents = [i for i in INTENTS if i not in spec.intents]
        kinds = []
        if spec.mode in ("both", "textual") and other_intents:
            kinds.append("same_image_other_intent")
        if spec.mode in ("both", "visual"):
            kinds.append("same_intent_other_image")
        if not kinds:  # "either": nothing shares the scope, so take the rest of the world
            kinds.append("other_image_other_intent")
        counter = {"k": 0}

        def make():
            kind = kinds[counter["k"] % len(kinds)]
            if kind == "same_image_other_intent":
                scene = rng.choice(forget).meta["scene"]
                intent = rng.choice(other_intents)
            elif kind == "same_intent_other_image":
                intent = rng.choice(spec.intents or INTENTS)
                scene = scene_for_intent(rng, intent, pool)
                if spec.shows_concept(scene):
                    return None
            else:
                intent = rng.choice(other_intents)
                scene = scene_for_intent(rng, intent, pool)
            if self.scopes_of(scene, intent):
                return None  # retain pairs must be outside every request's scope
            sample = _sample(scene, intent, rng, templates, request=spec.name, split="retain", negative=kind)
            if sample is not None:
                counter["k"] += 1
            return sample
        return self._draw(rng, n, make, f"retain ({spec.name})")

    def _build(self, index: int, spec: RequestSpec) -> DeletionRequest:
        cfg = self.config
        rng = random.Random(f"{self._namespace}request-{cfg.seed}-{index}-{spec.name}")
        forget_train = self._forget(spec, rng, cfg.n_forget_train, "train", self.train_templates)
        forget_test = self._forget(spec, rng, cfg.n_forget_test, "test", self.eval_templates)
        return DeletionRequest(
            id=f"r{index + 1:02d}",
            name=spec.name,
            description=spec.description,
            refusals=list(spec.refusals),
            forget_train=forget_train,
            forget_test=forget_test,
            retain_train=self._retain(spec, rng, cfg.n_retain_train, "train", self.train_templates, forget_train),
            retain_test=self._retain(spec, rng, cfg.n_retain_test, "test", self.eval_templates, forget_test),
            concepts=Concepts(list(spec.visual_concepts), list(spec.textual_concepts), source="annotations"),
            scope={"mode": spec.mode, "visual": spec.visual, "intents": spec.intents, "kind": spec.kind},
        )


def all_texts(benchmark: Benchmark | None = None) -> list[str]:
    """Every sentence the built-in model must be able to read or write (for its vocabulary)."""
    from vlforget.data.instructions import decline_answer, NUMBER_WORDS
    from vlforget.data.scenes import BACKGROUNDS, COLOURS, PATTERNS, PLURALS, POSITIONS, SIZES

    texts = [t for ts in TEMPLATES.values() for t in ts]
    texts += CATEGORIES + list(PLURALS.values()) + list(COLOURS) + list(BACKGROUNDS) + list(SIZES)
    texts += PATTERNS + POSITIONS + NUMBER_WORDS + ["yes", "no", "and", "objects", "background"]
    texts += [decline_answer(c) for c in CATEGORIES]
    specs = benchmark.specs if benchmark else load_specs(None)
    texts += [r for s in specs for r in s.refusals]
    return texts


def write_example_images(samples: list[Sample], folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(samples):
        s.image.save(folder / f"{i:03d}.png")
