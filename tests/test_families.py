"""Every supported model family through `Backbone` and the methods, on tiny random-init models.

Each family's model is built from its real transformers config class and saved to a
folder, then loaded with `Backbone.load(folder)`: the same transformers model class and
code path a user with real weights runs. Random weights answer nonsense, so these tests
check plumbing (shapes, the connector the methods hook, training, save/load), not
forgetting quality (tests/test_methods.py does that on the built-in trained model).
"""

from __future__ import annotations

import pytest
import torch

from vlforget.data.benchmark import Benchmark, BenchmarkConfig
from vlforget.methods import make_method
from vlforget.models.backbone import Backbone
from vlforget.models.families import FAMILIES, family_of, supported_families
from vlforget.models.tiny_families import CONFIGS, save_family

# General pairs for the methods that fit on them (the built-in benchmark's pool).
GENERAL_POOL = Benchmark().general_pool

TESTED = supported_families()

# Tiny budgets: every method trains a few steps on two requests.
FAST = {
    # threshold 0: with random weights the heads trained on the fly sees nothing and the
    # gate's decision is arbitrary, so it is held open: the test is that the refusers
    # (through the gate's code path) reach each family's model and survive save/reload.
    "core": {"steps": 8, "batch_size": 8, "pool_size": 4, "router_steps": 10, "modulator_steps": 20,
             "prototypes": 2, "threshold": 0.0},
    "idknll": {"steps": 4},
    "eproj": {"steps": 4},
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: save_family(name, root / name) for name in TESTED}


@pytest.fixture(scope="module", autouse=True)
def small_scorers(one_thread, folders):
    """CORE trains concept heads on general pairs (then caches them on disk) for a vision
    tower it has no shipped heads for, as it would for a user's model; here a few steps on
    few images suffice, kept in memory only (nothing written to the user's cache)."""
    from vlforget.methods.core import encoders

    added = []
    for folder in folders.values():
        backbone = Backbone.load(folder)
        key = encoders.vision_fingerprint(backbone)
        if key not in encoders._LOADED:
            small = encoders.train_heads(backbone, GENERAL_POOL, n=48, steps=10, batch=32)
            for param in small.parameters():
                param.requires_grad_(False)
            encoders._LOADED[key] = small
            added.append(key)
    yield
    for key in added:
        encoders._LOADED.pop(key, None)


@pytest.fixture(scope="module")
def requests():
    bench = Benchmark(BenchmarkConfig(seed=3, n_forget_train=8, n_forget_test=4, n_retain_train=8,
                                      n_retain_test=4, n_utility=8))
    by_name = {r.name: r for r in bench.requests()}
    return [by_name["star-identity"], by_name["red-count"]]


def _probe(requests):
    return [s for r in requests for s in (*r.forget_test, *r.retain_test)]


def _answers(method, samples):
    return method.generate([s.image for s in samples], [s.instruction for s in samples], max_new_tokens=6)


def test_every_tested_family_has_a_tiny_config():
    assert set(TESTED) <= set(CONFIGS)
    assert {"llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3"} <= set(TESTED)


def test_unknown_or_unsupported_family_is_refused_by_name(tmp_path, monkeypatch):
    from vlforget.models import families

    with pytest.raises(ValueError, match="unsupported model family 'bert'"):
        family_of("bert")
    # a family listed in the table but not (yet) supported: a clear error on load, before any weights
    monkeypatch.setitem(families.FAMILIES, "paligemma", families.Family(
        "paligemma", "PaliGemmaForConditionalGeneration", "model.vision_tower", "model.multi_modal_projector",
        "model.language_model"))
    (tmp_path / "config.json").write_text('{"model_type": "paligemma"}')
    with pytest.raises(ValueError, match="family 'paligemma' .*is not supported yet; vlforget supports: idefics3"):
        Backbone.load(tmp_path)


def test_builtin_template_needs_a_sep_token(folders):
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(folders["llava"])
    tokenizer.sep_token = None
    with pytest.raises(ValueError, match="uses {sep} but the tokenizer has no sep token"):
        Backbone(Backbone.load(folders["llava"]).model, tokenizer)


CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _as_real_checkpoint(family: str, folder):
    """A tiny model saved the way a hub checkpoint is: no vlforget.json, a tokenizer with no
    sep token but with the family's chat markers, and a per-channel preprocessor_config.json."""
    import json
    import re

    from vlforget.models.prompt import FAMILY_TEMPLATES
    from vlforget.models.tiny_families import build_family

    backbone = build_family(family)
    tokenizer, model = backbone.tokenizer, backbone.model
    markers = sorted(set(re.findall(r"<\|?[A-Za-z_][\w\-]*\|?>", FAMILY_TEMPLATES[family])))
    tokenizer.add_special_tokens({"additional_special_tokens": markers})
    tokenizer.sep_token = None
    if family.startswith("qwen"):  # Qwen's tokenizers have no bos
        tokenizer.bos_token = None
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": CLIP_MEAN, "image_std": CLIP_STD}))
    return folder, markers


@pytest.mark.parametrize("family", TESTED)
def test_checkpoint_without_vlforget_json_gets_its_family_chat_format(family, requests, tmp_path):
    from PIL import Image

    from vlforget.models.prompt import FAMILY_TEMPLATES

    folder, markers = _as_real_checkpoint(family, tmp_path / "ckpt")
    backbone = Backbone.load(folder)
    tok = backbone.tokenizer
    assert backbone.meta["prompt_template"] == FAMILY_TEMPLATES[family]
    assert backbone.meta["pixel_mean"] == CLIP_MEAN and backbone.meta["pixel_std"] == CLIP_STD
    # the checkpoint's own per-channel normalisation: a solid colour gives exactly three values
    size = backbone.meta["image_size"]
    assert size == (FAMILIES[family].image_size or backbone.model.config.vision_config.image_size)
    pixels = backbone.pixel_values([Image.new("RGB", (size, size), (255, 128, 0))]).float()
    expected = sorted((v / 255 - m) / s for v, m, s in zip((255, 128, 0), CLIP_MEAN, CLIP_STD))
    assert torch.allclose(torch.unique(pixels), torch.tensor(expected), atol=1e-5)

    samples = _probe(requests)[:2]
    images, instructions = [s.image for s in samples], [s.instruction for s in samples]
    batch = backbone.build_batch(images, instructions, [s.answer for s in samples])
    for row, labels, mask, instruction, answer in zip(batch["input_ids"], batch["labels"], batch["attention_mask"],
                                                      instructions, [s.answer for s in samples]):
        ids = row[mask.bool()].tolist()
        image = [i for i, t in enumerate(ids) if t == backbone.model.config.image_token_id]
        assert len(image) == backbone.n_image_tokens and image == list(range(image[0], image[-1] + 1))
        marker_ids = [tok.convert_tokens_to_ids(m) for m in markers]
        assert all(m in ids for m in marker_ids)  # every chat marker is one token of the prompt
        assert (ids[0] == tok.bos_token_id) == (tok.bos_token_id is not None)
        instr = tok(instruction, add_special_tokens=False)["input_ids"]
        assert any(ids[i:i + len(instr)] == instr for i in range(len(ids)))
        kept = row[labels != -100].tolist()
        assert kept == tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert torch.isfinite(backbone.model(**batch).loss)
    answers = backbone.generate(images, instructions, max_new_tokens=4)
    backbone.save(tmp_path / "copy")  # the template and normalisation now travel in vlforget.json
    again = Backbone.load(tmp_path / "copy")
    assert again.meta["prompt_template"] == FAMILY_TEMPLATES[family] and again.meta["pixel_std"] == CLIP_STD
    assert again.generate(images, instructions, max_new_tokens=4) == answers


