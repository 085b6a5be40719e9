"""Fictitious-person benchmarks: MLLMU-Bench, CLEAR and FIUBench.

All three ask a model to forget everything about some fictitious people; a continual
sequence forgets a few people per request. Forget pairs are refused with a person
refusal ("I can't share information about this person."); the answer each pair used to
get is kept in `meta["original_answer"]` (for leakage). Retained people (the benchmark's
retain split) are spread over the requests and must still be answered.

- MLLMU-Bench (Hugging Face `MLLMMU/MLLMU-Bench`): one folder per config holding
  `train-00000-of-00001.parquet`; configs `forget_5/10/15`, `retain_95/90/85`,
  `Test_Set` (same people, other images: column `images`), `ft_Data`, `Retain_Set`
  (celebrities), `Full_Set`. A row: `image` {bytes, path}, `ID`, `biography`,
  `question`, `answer`, `Classification_Task`, `Generation_Task` [{Question,
  Ground_Truth, Type}], `Mask_Task`; `ft_Data` rows carry `metadata` (a JSON list of
  {Question, Answer}). Columns as read by MLLMU-Bench's `eval.py`.
- CLEAR (Hugging Face `therem/CLEAR`): folders `forget01/05/10`, `retain99/95/90`
  (+ `*_perturbed`, `*+tofu`, `full`, `real_faces`, `real_world`) of parquet shards;
  image rows have `image`, `caption`, `name`. Pairs as CLEAR's training reads them:
  a caption question answered by `caption`, and name recognition answered by `name`.
- FIUBench (github gray311/VLM_Unlearned, Hugging Face `gray311/FIUBench`):
  `dataset/full.json` (a list of people: `unique_id`, `image_path`, `qa_list`
  [{question, answer, ...}]) and `dataset/split.json` ({forget1, forget5, forget10,
  retain5, retain15: [unique_id]}); the retain set is everyone among the first 400
  people who is in no forget split (FIUBench's `data_module.py`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Sequence

from vlforget.data.loaders._common import (
    ImageCache, answer_sample, build_request, chunk, distribute, existing_path, parse_structured, read_json,
    read_table_folder, refusal_sample, request_id, resolve_image_path, split_test,
)
from vlforget.data.loaders.refusals import person_refusals
from vlforget.types import DeletionRequest, Sample

CAPTION_QUESTIONS = [  # CLEAR-style caption prompts (written for vlforget)
    "What can you see in this picture?",
    "Describe the image in detail.",
    "What is happening in this image?",
    "Can you describe the person in this image?",
]
NAME_QUESTION = "The name of the person on the image is "  # CLEAR's recognition prompt


def _person_requests(people: list[tuple[str, str, list[Sample], list[Sample]]],
                     retained: list[tuple[str, list[Sample], list[Sample]]], per_request: int,
                     source: str, noun: str) -> list[DeletionRequest]:
    """people: (key, label, forget_train, forget_test); retained: (key, retain_train, retain_test)."""
    if not people:
        raise ValueError(f"{source}: the forget split holds no person, so there is nothing to forget")
    groups = chunk(people, per_request)
    spread = distribute(retained, len(groups))
    requests = []
    for gi, group in enumerate(groups):
        labels = [label for _, label, _, _ in group]
        f_train = [s for _, _, tr, _ in group for s in tr]
        f_test = [s for _, _, _, te in group for s in te]
        r_train = [s for _, tr, _ in spread[gi] for s in tr]
        r_test = [s for _, _, te in spread[gi] for s in te]
        refusals = person_refusals(labels)
        requests.append(build_request(
            id=request_id(gi), name=f"{noun}: {', '.join(labels)}",
            description=f"personal information about the {noun}{'s' if len(labels) > 1 else ''} "
                        f"{', '.join(labels)}",
            refusals=refusals, forget_train=f_train, forget_test=f_test, retain_train=r_train, retain_test=r_test,
            visual=[f"a photo of {label}" for label in labels] + [f"the face of {label}" for label in labels],
            textual=["questions about a person's identity", "asking who this person is",
                     "asking about this person's life, work or background", "personal details of the person shown"],
            concepts_source="names",
            scope={"mode": "visual", "kind": "identity", "people": [key for key, _, _, _ in group]},
            source=source))
    return requests


# ------------------------------------------------------------------------ MLLMU-Bench

def _mllmu_name(row: dict[str, Any]) -> str:
    bio = parse_structured(row.get("biography"))
    if isinstance(bio, dict):
        for key in ("Name", "name"):
            if bio.get(key):
                return str(bio[key])
    return f"profile {row.get('ID', '?')}"


def _mllmu_qa(row: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train QA, test QA) of one profile row; image-grounded questions only."""
    train: list[tuple[str, str]] = []
    meta = parse_structured(row.get("metadata"))
    if isinstance(meta, list):
        train += [(str(q.get("Question", "")), str(q.get("Answer", ""))) for q in meta if isinstance(q, dict)]
    if row.get("question") and row.get("answer"):
        train.append((str(row["question"]), str(row["answer"])))
    test = []
    for item in parse_structured(row.get("Generation_Task")) or []:
        if isinstance(item, dict) and item.get("Type", "Image_Textual") == "Image_Textual":
            test.append((str(item.get("Question", "")), str(item.get("Ground_Truth", ""))))
    return [qa for qa in train if qa[0].strip()], [qa for qa in test if qa[0].strip()]


