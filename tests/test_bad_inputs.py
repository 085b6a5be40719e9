"""Every bad input a careful or hostile user can give: one clear line and exit code 2, or it works.

One table, one row per case: what is written, how it is handed in, and the message
expected. Most rows stop before any model loads; the rows that need a finished run
share one (`small_run`: one request, two training steps).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
import yaml
from filelock import FileLock
from PIL import Image
from typer.testing import CliRunner

from vlforget.cli import app
from vlforget.configs import build_config
from vlforget.data.benchmark import BenchmarkConfig
from vlforget.data.requests import load_paraphrases, load_specs
from vlforget.methods.core.config import CoreConfig
from vlforget.methods.lora_finetune import FinetuneConfig

GOOD_REQUEST = {"name": "stars", "description": "Do not identify stars.", "mode": "both",
                "visual": {"shape": "star"}, "intents": ["identify"], "refusals": ["sorry, i cannot identify stars."]}


def request(**changes) -> dict:
    item = {**GOOD_REQUEST, **changes}
    return {k: v for k, v in item.items() if v is not DROP}


DROP = object()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data: nothing to decode)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def one_line_error(result, expected: str) -> None:
    """Exit code 2, the expected text, one line, no traceback."""
    output = result.output
    assert result.exit_code == 2, (result.exit_code, output, result.exception)
    assert "Traceback" not in output
    assert expected in " ".join(output.split()), output
    assert output.strip().startswith("error:") and output.strip().count("\n") == 0, output


# ----------------------------------------------------------------------------- config files
# (file name, text written, method, expected message; None = it works)
CONFIG_CASES = [
    ("heavy.yaml", "retain_weight: heavy\n", "idknll", "heavy.yaml: field 'retain_weight' must be a number, got 'heavy'"),
    ("steps-float.yaml", "steps: 1.5\n", "idknll", "field 'steps' must be an integer, got 1.5"),
    ("steps-negative.yaml", "steps: -1\n", "idknll", "field 'steps' must be >= 0, got -1"),
    ("lr-zero.yaml", "lr: 0\n", "idknll", "field 'lr' must be > 0, got 0.0"),
    ("lr-nan.yaml", "lr: .nan\n", "idknll", "field 'lr' must be a finite number, got nan"),
    ("batch-bool.yaml", "batch_size: true\n", "idknll", "field 'batch_size' must be an integer, got True (bool)"),
    ("typo.yaml", "setps: 3\n", "idknll", "typo.yaml; did you mean 'steps'?"),
    ("list.yaml", "- steps\n- 3\n", "idknll", "list.yaml: expected a mapping of config keys, got list"),
    ("broken.yaml", "steps: [1, 2\n", "idknll", "could not parse"),
    ("threshold.yaml", "threshold: 2\n", "core", "field 'threshold' must be <= 1, got 2.0"),
    ("source.yaml", "concept_source: [request]\n", "core", "field 'concept_source' must be a string, got ['request']"),
    ("source-name.yaml", "concept_source: magic\n", "core", "unknown concept_source 'magic'"),
    ("topk.yaml", "top_k: 50\n", "core", "top_k must be in 1..pool_size (20), got 50"),
    ("temperature.yaml", "neighbour_temperature: -0.1\n", "core", "field 'neighbour_temperature' must be >= 0, got -0.1"),
    ("seed.yaml", "seed: -5\n", "idknll", "field 'seed' must be >= 0, got -5"),
    ("encoder.yaml", "concept_encoder: no-such-clip\n", "core", "concept_encoder 'no-such-clip' is neither a model folder"),
]


@pytest.mark.parametrize("name, text, method, expected", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_file_is_one_line(name, text, method, expected, tmp_path):
    path = tmp_path / name
    path.write_text(text)
    one_line_error(cli("run", "--method", method, "--config", str(path), "--out", str(tmp_path / "out"),
                       "--limit", "1"), expected)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_number_written_as_a_yaml_string_works():
    # PyYAML reads `lr: 1e-4` (no dot) as the string "1e-4": it is the number the user meant.
    config = build_config(FinetuneConfig, yaml.safe_load("lr: 1e-4\nretain_weight: 2\n"), where="my.yaml")
    assert config.lr == 1e-4 and config.retain_weight == 2.0 and isinstance(config.retain_weight, float)


def test_missing_config_file(tmp_path):
    missing = tmp_path / "absent" / "cfg.yaml"
    one_line_error(cli("run", "--config", str(missing), "--out", str(tmp_path / "x"), "--limit", "1"),
                   f"config file not found: {missing}")


def test_compare_config_entry_not_a_mapping(tmp_path):
    path = tmp_path / "cmp.yaml"
    path.write_text("idknll: 3\n")
    one_line_error(cli("compare", "--methods", "idknll", "--config", str(path), "--out", str(tmp_path / "o")),
                   "'idknll' should map to that method's config overrides")


@pytest.mark.parametrize("text, expected", [
    ("vision_steps: lots\n", "field 'vision_steps' must be an integer, got 'lots'"),
    ("lr: -1\n", "field 'lr' must be >= 0, got -1.0"),
    ("epochs: 3\n", "unknown key 'epochs'"),
], ids=["pretrain-type", "pretrain-range", "pretrain-unknown"])
def test_bad_pretrain_settings(text, expected, tmp_path):
    path = tmp_path / "pretrain.yaml"
    path.write_text(text)
    one_line_error(cli("pretrain", "--config", str(path), "--out", str(tmp_path / "model")), expected)


def test_benchmark_config_field_types(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text("n_utility: lots\n")
    one_line_error(cli("base-eval", "--config", str(path)), "bench.yaml: field 'n_utility' must be an integer")
    with pytest.raises(ValueError, match="field 'n_forget_test' must be >= 1, got 0"):
        build_config(BenchmarkConfig, {"n_forget_test": 0}, where="b.yaml")
    with pytest.raises(ValueError, match="field 'top_k' must be >= 1"):
        build_config(CoreConfig, {"top_k": 0}, where="c.yaml")


# ---------------------------------------------------------------------------- request files
# (case id, requests written, expected message)
REQUEST_CASES = [
    ("refusals-a-string", [request(refusals="sorry")],
     "request #1 ('stars'): field 'refusals' must be a list of strings, got 'sorry' (str)"),
    ("no-name", [request(name=DROP)], "request #1: missing field(s) name"),
    ("no-refusals", [request(refusals=DROP)], "request #1 ('stars'): missing field(s) refusals"),
    ("visual-a-list", [request(visual=["star"])], "field 'visual' must be a mapping, got ['star'] (list)"),
    ("huge-refusal", [request(refusals=["no " * 13_334])], "field 'refusals'[0] is 40002 characters long; at most 300"),
    ("huge-name", [request(name="s" * 200)], "field 'name' is 200 characters long; at most 80"),
    ("empty-name", [request(name="  ")], "a request needs a non-empty name"),
    ("empty-refusal", [request(refusals=[""])], "request 'stars': a refusal sentence is empty"),
    ("unknown-mode", [request(mode="sometimes")], "unknown mode 'sometimes'"),
    ("unknown-intent", [request(intents=["dance"])], "unknown intent 'dance'"),
    ("intents-a-string", [request(intents="identify")], "field 'intents' must be a list of strings"),
    ("unknown-shape", [request(visual={"shape": "hexagon"})], "unknown shape 'hexagon'"),
    ("unknown-field", [request(colour="red")], "unknown field(s) ['colour']"),
    ("duplicate-names", [request(), request()], "request names must be unique; repeated: stars"),
    ("not-a-mapping", ["stars"], "request #1 must be a mapping of fields, got str"),
    ("empty-list", [], "a request file must hold a non-empty list of requests"),
    ("name-a-number", [request(name=7)], "field 'name' must be a string, got 7 (int)"),
    ("kind-unknown", [request(kind="essay")], "unknown kind 'essay'"),
]


@pytest.mark.parametrize("case, items, expected", REQUEST_CASES, ids=[c[0] for c in REQUEST_CASES])
def test_bad_request_file_is_one_line(case, items, expected, tmp_path):
    path = tmp_path / "requests.yaml"
    path.write_text(yaml.safe_dump(items))
    with pytest.raises(ValueError) as caught:
        load_specs(path)
    assert str(path) in str(caught.value) and expected in str(caught.value)
    one_line_error(cli("run", "--method", "idknll", "--tasks", str(path), "--out", str(tmp_path / "out"),
                       "--limit", "1"), expected)


def test_request_file_unparseable_or_a_folder(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("- name: [stars\n")
    with pytest.raises(ValueError, match="could not parse request file .*broken.yaml"):
        load_specs(path)
    with pytest.raises(ValueError, match="is a folder, not a file"):
        load_specs(tmp_path)


# ------------------------------------------------------------------------- paraphrase files
PARAPHRASE_CASES = [
    ("malformed", "identify: [what is {obj}\n", "could not parse paraphrase file"),
    ("not-a-mapping", "- what is it?\n", "expected a mapping intent -> list of templates, got list"),
    ("unknown-placeholder", "colour: ['what colour is the {thing}?']\n",
     "uses {thing}; this intent's templates may use {obj}"),
    ("unbalanced-brace", "colour: ['what colour is the {obj?']\n", "is not a valid format string"),
    ("unknown-intent", "dance: ['can it dance?']\n", "unknown intent 'dance'"),
    ("not-strings", "colour: [1, 2]\n", "needs a non-empty list of template strings"),
]


@pytest.mark.parametrize("case, text, expected", PARAPHRASE_CASES, ids=[c[0] for c in PARAPHRASE_CASES])
def test_bad_paraphrase_file_is_one_line(case, text, expected, tmp_path):
    path = tmp_path / "para.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=None) as caught:
        load_paraphrases(path)
    assert expected in str(caught.value)
    one_line_error(cli("run", "--method", "idknll", "--paraphrases", str(path), "--out", str(tmp_path / "o"),
                       "--limit", "1"), expected)


# ------------------------------------------------------------------------------ CLI numbers
@pytest.mark.parametrize("args, expected", [
    (["run", "--limit", "0"], "--limit must be >= 1 (the number of requests to run), got 0"),
    (["run", "--limit", "-1"], "--limit must be >= 1 (the number of requests to run), got -1"),
    (["compare", "--methods", "idknll", "--limit", "0"], "--limit must be >= 1"),
    (["run", "--seed", "-1", "--limit", "1"], "--seed must be in 0..2147483647, got -1"),
    (["compare", "--methods", " , ", "--limit", "1"], "--methods needs at least one method name"),
    (["compare", "--methods", "ga,ga", "--limit", "1"], "--methods names a method twice"),
    (["run", "--sequence", "train", "--limit", "1"], "--sequence must be test or validation, got 'train'"),
    (["run", "--sequence", "validation", "--benchmark-version", "1", "--limit", "1"],
     "--sequence validation is the built-in benchmark v2's"),
], ids=["limit-0", "limit-negative", "compare-limit-0", "seed-negative", "no-methods", "method-twice",
        "sequence-unknown", "validation-v1"])
def test_bad_numbers_and_lists(args, expected, tmp_path):
    one_line_error(cli(*args, "--out", str(tmp_path / "o")), expected)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------ images and chat
def test_chat_bad_inputs(tmp_path):
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header(20_000, 20_000))
    one_line_error(cli("chat", "--image", str(huge), "what is it?"), "has more than 40,000,000 pixels")
    wide = tmp_path / "wide.png"
    wide.write_bytes(png_header(9_000, 5_000))  # under PIL's own bomb limit, over ours
    one_line_error(cli("chat", "--image", str(wide), "what is it?"), "is 9000x5000 pixels; at most 40,000,000")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"GIF89a not really")
    one_line_error(cli("chat", "--image", str(junk), "what is it?"), "could not decode image")
    one_line_error(cli("chat", "--image", str(tmp_path / "none.png"), "what is it?"), "image not found")
    one_line_error(cli("chat", "--image", str(tmp_path), "what is it?"), "is not a file")
    fine = tmp_path / "fine.png"
    Image.new("RGB", (48, 48), "red").save(fine)
    one_line_error(cli("chat", "--image", str(fine), "   "), "the instruction is empty")
    one_line_error(cli("chat", "--image", str(fine), "why " * 1000), "the instruction is 4000 characters long")
    one_line_error(cli("chat", "--image", str(fine), "--state", str(tmp_path), "--step", "-1", "what?"),
                   "--step must be >= 0")


# ------------------------------------------------------------------------- model folders
def test_broken_model_folders(tmp_path):
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "config.json").write_text("{ this is not json")
    fine = tmp_path / "fine.png"
    Image.new("RGB", (48, 48), "red").save(fine)
    one_line_error(cli("chat", "--image", str(fine), "--model", str(broken), "what?"),
                   "config.json is not a readable model config")
    one_line_error(cli("chat", "--image", str(fine), "--model", str(tmp_path / "nowhere"), "what?"),
                   "model folder not found")


# ---------------------------------------------------------------------------- output folders
def test_out_folder_that_cannot_be_used(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    one_line_error(cli("run", "--limit", "1", "--out", str(a_file)), "is a file, not a folder")
    one_line_error(cli("run", "--limit", "1", "--out", str(a_file / "sub")), "a part of this path is a file")
    one_line_error(cli("run", "--limit", "1", "--out", "/proc/vlforget-out"), "cannot create the output folder")


def test_second_run_on_a_locked_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with FileLock(str(out / ".lock"), timeout=0):  # another run holds the folder
        one_line_error(cli("run", "--limit", "1", "--out", str(out)), "is in use by another vlforget run")
    assert not (out / "results.json").exists()


# ---------------------------------------------------------------------- one small real run
NAME = "stars [/] $x^{2$ [bold]"  # console markup and plot mathtext: must stay plain text


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small-run")
    tasks = folder / "tasks.yaml"
    tasks.write_text(yaml.safe_dump([request(name=NAME, description="Do not identify stars [/] $a$.")]))
    config = folder / "fast.yaml"
    config.write_text("steps: 2\nbatch_size: 4\n")
    out = folder / "run"
    result = cli("run", "--method", "idknll", "--limit", "1", "--config", str(config), "--tasks", str(tasks),
                 "--out", str(out), "--judge", "lexical")
    return out, result


def test_markup_and_mathtext_in_names_are_plain_text(small_run):
    out, result = small_run
    assert result.exit_code == 0, (result.output, result.exception)
    assert (out / "report.html").exists() and "stars [/] $x^{2$" in (out / "report.html").read_text()
    shown = cli("inspect", str(out), "--request", NAME)
    assert shown.exit_code == 0, (shown.output, shown.exception)
    assert NAME in shown.output and "after each step" in shown.output


def test_damaged_states_are_refused(small_run, tmp_path):
    import shutil

    out, result = small_run
    assert result.exit_code == 0
    image = out / "examples" / "00-forget.png"

    def damaged(edit) -> Path:
        copy = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(out, copy)
        edit(copy / "states" / "step-01")
        return copy

    def meta_edit(change):
        def edit(state):
            meta = json.loads((state / "method.json").read_text())
            change(meta)
            (state / "method.json").write_text(json.dumps(meta))
        return edit

    def flip(state):
        data = bytearray((state / "state.safetensors").read_bytes())
        data[-5] ^= 0xFF  # inside the last tensor's bytes
        (state / "state.safetensors").write_bytes(bytes(data))

    cases = [
        # idknll's JSON state is {} (its state is the LoRA tensors): any edit of it is caught
        (meta_edit(lambda m: m.__setitem__("state", {**m["state"], "forgotten": []})),
         "'state' does not match its checksum"),
        (meta_edit(lambda m: m.__setitem__("applied", [])), "'applied' does not match its checksum"),
        (meta_edit(lambda m: m.pop("sha256")), "lacks method, applied, state or sha256"),
        (lambda s: (s / "method.json").write_text("{"), "is not valid JSON"),
        (lambda s: (s / "state.safetensors").write_bytes(b"\x00" * 16), "is not a readable safetensors file"),
        (flip, "the tensors do not match the checksum"),
    ]
    for edit, expected in cases:
        copy = damaged(edit)
        one_line_error(cli("chat", "--image", str(image), "--state", str(copy), "what is it?"), expected)
    copy = damaged(lambda s: None)
    (copy / "results.json").write_text("{ not json")
    one_line_error(cli("inspect", str(copy)), "is not valid JSON")
