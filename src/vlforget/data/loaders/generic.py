"""Generic formats: LLaVA conversation JSON + a request spec, and JSON-lines / parquet tables.

LLaVA-style JSON (LLaVA's instruction-tuning format)::

    [{"id": "0001", "image": "coco/0001.jpg",
      "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"},
                        {"from": "gpt", "value": "A red car."}]}]

Every human turn followed by a gpt turn is one pair on the record's image. The request
spec (YAML or JSON; option `spec`) says what to forget::

    image_folder: images            # optional; default: the JSON file's folder
    test_fraction: 0.25             # optional
    requests:
      - name: cars
        description: anything about cars
        refusals: ["I can't help with questions about cars."]
        forget_ids: ["0001"]        # records to forget, and/or
        forget_keywords: ["car"]    # records whose human turns mention one of these
        retain_ids: ["0002"]        # optional; default: a share of the unforgotten records
        visual_concepts: [...]      # optional
        textual_concepts: [...]     # optional

Tables (`jsonl`, `parquet`): one row per pair with columns `image` (a path relative to
the file, or for parquet an image struct with bytes), `instruction`, `answer`, `request`
(the request the row belongs to; empty = a general retained pair), and optionally
`role` (forget / retain), `split` (train / test), `refusal`, `description`.
Request order is the order of first appearance. `spec` may add descriptions, refusals
and concepts per request name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from vlforget.data.loaders._common import (
    ImageCache, answer_sample, build_request, distribute, existing_path, read_json, read_parquet, refusal_sample,
    request_id, resolve_image_path, split_test,
)
from vlforget.data.loaders.refusals import GENERIC_REFUSALS
from vlforget.types import DeletionRequest, Sample

SPEC_FIELDS = {"name", "description", "refusals", "forget_ids", "forget_keywords", "retain_ids",
               "visual_concepts", "textual_concepts"}


def read_spec(spec: str | Path | dict | list | None) -> dict[str, Any]:
    if spec is None:
        return {}
    if isinstance(spec, (dict, list)):
        raw = spec
    else:
        path = existing_path(spec, "request spec")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML is a superset of JSON
        except yaml.YAMLError as error:
            raise ValueError(f"could not parse request spec {path}: {error}") from error
    if isinstance(raw, list):
        raw = {"requests": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("requests", []), list):
        raise ValueError("a request spec is a mapping with a 'requests' list (or the list itself)")
    for i, item in enumerate(raw.get("requests", [])):
        if not isinstance(item, dict) or not item.get("name"):
            raise ValueError(f"request spec: request #{i + 1} needs a 'name'")
        unknown = set(item) - SPEC_FIELDS
        if unknown:
            raise ValueError(f"request spec: request {item['name']!r} has unknown field(s) {sorted(unknown)}; "
                             f"valid: {sorted(SPEC_FIELDS)}")
    return raw


def _turn_pairs(record: dict[str, Any], where: str) -> list[tuple[str, str]]:
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise ValueError(f"{where}: 'conversations' must be a list of {{from, value}} turns")
    pairs, pending = [], None
    for turn in turns:
        if not isinstance(turn, dict):
            raise ValueError(f"{where}: every turn needs 'from' and 'value'")
        role, value = str(turn.get("from", "")).lower(), str(turn.get("value", ""))
        if role in ("human", "user"):
            pending = re.sub(r"\s*<image>\s*", " ", value).strip()
        elif role in ("gpt", "assistant") and pending is not None:
            pairs.append((pending, value.strip()))
            pending = None
    return pairs


def load_llava_json(path: str | Path, *, spec: str | Path | dict | list | None = None,
                    image_folder: str | Path | None = None, test_fraction: float | None = None,
                    seed: int = 0) -> list[DeletionRequest]:
    """LLaVA conversation JSON + request spec (see module doc)."""
    path = existing_path(path, "LLaVA conversation file")
    spec_data = read_spec(spec)
    if not spec_data.get("requests"):
        raise ValueError("llava_json needs a request spec (option spec=...) listing what to forget")
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {{id, image, conversations}} records")
    folder = image_folder or spec_data.get("image_folder")
    base = path.parent
    roots = [Path(folder) if Path(str(folder)).is_absolute() else base / str(folder)] if folder else []
    roots += [base]
    fraction = test_fraction if test_fraction is not None else float(spec_data.get("test_fraction", 0.25))
    cache = ImageCache()

    records = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict) or "image" not in rec:
            continue  # text-only conversations have no place in an image-instruction benchmark
        rid = str(rec.get("id", i))
        records.append((rid, rec, _turn_pairs(rec, f"{path} record {rid}")))
    claimed: set[str] = set()
    plan = []
    for item in spec_data["requests"]:
        ids = {str(x) for x in item.get("forget_ids") or []}
        words = [str(w).lower() for w in item.get("forget_keywords") or []]
        unknown = ids - {rid for rid, _, _ in records}
        if unknown:
            raise ValueError(f"request {item['name']!r}: forget_ids not in {path.name}: {sorted(unknown)[:5]}")
        chosen = [r for r in records if r[0] in ids or (words and any(
            w in q.lower() for q, _ in r[2] for w in words))]
        chosen = [r for r in chosen if r[0] not in claimed]
        claimed |= {r[0] for r in chosen}
        plan.append((item, chosen))
    unclaimed = [r for r in records if r[0] not in claimed]
    shares = distribute(unclaimed, len(plan))

    requests = []
    for gi, (item, chosen) in enumerate(plan):
        refusals = [str(r) for r in item.get("refusals") or []] or list(GENERIC_REFUSALS)
        train, test = split_test(chosen, fraction, key=lambda r: r[0], seed=f"llava-{seed}-{item['name']}")
        if item.get("retain_ids"):
            keep = {str(x) for x in item["retain_ids"]}
            retain_records = [r for r in records if r[0] in keep]
        else:
            retain_records = shares[gi]
        r_train, r_test = split_test(retain_records, fraction, key=lambda r: r[0], seed=f"llava-{seed}-retain-{gi}")

        def forget_samples(recs, split):
            return [refusal_sample(cache.file(resolve_image_path(str(rec["image"]), roots)), q,
                                   refusals[k % len(refusals)], "unknown", a, record=rid, data_split=split)
                    for rid, rec, pairs in recs for k, (q, a) in enumerate(pairs)]

        def retain_samples(recs, split):
            return [answer_sample(cache.file(resolve_image_path(str(rec["image"]), roots)), q, a, "unknown",
                                  record=rid, data_split=split) for rid, rec, pairs in recs for q, a in pairs]
        requests.append(build_request(
            id=request_id(gi), name=str(item["name"]), description=str(item.get("description") or item["name"]),
            refusals=refusals, forget_train=forget_samples(train, "train"), forget_test=forget_samples(test, "test"),
            retain_train=retain_samples(r_train, "train"), retain_test=retain_samples(r_test, "test"),
            visual=item.get("visual_concepts") or [], textual=item.get("textual_concepts") or [],
            concepts_source="spec", scope={"forget_ids": sorted(r[0] for r in chosen),
                                           "forget_keywords": item.get("forget_keywords") or []},
            source="llava_json"))
    return requests


# ----------------------------------------------------------------------------- tables

def _rows_to_requests(rows: list[dict[str, Any]], roots: list[Path], source: str, spec, test_fraction: float,
                      seed: int, where: str) -> list[DeletionRequest]:
    spec_by_name = {str(r["name"]): r for r in read_spec(spec).get("requests", [])}
    cache = ImageCache()
    for i, row in enumerate(rows):
        missing = [c for c in ("image", "instruction", "answer") if c not in row]
        if missing:
            raise ValueError(f"{where}: row {i + 1} lacks column(s) {missing}; "
                             "needed: image, instruction, answer, request")
    names = list(dict.fromkeys(str(r["request"]) for r in rows if r.get("request")
                               and str(r.get("role", "forget")).lower() != "retain"))
    if not names:
        raise ValueError(f"{where}: no forget row (a row with a non-empty 'request' column), "
                         "so there is nothing to forget")
    forget = {n: [] for n in names}
    retain = {n: [] for n in names}
    general = []
    for i, row in enumerate(rows):
        name = str(row.get("request") or "")
        role = str(row.get("role") or ("forget" if name else "retain")).lower()
        if role not in ("forget", "retain"):
            raise ValueError(f"{where}: row {i + 1} has role {role!r}; expected forget or retain")
        entry = (i, row)
        if role == "forget":
            forget[name].append(entry)
        elif name in retain:
            retain[name].append(entry)
        else:
            general.append(entry)
    for gi, extra in enumerate(distribute(general, len(names))):
        retain[names[gi]] += extra

    def split_rows(entries, label):
        fixed = [e for e in entries if e[1].get("split")]
        for i, row in fixed:
            if str(row["split"]).lower() not in ("train", "test"):
                raise ValueError(f"{where}: row {i + 1} has split {row['split']!r}; expected train or test")
        free = [e for e in entries if not e[1].get("split")]
        train, test = split_test(free, test_fraction, key=lambda e: e[0], seed=f"{source}-{seed}-{label}")
        train += [e for e in fixed if str(e[1]["split"]).lower() == "train"]
        test += [e for e in fixed if str(e[1]["split"]).lower() == "test"]
        return sorted(train, key=lambda e: e[0]), sorted(test, key=lambda e: e[0])

    requests = []
    for gi, name in enumerate(names):
        info = spec_by_name.get(name, {})
        refusals = [str(r) for r in info.get("refusals") or []]
        refusals += [str(row["refusal"]) for _, row in forget[name] if row.get("refusal")
                     and str(row["refusal"]) not in refusals]
        refusals = refusals or list(GENERIC_REFUSALS)
        description = str(info.get("description") or next(
            (row["description"] for _, row in forget[name] if row.get("description")), name))
        f_train, f_test = split_rows(forget[name], f"forget-{name}")
        r_train, r_test = split_rows(retain[name], f"retain-{name}")

        def image(i, row):
            return cache.cell(row["image"], roots, f"{where} row {i + 1}")

        def forget_samples(entries, split):
            return [refusal_sample(image(i, row), str(row["instruction"]),
                                   str(row.get("refusal") or refusals[k % len(refusals)]),
                                   str(row.get("intent") or "unknown"), str(row["answer"] or ""), row=i,
                                   data_split=split) for k, (i, row) in enumerate(entries)]

        def retain_samples(entries, split):
            return [answer_sample(image(i, row), str(row["instruction"]), row["answer"],
                                  str(row.get("intent") or "unknown"), row=i, data_split=split)
                    for i, row in entries]
        requests.append(build_request(
            id=request_id(gi), name=name, description=description, refusals=refusals,
            forget_train=forget_samples(f_train, "train"), forget_test=forget_samples(f_test, "test"),
            retain_train=retain_samples(r_train, "train"), retain_test=retain_samples(r_test, "test"),
            visual=info.get("visual_concepts") or [], textual=info.get("textual_concepts") or [],
            concepts_source="spec", source=source))
    return requests


def load_jsonl(path: str | Path, *, spec: str | Path | dict | list | None = None,
               image_folder: str | Path | None = None, test_fraction: float = 0.25,
               seed: int = 0) -> list[DeletionRequest]:
    """A JSON-lines (or JSON list) table of pairs; see the module doc for its columns."""
    path = existing_path(path, "JSON-lines file")
    roots = ([Path(image_folder)] if image_folder else []) + [path.parent]
    return _rows_to_requests(jsonl_rows(path), roots, "jsonl", spec, test_fraction, seed, str(path))


def jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (or a JSON list of objects)."""
    rows = read_json(path)
    if isinstance(rows, dict):
        rows = [rows]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: expected one JSON object per line")
    return rows