def load_mllmu(path: str | Path, *, forget_ratio: int = 5, profiles_per_request: int = 5,
               retain_profiles: int | None = 25, use_test_set: bool = True) -> list[DeletionRequest]:
    """MLLMU-Bench: forget_<r> people, `profiles_per_request` per request; retain_<100-r>
    people (the first `retain_profiles`, None = all) spread over the requests.

    Forget train: the profile's QA (`question`/`answer`, plus `metadata` when present);
    forget test: its image-grounded `Generation_Task` questions, also on the Test_Set's
    transformed image of the same person when `use_test_set`. Pure-text tasks are skipped
    (every pair needs an image)."""
    root = existing_path(path, "MLLMU-Bench folder")
    cache = ImageCache()
    forget_rows = read_table_folder(root / f"forget_{forget_ratio}", f"MLLMU-Bench forget_{forget_ratio}")
    retain_dir = root / f"retain_{100 - forget_ratio}"
    retain_rows = read_table_folder(retain_dir, f"MLLMU-Bench retain_{100 - forget_ratio}") \
        if retain_dir.exists() else []
    test_images: dict[str, Any] = {}
    if use_test_set and (root / "Test_Set").exists():
        for row in read_table_folder(root / "Test_Set", "MLLMU-Bench Test_Set"):
            images = row.get("images") or ([row["image"]] if row.get("image") else [])
            if images:
                test_images[str(row.get("ID"))] = images[0]
    roots = [root]

    people = []
    for i, row in enumerate(forget_rows):
        pid, name = str(row.get("ID", i)), _mllmu_name(row)
        image = cache.cell(row.get("image"), roots, f"MLLMU-Bench forget row {pid}")
        refusal = person_refusals([name])
        train_qa, test_qa = _mllmu_qa(row)
        meta = {"person": pid, "name": name}
        f_train = [refusal_sample(image, q, refusal[k % len(refusal)], "person_qa", a, data_split="train", **meta)
                   for k, (q, a) in enumerate(train_qa)]
        f_test = [refusal_sample(image, q, refusal[0], "person_qa", a, data_split="test", **meta) for q, a in test_qa]
        if pid in test_images:
            other = cache.cell(test_images[pid], roots, f"MLLMU-Bench Test_Set row {pid}")
            f_test += [refusal_sample(other, q, refusal[0], "person_qa", a, data_split="test_set",
                                      transformed_image=True, **meta) for q, a in test_qa]
        people.append((pid, name, f_train, f_test))
    retained = []
    for i, row in enumerate(retain_rows[: retain_profiles] if retain_profiles is not None else retain_rows):
        pid = str(row.get("ID", i))
        image = cache.cell(row.get("image"), roots, f"MLLMU-Bench retain row {pid}")
        train_qa, test_qa = _mllmu_qa(row)
        meta = {"person": pid, "name": _mllmu_name(row), "negative": "other_person"}
        retained.append((pid, [answer_sample(image, q, a, "person_qa", data_split="train", **meta)
                               for q, a in train_qa],
                         [answer_sample(image, q, a, "person_qa", data_split="test", **meta) for q, a in test_qa]))
    return _person_requests(people, retained, profiles_per_request, "mllmu", "person")