def test_a_method_trains_on_a_chat_format_checkpoint(requests, tmp_path):
    folder, _ = _as_real_checkpoint("llava", tmp_path / "ckpt")
    method = make_method("idknll", Backbone.load(folder), FAST["idknll"], general=GENERAL_POOL)
    forget = requests[0].forget_test
    before = _answers(method, forget)
    method.unlearn(requests[0])
    assert method.applied == [requests[0].name] and _answers(method, forget) != before


def test_bad_prompt_templates_are_refused_by_name(folders):
    from vlforget.models.prompt import PromptTemplate

    tok = Backbone.load(folders["llava"]).tokenizer
    with pytest.raises(ValueError, match="must contain {image} and {instruction} exactly once"):
        PromptTemplate("{bos}{instruction}", tok, 4, 9)
    with pytest.raises(ValueError, match="unknown slot"):
        PromptTemplate("{bos}{question}{instruction}{image}", tok, 4, 9)
    with pytest.raises(ValueError, match="marker '<\\|im_start\\|>' is not one token of this tokenizer"):
        PromptTemplate("<|im_start|>{instruction}{image}", tok, 4, 9)
    compiled = PromptTemplate("{bos}{instruction}{image}{sep}", tok, 4, 3)
    assert compiled.ids([10, 11]) == [tok.bos_token_id, 10, 11, 4, 4, 4, tok.sep_token_id]


@pytest.mark.parametrize("family", TESTED)
def test_load_generate_and_save_round_trip(family, folders, requests, tmp_path):
    backbone = Backbone.load(folders[family])
    assert type(backbone.model).__name__ == FAMILIES[family].class_name
    samples = _probe(requests)[:4]
    images, instructions = [s.image for s in samples], [s.instruction for s in samples]
    answers = backbone.generate(images, instructions, max_new_tokens=6)
    assert len(answers) == 4 and all(isinstance(a, str) for a in answers)
    batch = backbone.build_batch(images, instructions, [s.answer for s in samples])
    assert (batch["input_ids"] == backbone.model.config.image_token_id).sum(1).eq(backbone.n_image_tokens).all()
    assert torch.isfinite(backbone.model(**batch).loss)
    backbone.save(tmp_path / "copy")
    again = Backbone.load(tmp_path / "copy")
    assert again.n_image_tokens == backbone.n_image_tokens
    assert again.generate(images, instructions, max_new_tokens=6) == answers


@pytest.mark.parametrize("family", TESTED)
def test_connector_hook_sees_one_row_per_image_and_steers_the_model(family, folders, requests):
    """What methods rely on: a hook on `backbone.connector` runs once per forward with
    [B, tokens, D] = `vision_features`, and the output it returns is what the LM reads."""
    backbone = Backbone.load(folders[family])
    samples = _probe(requests)[:3]
    images, instructions = [s.image for s in samples], [s.instruction for s in samples]
    batch = backbone.build_batch(images, instructions, [s.answer for s in samples])
    seen = []

    def spy(module, args, output):
        seen.append((args[0].detach(), output.detach()))

    def zero(module, args, output):
        return torch.zeros_like(output)

    with torch.no_grad():
        base = backbone.model(**batch).logits
        handle = backbone.connector.register_forward_hook(spy)
        try:
            assert torch.equal(backbone.model(**batch).logits, base)  # a passive hook changes nothing
        finally:
            handle.remove()
        assert len(seen) == 1
        x, out = seen[0]
        assert x.shape[0] == out.shape[0] == 3
        assert torch.allclose(x, backbone.vision_features(images), atol=1e-5)
        handle = backbone.connector.register_forward_hook(spy)
        try:
            direct = backbone.image_features(images)
        finally:
            handle.remove()
        assert len(seen) == 2  # a direct call also runs the hook exactly once
        assert torch.allclose(out, direct, atol=1e-5)
        handle = backbone.connector.register_forward_hook(zero)
        try:
            steered = backbone.model(**batch).logits
        finally:
            handle.remove()
        assert not torch.allclose(steered, base)
        assert torch.equal(backbone.model(**batch).logits, base)  # hook removed, original back