def load_parquet(path: str | Path, *, spec: str | Path | dict | list | None = None,
                 image_folder: str | Path | None = None, test_fraction: float = 0.25,
                 seed: int = 0) -> list[DeletionRequest]:
    """A parquet table of pairs (a file, or a folder of shards); needs pyarrow or pandas."""
    path = existing_path(path, "parquet file")
    base = path if path.is_dir() else path.parent
    roots = ([Path(image_folder)] if image_folder else []) + [base]
    return _rows_to_requests(parquet_rows(path), roots, "parquet", spec, test_fraction, seed, str(path))


def parquet_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a parquet file, or of every shard in a folder."""
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"no .parquet file in {path}")
    return [row for file in files for row in read_parquet(file)]


# ------------------------------------------------------------------- general pairs

def read_general_pairs(path: str | Path) -> list[Sample]:
    """General pairs (no request's data) from a file or folder in a generic format, for
    methods that fit on general data (`general:` in the data config; docs/loaders.md).

    The format follows the name: a folder or `.parquet` -> parquet rows; `.jsonl` -> rows;
    `.json` -> LLaVA conversations when its records have `conversations`, else rows.
    Rows need `image` and `instruction` (`answer` optional). A row that names a request
    or has role forget is refused: general pairs must not be any request's data."""
    path = existing_path(path, "general pairs file")
    cache = ImageCache()
    base = path if path.is_dir() else path.parent
    if path.is_dir() or path.suffix == ".parquet":
        rows = parquet_rows(path)
    elif path.suffix == ".jsonl":
        rows = jsonl_rows(path)
    elif path.suffix == ".json":
        data = read_json(path)
        if isinstance(data, list) and data and all(isinstance(r, dict) and "conversations" in r for r in data):
            return [answer_sample(cache.file(resolve_image_path(str(rec["image"]), [base])), q, a, "unknown",
                                  record=str(rec.get("id", i)), split="general")
                    for i, rec in enumerate(data) if "image" in rec
                    for q, a in _turn_pairs(rec, f"{path} record {rec.get('id', i)}")]
        rows = jsonl_rows(path)
    else:
        raise ValueError(f"general pairs file {path.name}: expected a .json (LLaVA conversations or rows), "
                         ".jsonl or .parquet file, or a folder of .parquet shards")
    samples = []
    for i, row in enumerate(rows):
        where = f"{path.name} row {i + 1}"
        missing = [c for c in ("image", "instruction") if c not in row]
        if missing:
            raise ValueError(f"{where} lacks column(s) {missing}; general pairs need image and instruction")
        if row.get("request") or str(row.get("role") or "").lower() == "forget":
            raise ValueError(f"{where} belongs to request {row.get('request')!r}: general pairs must be no "
                             "request's data (leave 'request' empty)")
        samples.append(answer_sample(cache.cell(row["image"], [base], where), str(row["instruction"]),
                                     row.get("answer"), str(row.get("intent") or "unknown"), row=i, split="general"))
    return samples