# ------------------------------------------------------------------------------ CLEAR

def _clear_pairs(rows: list[dict[str, Any]], cache: ImageCache, roots, what: str, test_fraction: float, seed: str):
    """person name -> (train pairs, test pairs) as (image, question, answer, kind)."""
    by_person: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for i, row in enumerate(rows):
        if row.get("image") is None:  # `+tofu` configs mix in text-only TOFU rows
            continue
        by_person.setdefault(str(row.get("name") or "unnamed person"), []).append((i, row))
    out = {}
    for name, items in by_person.items():
        train, test = split_test(items, test_fraction, key=lambda it: it[0], seed=f"{seed}-{name}")

        def pairs(chosen, split):
            made = []
            for i, row in chosen:
                image = cache.cell(row["image"], roots, f"{what} row {i}")
                caption = str(row.get("caption") or "")
                made.append((image, CAPTION_QUESTIONS[i % len(CAPTION_QUESTIONS)], caption, "caption", split, i))
                if row.get("name"):
                    made.append((image, NAME_QUESTION, str(row["name"]), "recognition", split, i))
            return made
        out[name] = (pairs(train, "train"), pairs(test, "test"))
    return out


def load_clear(path: str | Path, *, forget_split: str = "forget05", retain_split: str | None = None,
               names_per_request: int = 2, test_fraction: float = 0.25, retain_people: int | None = 10,
               seed: int = 0) -> list[DeletionRequest]:
    """CLEAR: the people of `forget_split` (forget01/05/10), `names_per_request` per
    request; each person's images split train/test (`test_fraction`). Retain: people of
    `retain_split` (default the complement, e.g. retain95), the first `retain_people`."""
    root = existing_path(path, "CLEAR folder")
    if retain_split is None and forget_split.startswith("forget") and forget_split[6:].isdigit():
        retain_split = f"retain{100 - int(forget_split[6:]):02d}"
    cache = ImageCache()
    forget = _clear_pairs(read_table_folder(root / forget_split, f"CLEAR {forget_split}"), cache, [root],
                          f"CLEAR {forget_split}", test_fraction, f"clear-{seed}")
    retain = {}
    if retain_split and (root / retain_split).exists():
        retain = _clear_pairs(read_table_folder(root / retain_split, f"CLEAR {retain_split}"), cache, [root],
                              f"CLEAR {retain_split}", test_fraction, f"clear-{seed}")
        retain = {k: v for k, v in retain.items() if k not in forget}
    refusal = person_refusals([])
    people = []
    for name, (train, test) in forget.items():
        meta = {"person": name, "name": name}
        make = lambda ps: [refusal_sample(img, q, refusal[k % len(refusal)], kind, a, data_split=split, row=i, **meta)
                           for k, (img, q, a, kind, split, i) in enumerate(ps)]
        people.append((name, name, make(train), make(test)))
    retained = []
    for name in list(retain)[: retain_people] if retain_people is not None else list(retain):
        train, test = retain[name]
        make = lambda ps: [answer_sample(img, q, a, kind, data_split=split, row=i, person=name, name=name,
                                         negative="other_person") for img, q, a, kind, split, i in ps]
        retained.append((name, make(train), make(test)))
    return _person_requests(people, retained, names_per_request, "clear", "person")


# --------------------------------------------------------------------------- FIUBench

