"""General pairs of a loaded benchmark: image-instruction pairs that belong to no request.

Methods that fit probes, SAEs, gates or encoders on general data (mllmeraser, sauce, eco,
CORE) draw them through `LoadedSequence.general_pool(n, tag)`. Where they come from, in
this order (docs/loaders.md, per format):

(a) a file or folder the user names with `general:` in the data config (any generic
    format, read by `generic.read_general_pairs`);
(b) else what the loaded layout holds that is neither forget data nor evaluated: the
    person benchmarks' retained people the sequence does not use (`persons.SPARE_PEOPLE`)
    and the training part of the retain data (SafeEraser's own protocol: its
    unrelated-image, unrelated-question UU pairs instead; see `layout_pairs`);
(c) else none: `general_pool` raises, naming the `general:` option.

Whatever the source, a pair equal to any request's forget pair (train or test) or to
any evaluated pair (forget or retain test) - same pixels, same normalised instruction -
is dropped, so a pool can never hand a method the data it is asked to forget or the
data it is scored on.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

from vlforget.data.loaders.persons import SPARE_PEOPLE
from vlforget.text import normalise
from vlforget.types import DeletionRequest, Sample

GENERAL_OPTION = "general"  # the data-config key naming a file of general pairs


def layout_pairs(format_name: str, requests: list[DeletionRequest], path: str | Path | None = None,
                 options: dict[str, Any] | None = None) -> list[Sample]:
    """The layout's own general pairs: for MLLMU-Bench, CLEAR and FIUBench, every pair of
    the retained people the sequence leaves out (read again from `path`), then every
    request's retain-train pairs. SafeEraser's own protocol is the exception: its retain
    pairs are hard negatives on the forget images (HU) or with the forget questions (UH),
    so the record's benign question on its benign look-alike image (UU: neither forget
    image nor forget question) is used, and the retain-train pairs only when no record
    gives one."""
    retain = [s for r in requests for s in r.retain_train]
    if format_name == "safeeraser":
        unrelated = _safeeraser_uu(retain)
        if unrelated:
            return unrelated
    spare = SPARE_PEOPLE[format_name](path, options or {}) if format_name in SPARE_PEOPLE and path else []
    return spare + retain


def _safeeraser_uu(retain: list[Sample]) -> list[Sample]:
    """UU pairs from the retain-train pairs: the benign image of a record's UH pairs with
    the benign questions of the same record's HU pairs (no reference answer exists)."""
    benign_image = {s.meta.get("record"): s.image for s in retain if s.meta.get("combination") == "UH"}
    pairs, seen = [], set()
    for s in retain:
        record = s.meta.get("record")
        if s.meta.get("combination") != "HU" or record not in benign_image or (record, s.instruction) in seen:
            continue
        seen.add((record, s.instruction))
        pairs.append(Sample(benign_image[record], s.instruction, "", s.intent,
                            {"split": "general", "answer_known": False, "combination": "UU", "record": record,
                             "keyword": s.meta.get("keyword"), "category": s.meta.get("category")}))
    return pairs


class PairKeys:
    """(pixel hash, normalised instruction) of pairs; images hashed once per object."""

    def __init__(self) -> None:
        self._hashes: dict[int, str] = {}
        self._keep: list = []  # keeps hashed images alive so their ids are not reused

    def __call__(self, sample: Sample) -> tuple[str, str]:
        image = sample.image
        if id(image) not in self._hashes:
            self._hashes[id(image)] = hashlib.sha1(f"{image.size}{image.mode}".encode() + image.tobytes()).hexdigest()
            self._keep.append(image)
        return self._hashes[id(image)], normalise(sample.instruction)


def without_request_pairs(candidates: list[Sample], requests: list[DeletionRequest]) -> list[Sample]:
    """Candidates minus every forget pair and every evaluated pair, without repeats."""
    key = PairKeys()
    banned = {key(s) for r in requests for s in [*r.forget_train, *r.forget_test, *r.retain_test]}
    kept, seen = [], set()
    for sample in candidates:
        k = key(sample)
        if k not in banned and k not in seen:
            seen.add(k)
            kept.append(sample)
    return kept


def draw(pool: list[Sample], n: int, tag: str) -> list[Sample]:
    """`n` pairs of `pool` in an order fixed by `tag`; when the pool holds fewer than `n`,
    it is cycled (every pair used as evenly as possible), not sampled with replacement."""
    if n < 0:
        raise ValueError(f"the number of general pairs must be >= 0, got {n}")
    order = list(pool)
    random.Random(f"loaded-general-{tag}").shuffle(order)
    return [order[i % len(order)] for i in range(n)] if order else []
