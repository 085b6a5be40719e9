"""General pairs of a loaded benchmark (`LoadedSequence.general_pool`): where they come
from per format, that they never hold a forget or evaluated pair, reproducible draws, the
`general:` file, the errors; and mllmeraser / sauce / eco running on loaded data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from vlforget.cli import app
from vlforget.data.loaders import load_sequence
from vlforget.data.loaders.general import PairKeys
from vlforget.data.loaders.sequence import LoadedSequence
from vlforget.data.utility import WithUtility
from vlforget.types import Sample

from test_loaded_runs import LOADER_FIXTURES

pytestmark = pytest.mark.usefixtures("one_thread")
F = Path(__file__).parent / "fixtures" / "loaders"
TABLE = F / "table" / "pairs.jsonl"

# every format's fixture as a sequence of several requests (the loader tests' table; the
# parquet fixture holds the jsonl fixture's rows, so it adds nothing here)
LAYOUT_FIXTURES = [fixture for fixture in LOADER_FIXTURES if fixture[0] != "parquet"]


def _request_keys(sequence: LoadedSequence) -> set:
    key = PairKeys()
    return {key(s) for r in sequence.requests() for s in [*r.forget_train, *r.forget_test, *r.retain_test]}


@pytest.mark.parametrize("name,path,options", LAYOUT_FIXTURES, ids=[f[0] for f in LAYOUT_FIXTURES])
def test_the_layout_pool_holds_no_forget_or_evaluated_pair_and_draws_reproducibly(name, path, options):
    if name in ("mllmu", "clear"):
        pytest.importorskip("pyarrow")
    sequence = LoadedSequence(name, F / path, options)
    drawn = sequence.general_pool(50, "probe")
    assert len(drawn) == 50  # the fixtures hold fewer: cycled
    distinct = {id(s) for s in drawn}
    assert len(distinct) == len(sequence._general) and min(drawn.count(s) for s in drawn) >= 50 // len(distinct)
    key = PairKeys()
    assert not {key(s) for s in drawn} & _request_keys(sequence)
    assert [id(s) for s in sequence.general_pool(50, "probe")] == [id(s) for s in drawn]  # same tag, same draw
    assert [id(s) for s in sequence.general_pool(50, "gate")] != [id(s) for s in drawn]


def test_safeeraser_pool_is_unrelated_images_with_unrelated_questions():
    sequence = LoadedSequence("safeeraser", F / "safeeraser", {})
    pool = sequence.general_pool(200, "x")
    forget_images = {id(s.image) for r in sequence.requests() for s in r.forget_train + r.forget_test}
    forget_questions = {s.instruction for r in sequence.requests() for s in r.forget_train + r.forget_test}
    assert {s.meta["combination"] for s in pool} == {"UU"}
    assert not {id(s.image) for s in pool} & forget_images
    assert not {s.instruction for s in pool} & forget_questions


@pytest.mark.parametrize("name,path,options,spare", [
    ("mllmu", "mllmu", dict(profiles_per_request=2, retain_profiles=1), {"004", "005", "006"}),
    ("clear", "clear", dict(names_per_request=2, retain_people=1), {"Eli Fen"}),
    ("fiubench", "fiubench", dict(people_per_request=2, retain_people=0), {"00000005"}),
])
def test_person_benchmarks_add_the_retained_people_the_sequence_leaves_out(name, path, options, spare):
    if name in ("mllmu", "clear"):
        pytest.importorskip("pyarrow")
    sequence = LoadedSequence(name, F / path, options)
    sequence.general_pool(1, "x")
    in_sequence = {s.meta["person"] for r in sequence.requests() for s in r.retain_train + r.retain_test}
    outside = {s.meta["person"] for s in sequence._general if s.meta["split"] == "general"}
    assert outside == spare and not outside & in_sequence
    assert not {PairKeys()(s) for s in sequence._general} & _request_keys(sequence)


def test_a_pool_without_general_pairs_names_the_option(tmp_path):
    rows = [{"image": f"{i}.png", "instruction": "Who is this?", "answer": name, "request": "faces"}
            for i, name in enumerate(["Ann", "Bob"])]  # forget rows only: nothing general
    for i in range(2):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sequence = LoadedSequence("jsonl", tmp_path / "pairs.jsonl", {})
    with pytest.raises(ValueError, match="general: FILE"):
        sequence.general_pool(4, "x")


def _general_file(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        Image.new("RGB", (8, 8), (10 * i, 200, 90)).save(folder / f"g{i}.png")
        row.setdefault("image", f"g{i}.png")
    path = folder / "general.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_named_general_file_replaces_the_layout_pool(tmp_path):
    path = _general_file(tmp_path / "g", [{"instruction": f"what is shown {i}?", "answer": "a box"} for i in range(5)])
    sequence = LoadedSequence("jsonl", TABLE, {"general": str(path)})
    assert sequence.config["general"] == "general.jsonl" and sequence.config["options"] == {}  # name only
    drawn = sequence.general_pool(3, "t")
    assert len(drawn) == 3 and all(s.instruction.startswith("what is shown") for s in drawn)
    question = Sample(drawn[0].image, "A or B?", "A", meta={"utility_source": "mmbench"})
    assert WithUtility(sequence, [question], "u.tsv").general_pool(3, "t") == drawn  # --utility keeps the pool


def test_a_named_file_in_llava_json_is_read_too(tmp_path):
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a.png")
    path = tmp_path / "general.json"
    path.write_text(json.dumps([{"id": "1", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Black."}]}]))
    (pair,) = LoadedSequence("jsonl", TABLE, {"general": str(path)}).general_pool(1, "t")
    assert (pair.instruction, pair.answer) == ("What colour?", "Black.")


def test_a_named_file_never_contributes_forget_or_test_pairs(tmp_path):
    forget_row = json.loads(TABLE.read_text().splitlines()[0])
    with pytest.raises(ValueError, match="row 1 belongs to request 'stars'"):
        LoadedSequence("jsonl", TABLE, {"general": str(_general_file(tmp_path / "a", [dict(forget_row)]))})
    # the same pair with the request column emptied is still the forget pair: dropped
    same = {**forget_row, "image": str(TABLE.parent / forget_row["image"]), "request": "", "role": ""}
    other = {"instruction": "what is this?", "answer": "a box"}
    sequence = LoadedSequence("jsonl", TABLE, {"general": str(_general_file(tmp_path / "b", [same, other]))})
    assert {s.instruction for s in sequence.general_pool(6, "t")} == {"what is this?"}


@pytest.mark.parametrize("value,error,match", [
    (3, ValueError, "expects the path of a file or folder of general pairs"),
    ("nowhere/general.jsonl", FileNotFoundError, "general pairs file not found"),
])
def test_bad_general_values_are_clear_errors(value, error, match):
    with pytest.raises(error, match=match):
        LoadedSequence("jsonl", TABLE, {"general": value})


def test_a_misspelt_general_option_is_suggested_and_load_sequence_points_to_the_sequence():
    with pytest.raises(ValueError, match="did you mean 'general'"):
        LoadedSequence("jsonl", TABLE, {"genral": "x.jsonl"})
    with pytest.raises(ValueError, match="belongs to the loaded sequence"):
        load_sequence("jsonl", TABLE, general="x.jsonl")


# ------------------------------------------------------------------ the methods on loaded data

def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _run(tmp_path: Path, method: str, config: dict, data_options: dict | None = None):
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(config))
    args = ["run", "--dataset", "jsonl", "--data", TABLE, "--method", method, "--config", tmp_path / "m.yaml",
            "--limit", 1, "--judge", "lexical", "--out", tmp_path / "run"]
    if data_options:
        (tmp_path / "d.yaml").write_text(yaml.safe_dump(data_options))
        args += ["--data-config", tmp_path / "d.yaml"]
    return _cli(*args)


SMALL = {"sauce": {"sae_pairs": 16, "sae_steps": 20, "sae_batch": 64, "features": 64},
         "eco": {"classifier_negatives": 8, "classifier_steps": 20, "search_steps": 2}}
MLLMERASER = {"refusal_pool": 8, "attack_steps": 1, "gate_negatives": 8}


@pytest.mark.parametrize("method", sorted(SMALL))
def test_methods_fitting_on_general_pairs_run_on_the_layout_pool(method, tmp_path):
    result = _run(tmp_path, method, SMALL[method])
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "run" / "results.json").read_text())["steps"]) == 1


def test_mllmeraser_runs_on_a_named_general_file_the_model_refuses_some_of(tmp_path):
    from vlforget.data.benchmark import Benchmark

    # the built-in model declines "what colour is the cross?" on an image without a cross
    declined = [s for s in Benchmark().general_pool(400, "general-file") if s.should_decline][:4]
    assert declined
    folder = tmp_path / "general"
    folder.mkdir()
    for i, s in enumerate(declined):
        s.image.save(folder / f"{i}.png")
    (folder / "pairs.jsonl").write_text("".join(
        json.dumps({"image": f"{i}.png", "instruction": s.instruction, "answer": s.answer}) + "\n"
        for i, s in enumerate(declined)))
    result = _run(tmp_path, "mllmeraser", MLLMERASER, {"general": str(folder / "pairs.jsonl")})
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "results.json").read_text())["benchmark_config"]["general"] == "pairs.jsonl"


def test_mllmeraser_stops_with_its_own_error_when_the_pool_holds_no_refusal(tmp_path):
    result = _run(tmp_path, "mllmeraser", MLLMERASER)  # the table's two general pairs are answered
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "refused none of 8 general pairs" in result.output