def load_fiubench(path: str | Path, *, forget_split: str = "forget5", people_per_request: int = 5,
                  test_fraction: float = 0.25, retain_people: int | None = 20, data_file: str = "full.json",
                  split_file: str = "split.json", max_people: int = 400, seed: int = 0) -> list[DeletionRequest]:
    """FIUBench: the people of `forget_split` (forget1/5/10 in split.json),
    `people_per_request` per request; each person's QA list split train/test
    (`test_fraction`). Retain: FIUBench's retain set (first `max_people` people in no
    forget split), the first `retain_people` of them spread over the requests."""
    root = existing_path(path, "FIUBench folder")
    folder = next((d for d in (root, root / "dataset") if (d / data_file).is_file()), None)
    if folder is None:
        raise FileNotFoundError(f"FIUBench file {data_file} not found in {root} or {root / 'dataset'}")
    people_raw = read_json(folder / data_file)
    splits = read_json(existing_path(folder / split_file, "FIUBench split file"))
    if not isinstance(people_raw, list) or not isinstance(splits, dict):
        raise ValueError(f"{folder}: {data_file} must hold a list of people and {split_file} a mapping of splits")
    if forget_split not in splits:
        raise ValueError(f"{folder / split_file}: no split {forget_split!r}; available: {', '.join(splits)}")
    people_raw = people_raw[:max_people]
    forget_ids = [str(x) for x in splits[forget_split]]
    excluded = {str(x) for key, ids in splits.items() if key.startswith("forget") for x in ids}
    by_id = {}
    for i, person in enumerate(people_raw):
        if not isinstance(person, dict) or "unique_id" not in person or "image_path" not in person:
            raise ValueError(f"{folder / data_file}: person #{i + 1} needs 'unique_id', 'image_path' and 'qa_list'")
        by_id[str(person["unique_id"])] = person
    missing = [pid for pid in forget_ids if pid not in by_id]
    if missing:
        raise ValueError(f"{folder / data_file}: forget split {forget_split!r} names unknown people {missing[:5]}")
    cache = ImageCache()
    roots = [folder, folder.parent, folder / "images"]
    refusal = person_refusals([])

    def qa_pairs(person):
        image = cache.file(resolve_image_path(str(person["image_path"]), roots))
        qas = [qa for qa in person.get("qa_list") or [] if isinstance(qa, dict) and str(qa.get("question", "")).strip()]
        indexed = list(enumerate(qas))
        train, test = split_test(indexed, test_fraction, key=lambda it: it[0], seed=f"fiu-{seed}-{person['unique_id']}")
        return image, train, test

    people = []
    for pid in forget_ids:
        image, train, test = qa_pairs(by_id[pid])
        meta = {"person": pid}
        make = lambda items, split: [refusal_sample(image, str(qa["question"]), refusal[k % len(refusal)],
                                                    "person_qa", str(qa.get("answer", "")), data_split=split, qa=j,
                                                    **meta) for k, (j, qa) in enumerate(items)]
        people.append((pid, pid, make(train, "train"), make(test, "test")))
    retained = []
    retain_ids = [pid for pid in by_id if pid not in excluded]
    for pid in retain_ids[: retain_people] if retain_people is not None else retain_ids:
        image, train, test = qa_pairs(by_id[pid])
        make = lambda items, split: [answer_sample(image, str(qa["question"]), str(qa.get("answer", "")), "person_qa",
                                                   data_split=split, qa=j, person=pid, negative="other_person")
                                     for j, qa in items]
        retained.append((pid, make(train, "train"), make(test, "test")))
    return _person_requests(people, retained, people_per_request, "fiubench", "person")


# ----------------------------------------------------------- people outside the sequence
# The retain splits hold many more people than a sequence keeps as retain data
# (`retain_profiles` / `retain_people`). The rest belong to no request and none of their
# pairs is evaluated: general pairs for methods that fit on general data
# (`loaders/general.py`). Read again only when a method asks for general pairs.

def _options(loader, options: dict[str, Any]) -> dict[str, Any]:
    """The loader's options with its own defaults filled in (so the two never drift)."""
    defaults = {k: p.default for k, p in inspect.signature(loader).parameters.items() if k != "path"}
    return {**defaults, **{k: v for k, v in options.items() if k in defaults}}


def _general(image, qas, **meta) -> list[Sample]:
    return [answer_sample(image, q, a, "person_qa", split="general", negative="other_person", **meta)
            for q, a in qas if str(q).strip()]


