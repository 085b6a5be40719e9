"""SafeEraser's own release (github.com/yuu250/SafeEraser, `data_module.py`, `ckpt_infer.py`).

The released `dataset/` folder holds `all_train.json` (the forget set) and
`all_val.json` (held-out, for generality); each record::

    {"image_path": "dataset/img/Violence/7.jpg",   # harmful image; category = its folder
     "SDImage_path": "...",                         # benign look-alike image
     "unsafe_pairs": [{"question": "...", "model_response": "...", "sd_response": "..."}],
     "UnharmPair_text1": {"Question": "...", "Prediction": "..."},   # also text2,
     "UnharmPair_image1": {"Question": "...", "Prediction": "..."}}  # image1, image2

It differs from CORE's reuse in three ways: the harmful image is `image_path` (CORE
renamed it `image_id`), the category comes from the image's folder when there is no
`category` field, and the scope is SafeEraser's own: only a harmful question on the
harmful image is forgotten; the benign questions on the harmful image (UnharmPair_*,
with reference answers `Prediction`) and the harmful question on the benign look-alike
(`sd_response`, what the prompt-decoupling loss keeps) must still be answered.
`protocol="core"` applies CORE's either-scope to this file instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from vlforget.data.loaders._common import (
    ImageCache, answer_sample, build_request, chunk, existing_path, refusal_sample, request_id,
)
from vlforget.data.loaders.core_release import (
    COMBINATIONS, SAFETY_BENIGN_KEYS, _Builder, read_eraser_file, safety_pairs,
)
from vlforget.data.loaders.refusals import SAFETY_CATEGORIES, safety_refusals
from vlforget.types import DeletionRequest

BENIGN_KEYS = ("UnharmPair_text1", "UnharmPair_text2", "UnharmPair_image1", "UnharmPair_image2")


def load_safeeraser(path: str | Path, *, train_file: str = "all_train.json", test_file: str = "all_val.json",
                    group_by: str | None = None, keywords_per_request: int = 5,
                    protocol: str = "safeeraser", vary_refusals: bool = True, keep_unanswered: bool = True,
                    skip_missing_images: bool = False) -> list[DeletionRequest]:
    """SafeEraser's release folder (`dataset/` or the repository root holding it).

    `group_by`: "category" (one request per harmful category, the default when records
    have no `keyword`) or "keyword" (`keywords_per_request` keywords of one category
    per request). `protocol`: "safeeraser" (default, see module doc) or "core".
    """
    root = existing_path(path, "SafeEraser dataset folder")
    folder = next((d for d in (root, root / "dataset") if (d / train_file).is_file()), None)
    if folder is None:
        raise FileNotFoundError(f"SafeEraser file {train_file} not found in {root} or {root / 'dataset'}")
    if protocol not in ("safeeraser", "core"):
        raise ValueError(f"protocol must be 'safeeraser' or 'core', got {protocol!r}")
    train = read_eraser_file(folder / train_file, BENIGN_KEYS, category_from_path=True)
    test = read_eraser_file(folder / test_file, BENIGN_KEYS, category_from_path=True) \
        if (folder / test_file).is_file() else []
    has_keywords = any(r.keyword != r.category for r in train + test)
    group_by = group_by or ("keyword" if has_keywords else "category")
    if group_by not in ("keyword", "category"):
        raise ValueError(f"group_by must be 'keyword' or 'category', got {group_by!r}")

    groups: list[tuple[str, list[str]]] = []  # (field, values)
    for category in SAFETY_CATEGORIES:
        if group_by == "category":
            if any(r.category == category for r in train + test):
                groups.append(("category", [category]))
        else:
            keywords = list(dict.fromkeys(r.keyword for r in train + test if r.category == category))
            groups += [("keyword", g) for g in chunk(keywords, keywords_per_request)]

    roots = [folder, folder.parent]
    builder = _Builder(ImageCache(), skip_missing_images, vary_refusals)
    requests = []
    for gi, (field, values) in enumerate(groups):
        chosen = set(values)
        pick = (lambda r: r.category in chosen) if field == "category" else (lambda r: r.keyword in chosen)
        g_train, g_test = [r for r in train if pick(r)], [r for r in test if pick(r)]
        categories = list(dict.fromkeys(r.category for r in g_train + g_test))
        refusals = safety_refusals(categories)
        if protocol == "core":
            f_train, r_train = safety_pairs(builder, g_train, roots, refusals, ("HH",), "train", keep_unanswered)
            f_test, r_test = safety_pairs(builder, g_test, roots, refusals, COMBINATIONS, "test", keep_unanswered)
            mode = "either"
        else:
            f_train, r_train = _own_pairs(builder, g_train, roots, refusals, "train", keep_unanswered)
            f_test, r_test = _own_pairs(builder, g_test, roots, refusals, "test", keep_unanswered)
            mode = "both"
        label = ", ".join(values)
        requests.append(build_request(
            id=request_id(gi), name=f"{'+'.join(categories)}: {label}" if field == "keyword" else label,
            description=f"harmful {' and '.join(categories)} requests about {label}" if field == "keyword"
            else f"harmful {label} requests on {label} images",
            refusals=refusals, forget_train=f_train, forget_test=f_test, retain_train=r_train, retain_test=r_test,
            scope={"mode": mode, "kind": "safety", "protocol": protocol, field + "s": list(values),
                   "categories": categories},
            source="safeeraser"))
    return requests


def _own_pairs(builder, records, roots, refusals, split, keep_unanswered):
    """SafeEraser's own scope: HH forgotten; HU (UnharmPair_*) and UH (sd_response) retained."""
    forget, retain = [], []
    for r in records:
        meta = {"keyword": r.keyword, "category": r.category, "record": r.index, "data_split": split}
        harm_img = builder.image(r.harmful_image, roots)
        benign_img = builder.image(r.benign_image, roots)
        if harm_img is not None:
            for p in r.harmful:
                forget.append(refusal_sample(harm_img, p["question"], builder.refusal(refusals, len(forget)),
                                             "harmful_question", p["answer"], combination="HH",
                                             image_path=r.harmful_image, **meta))
            for q in r.benign:
                if q["answer"] or keep_unanswered:
                    retain.append(answer_sample(harm_img, q["question"], q["answer"], "benign_question",
                                                combination="HU", negative="same_image_other_instruction",
                                                pair_key=q["key"], image_path=r.harmful_image, **meta))
        if benign_img is not None:
            for p in r.harmful:
                if p["benign_answer"] or keep_unanswered:
                    retain.append(answer_sample(benign_img, p["question"], p["benign_answer"], "harmful_question",
                                                combination="UH", negative="same_instruction_other_image",
                                                image_path=r.benign_image, **meta))
    return forget, retain


__all__ = ["load_safeeraser", "SAFETY_BENIGN_KEYS"]