@pytest.mark.parametrize("name", sorted(FAST))
@pytest.mark.parametrize("family", TESTED)
def test_method_trains_and_round_trips(family, name, folders, requests, tmp_path):
    method = make_method(name, Backbone.load(folders[family]), FAST[name], general=GENERAL_POOL)
    forget = [s for r in requests for s in r.forget_test]
    before = _answers(method, forget)
    for request in requests:
        method.unlearn(request)
    assert method.applied == [r.name for r in requests]
    # the method's hooks/adapters reach the model: some forget answers change (random weights,
    # so no claim about refusing; that is tests/test_methods.py's job on the trained model)
    assert _answers(method, forget) != before
    probe = _probe(requests)
    answers = _answers(method, probe)
    method.save(tmp_path / "state")
    fresh = make_method(name, Backbone.load(folders[family]), FAST[name], general=GENERAL_POOL)
    fresh.load(tmp_path / "state")
    assert fresh.applied == method.applied
    assert _answers(fresh, probe) == answers
    mine, theirs = method.state_tensors(), fresh.state_tensors()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


# ----------------------------------------------------------------- CLI: --model, --device, --dtype
def _cli(*args):
    from typer.testing import CliRunner

    from vlforget.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _image(tmp_path):
    from PIL import Image

    path = tmp_path / "red.png"
    Image.new("RGB", (48, 48), "red").save(path)
    return path


def test_precision_and_device_resolution():
    from vlforget.models.placement import resolve_device, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    assert resolve_precision("float16", cpu) == (torch.float32, "note: --dtype float16 ignored on CPU; using float32")
    assert resolve_precision("bfloat16", cpu)[0] == torch.float32
    assert resolve_precision("auto", cpu) == (torch.float32, None)
    assert resolve_precision("float32", cpu) == (torch.float32, None)
    assert resolve_precision("auto", torch.device("cuda")) == ("auto", None)
    assert resolve_precision("bfloat16", torch.device("cuda")) == (torch.bfloat16, None)
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        resolve_precision("float8", cpu)
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_cli_half_precision_on_cpu_falls_back_with_one_note(folders, tmp_path):
    config = tmp_path / "bench.json"
    config.write_text('{"n_general_test": 4}')
    result = _cli("base-eval", "--model", folders["llava_next"], "--device", "cpu", "--dtype", "float16",
                  "--config", config, "--json")
    assert result.exit_code == 0, result.output
    assert result.output.count("ignored on CPU; using float32") == 1
    result = _cli("chat", "--model", folders["llava"], "--device", "cpu", "--dtype", "bfloat16",
                  "--image", _image(tmp_path), "what colour is the background?")
    assert result.exit_code == 0, result.output
    assert result.output.count("note:") == 1 and "(base model)" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cli_cuda_without_a_gpu_is_one_clear_line(tmp_path):
    result = _cli("chat", "--device", "cuda:1", "--image", _image(tmp_path), "what is it?")
    assert result.exit_code == 2
    assert "CUDA is not available" in result.output and "Traceback" not in result.output


def test_cli_hub_id_missing_from_the_cache_is_one_clear_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    result = _cli("chat", "--model", "someone/llava-next-7b", "--image", _image(tmp_path), "what is it?")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert "weights for hub id 'someone/llava-next-7b' are not in the local Hugging Face cache" in result.output
    result = _cli("chat", "--model", tmp_path / "no-such-folder", "--image", _image(tmp_path), "what is it?")
    assert result.exit_code == 2 and "model folder not found" in result.output


def test_cli_hub_id_found_in_the_local_cache(folders, tmp_path, monkeypatch):
    """A hub id whose download is in the cache loads from there (no network)."""
    import shutil

    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-llava-next"
    shutil.copytree(folders["llava_next"], repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert Backbone.load("someone/tiny-llava-next").family.model_type == "llava_next"
    result = _cli("chat", "--model", "someone/tiny-llava-next", "--image", _image(tmp_path), "what is it?")
    assert result.exit_code == 0, result.output
    assert "(base model)" in result.output