def mllmu_spare_people(path: str | Path, options: dict[str, Any]) -> list[Sample]:
    """Every QA (train and Generation_Task) of the retain_<100-r> profiles after the first
    `retain_profiles` (the ones the sequence keeps as retain data)."""
    o = _options(load_mllmu, options)
    root = existing_path(path, "MLLMU-Bench folder")
    retain_dir = root / f"retain_{100 - o['forget_ratio']}"
    if o["retain_profiles"] is None or not retain_dir.exists():
        return []
    cache, out = ImageCache(), []
    rows = read_table_folder(retain_dir, f"MLLMU-Bench retain_{100 - o['forget_ratio']}")
    for i, row in enumerate(rows[o["retain_profiles"]:], start=o["retain_profiles"]):
        pid = str(row.get("ID", i))
        train_qa, test_qa = _mllmu_qa(row)
        out += _general(cache.cell(row.get("image"), [root], f"MLLMU-Bench retain row {pid}"), train_qa + test_qa,
                        person=pid, name=_mllmu_name(row))
    return out


def clear_spare_people(path: str | Path, options: dict[str, Any]) -> list[Sample]:
    """Caption and name pairs on every photo of the retain split's people after the first
    `retain_people` (people of the forget split left out, as the loader does)."""
    o = _options(load_clear, options)
    root = existing_path(path, "CLEAR folder")
    retain_split = o["retain_split"]
    if retain_split is None and o["forget_split"].startswith("forget") and o["forget_split"][6:].isdigit():
        retain_split = f"retain{100 - int(o['forget_split'][6:]):02d}"
    if o["retain_people"] is None or not retain_split or not (root / retain_split).exists():
        return []
    forgotten = {str(r.get("name") or "unnamed person") for r in read_table_folder(
        root / o["forget_split"], f"CLEAR {o['forget_split']}") if r.get("image") is not None}
    rows = read_table_folder(root / retain_split, f"CLEAR {retain_split}")
    people = dict.fromkeys(str(r.get("name") or "unnamed person") for r in rows if r.get("image") is not None)
    names = [n for n in people if n not in forgotten]
    spare = set(names[o["retain_people"]:])
    pairs = _clear_pairs([r if str(r.get("name") or "unnamed person") in spare else {"image": None} for r in rows],
                         ImageCache(), [root], f"CLEAR {retain_split}", 0.0, "general")
    return [answer_sample(img, q, a, kind, split="general", row=i, person=name, name=name, negative="other_person")
            for name, (train, test) in pairs.items() for img, q, a, kind, _, i in train + test]


def fiubench_spare_people(path: str | Path, options: dict[str, Any]) -> list[Sample]:
    """Every QA of FIUBench's retained people (first `max_people`, in no forget split) after
    the first `retain_people`."""
    o = _options(load_fiubench, options)
    root = existing_path(path, "FIUBench folder")
    folder = next((d for d in (root, root / "dataset") if (d / o["data_file"]).is_file()), None)
    if folder is None or o["retain_people"] is None:
        return []
    people = [p for p in read_json(folder / o["data_file"])[: o["max_people"]] if isinstance(p, dict)]
    splits = read_json(existing_path(folder / o["split_file"], "FIUBench split file"))
    excluded = {str(x) for key, ids in splits.items() if key.startswith("forget") for x in ids}
    retained = [p for p in people if str(p.get("unique_id")) not in excluded]
    cache, roots, out = ImageCache(), [folder, folder.parent, folder / "images"], []
    for person in retained[o["retain_people"]:]:
        image = cache.file(resolve_image_path(str(person["image_path"]), roots))
        out += _general(image, [(str(qa.get("question", "")), str(qa.get("answer", "")))
                                for qa in person.get("qa_list") or [] if isinstance(qa, dict)],
                        person=str(person["unique_id"]))
    return out


SPARE_PEOPLE = {"mllmu": mllmu_spare_people, "clear": clear_spare_people, "fiubench": fiubench_spare_people}
__all__ = ["load_mllmu", "load_clear", "load_fiubench", "SPARE_PEOPLE"]
