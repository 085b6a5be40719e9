"""Dataset loaders: each published layout -> deletion requests (fixtures in tests/fixtures/loaders)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from vlforget.data.loaders import LOADERS, load_sequence
from vlforget.data.loaders.refusals import CLASSIFICATION_REFUSALS, SAFETY_REFUSALS
from vlforget.types import DeletionRequest

F = Path(__file__).parent / "fixtures" / "loaders"
CORE_OPTS = dict(keywords_per_request=2, classes_per_request=2, imagenet_requests=2)


def _check(requests):
    assert requests and all(isinstance(r, DeletionRequest) for r in requests)
    assert len({r.id for r in requests}) == len(requests)
    for r in requests:
        assert r.forget_train and r.refusals
        for s in r.forget_train + r.forget_test:
            assert s.answer in r.refusals and s.meta["split"] == "forget"
        for s in r.forget_train + r.forget_test + r.retain_train + r.retain_test:
            assert isinstance(s.image, Image.Image) and s.image.mode == "RGB" and s.image.size == (8, 8)
            assert s.instruction.strip()
        for s in r.retain_train + r.retain_test:
            assert s.meta["split"] == "retain" and s.answer not in r.refusals


def test_unknown_format_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: core, safeeraser"):
        load_sequence("nope", F)
    with pytest.raises(ValueError, match="unknown option"):
        load_sequence("core", F / "core", colour="red")


def test_core_layout_builds_category_groups_and_imagenet_requests():
    reqs = load_sequence("core", F / "core", **CORE_OPTS)
    _check(reqs)
    assert [r.name for r in reqs] == ["Violence: BombAttack", "Weapon: Tank, Gun", "Privacy: secretly record",
                                      "classify: goldfish, lion", "classify: tiger, hen"]
    weapon = reqs[1]
    assert weapon.refusals == SAFETY_REFUSALS["Weapon"]
    assert {s.meta["combination"] for s in weapon.forget_train} == {"HH"}  # CORE trains on HH only
    assert {s.meta["combination"] for s in weapon.forget_test} == {"HH", "HU", "UH"}
    assert len(weapon.forget_test) == 2 * (2 + 2 + 2)  # 2 records x (HH 2 + HU 2 + UH 2)
    assert {s.meta["combination"] for s in weapon.retain_test} == {"UU"}
    assert not any(s.meta["answer_known"] for s in weapon.retain_test)  # CORE's file has no reference answers
    assert weapon.concepts.visual[:2] == ["a photo of Tank", "a scene showing Tank"]
    assert weapon.scope["mode"] == "either"
    cls = reqs[3]
    assert cls.refusals == CLASSIFICATION_REFUSALS and cls.scope["kind"] == "classification"
    assert {s.meta["original_answer"] for s in cls.forget_train} == {"goldfish", "lion"}
    assert {s.answer for s in cls.retain_train} == {"zebra"}  # the class no request forgets
    assert "an orange fish" in cls.concepts.visual


def test_core_options_and_subsets():
    only_in = load_sequence("core", F / "core", include=["imagenet_r"], class_groups=[["lion"]])
    assert [r.name for r in only_in] == ["classify: lion"]
    with pytest.raises(ValueError, match="absent from the data"):
        load_sequence("core", F / "core", keyword_groups=[["Nope"]])
    both = load_sequence("core", F / "core", include=["imagenet_r"], class_groups=[["lion"]], imagenet_scope="both")
    assert {s.meta["combination"] for s in both[0].forget_test} == {"HH"}


def test_safeeraser_release_scope():
    reqs = load_sequence("safeeraser", F / "safeeraser")
    _check(reqs)
    assert [r.name for r in reqs] == ["Violence", "Weapon"]  # category from the image folder
    weapon = reqs[1]
    assert len(weapon.forget_train) == 2 and weapon.forget_train[0].meta["original_answer"] == "Step 1: ..."
    combos = {s.meta["combination"] for s in weapon.retain_train}
    assert combos == {"HU", "UH"} and all(s.meta["answer_known"] for s in weapon.retain_train)
    core_style = load_sequence("safeeraser", F / "safeeraser", protocol="core")
    assert {s.meta["combination"] for s in core_style[1].forget_test} == {"HH", "HU", "UH"}


def test_fiubench():
    reqs = load_sequence("fiubench", F / "fiubench", people_per_request=2)
    _check(reqs)
    assert [r.scope["people"] for r in reqs] == [["00000001", "00000002"], ["00000003"]]
    assert len(reqs[0].forget_train) + len(reqs[0].forget_test) == 8
    assert {s.meta["person"] for s in reqs[0].retain_train} == {"00000005"}  # in no forget split
    with pytest.raises(ValueError, match="no split"):
        load_sequence("fiubench", F / "fiubench", forget_split="forget99")


def test_llava_json_with_spec():
    reqs = load_sequence("llava_json", F / "llava" / "conversations.json", spec=F / "llava" / "spec.yaml")
    _check(reqs)
    cars, dogs = reqs
    assert {s.meta["record"] for s in cars.forget_train + cars.forget_test} == {"0000", "0001"}
    assert {s.meta["record"] for s in dogs.forget_train + dogs.forget_test} == {"0002", "0003"}
    assert "<image>" not in cars.forget_train[0].instruction
    assert cars.refusal == "I can't help with questions about cars."
    assert dogs.concepts.visual == ["a dog"]
    with pytest.raises(ValueError, match="request spec"):
        load_sequence("llava_json", F / "llava" / "conversations.json")


def test_jsonl_table():
    reqs = load_sequence("jsonl", F / "table" / "pairs.jsonl")
    _check(reqs)
    stars, faces = reqs
    assert stars.refusal == "I can't count stars."
    assert len(stars.forget_train) + len(stars.forget_test) == 3
    assert "What colour is the star?" in [s.instruction for s in stars.retain_train + stars.retain_test]


@pytest.mark.parametrize("name,path,opts", [
    ("mllmu", "mllmu", dict(profiles_per_request=2)),
    ("clear", "clear", dict(names_per_request=2)),
    ("parquet", "table/pairs.parquet", {}),
])
def test_parquet_formats(name, path, opts):
    pytest.importorskip("pyarrow")
    reqs = load_sequence(name, F / path, **opts)
    _check(reqs)
    if name == "mllmu":
        assert reqs[0].scope["people"] == ["000", "001"]
        assert any(s.meta.get("transformed_image") for s in reqs[0].forget_test)  # Test_Set image
        assert all(s.instruction != "Where was Ava Stone born?" for s in reqs[0].forget_test)  # pure text skipped
    if name == "clear":
        assert {s.meta["original_answer"] for s in reqs[0].forget_train if s.intent == "recognition"} == {
            "Ana Vey", "Ben Orr"}


def test_parquet_without_pyarrow_says_what_to_install(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake(name, *args, **kwargs):
        if name.startswith(("pyarrow", "pandas")):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        load_sequence("parquet", F / "table" / "pairs.parquet")


@pytest.mark.parametrize("name", list(LOADERS))
def test_bad_path(name, tmp_path):
    with pytest.raises(FileNotFoundError):
        load_sequence(name, tmp_path / "missing")


def _copy(sub, tmp_path):
    return Path(shutil.copytree(F / sub, tmp_path / sub))


@pytest.mark.parametrize("sub,name,image,opts", [
    ("core", "core", "safe_eraser/dataset/img/Weapon/train_1.png", CORE_OPTS),
    ("safeeraser", "safeeraser", "dataset/img/Weapon/train_1.png", {}),
    ("fiubench", "fiubench", "dataset/images/00000002.png", dict(people_per_request=2)),
    ("llava", "llava_json", "images/0001.png", {}),
    ("table", "jsonl", "images/1.png", {}),
])
def test_corrupt_and_missing_images_name_the_file(sub, name, image, opts, tmp_path):
    root = _copy(sub, tmp_path)
    target = {"llava": root / "conversations.json", "table": root / "pairs.jsonl"}.get(sub, root)
    if sub == "llava":
        opts = dict(spec=root / "spec.yaml")
    (root / image).write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=f"corrupt.*{Path(image).name}"):
        load_sequence(name, target, **opts)
    (root / image).unlink()
    with pytest.raises(ValueError, match=f"not found.*{Path(image).name}"):
        load_sequence(name, target, **opts)


def test_core_can_skip_missing_images(tmp_path):
    root = _copy("core", tmp_path)
    (root / "safe_eraser/dataset/img/Weapon/train_1.png").unlink()
    reqs = load_sequence("core", root, skip_missing_images=True, **CORE_OPTS)
    assert len(reqs[1].forget_train) == 2


def test_empty_forget_set_is_a_clear_error(tmp_path):
    root = _copy("table", tmp_path)
    rows = [json.loads(line) for line in (root / "pairs.jsonl").read_text().splitlines()]
    (root / "pairs.jsonl").write_text("".join(json.dumps({**r, "request": ""}) + "\n" for r in rows))
    with pytest.raises(ValueError, match="nothing to forget"):
        load_sequence("jsonl", root / "pairs.jsonl")
    root = _copy("fiubench", tmp_path)
    data = json.loads((root / "dataset/full.json").read_text())
    for person in data:
        person["qa_list"] = []
    (root / "dataset/full.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="empty forget set"):
        load_sequence("fiubench", root)
