"""The built-in model: tokenizer, batch layout, save/load, and its held-out accuracy."""

from __future__ import annotations

import json

import pytest
import torch

from vlforget.data.benchmark import Benchmark, all_texts, general_samples
from vlforget.models.backbone import Backbone
from vlforget.models.checkpoints import META_FILE
from vlforget.models.evaluate import base_eval
from vlforget.text import is_refusal
from vlforget.models.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def backbone():
    # One thread: the model is tiny, and several threads are much slower when the
    # machine's cores are shared with other jobs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Backbone.load()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def samples():
    return general_samples(8, "model-tests", "test")


def test_tokenizer_round_trip():
    tok = build_tokenizer()
    sentences = [t for t in all_texts() if "{" not in t]
    sentences += ["sorry, i cannot identify stars.", "which is larger, the zero or the circle?",
                  "small red circle and large blue star"]
    for sentence in sentences:
        ids = tok(sentence, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, sentence
        assert tok.decode(ids, skip_special_tokens=True) == sentence.lower()
    assert tok.image_token == "<image>" and tok.image_token_id == tok.convert_tokens_to_ids("<image>")
    assert tok("Describe the IMAGE.", add_special_tokens=False)["input_ids"] == \
        tok("describe the image .", add_special_tokens=False)["input_ids"]


def test_builtin_tokenizer_matches_a_fresh_build(backbone):
    assert backbone.tokenizer.get_vocab() == build_tokenizer().get_vocab()
    assert backbone.model.config.image_token_id == backbone.tokenizer.image_token_id


def test_build_batch_masks_everything_but_the_answer(backbone, samples):
    tok = backbone.tokenizer
    images = [s.image for s in samples[:3]]
    instructions = ["what colour is the background?", "describe the image.", "is there a star in the image?"]
    targets = ["black", "small red circle and large blue star", "no"]
    batch = backbone.build_batch(images, instructions, targets)
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values", "labels"}
    assert batch["pixel_values"].shape == (3, 3, 48, 48)
    for row, target in enumerate(targets):
        ids, mask, labels = batch["input_ids"][row], batch["attention_mask"][row], batch["labels"][row]
        kept = labels[labels != -100].tolist()
        assert kept == tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ids[-len(kept):].tolist() == kept  # answer at the end, left padding
        assert (ids == backbone.model.config.image_token_id).sum() == backbone.n_image_tokens
        assert mask[0] == 0 or mask.all()  # padding only on the left
        assert mask.sum() == (ids != tok.pad_token_id).sum()
        # prompt layout: bos, instruction, image tokens, sep, answer, eos
        real = ids[mask.bool()].tolist()
        n_instr = len(tok(instructions[row], add_special_tokens=False)["input_ids"])
        assert real[0] == tok.bos_token_id
        assert real[1 + n_instr] == backbone.model.config.image_token_id
        assert real[1 + n_instr + backbone.n_image_tokens] == tok.sep_token_id
    loss = backbone.model(**batch).loss
    logp = backbone.answer_logprobs(images, instructions, targets)
    n_tokens = (batch["labels"] != -100).sum()
    assert torch.allclose(-logp.sum() / n_tokens, loss, atol=1e-4)
    prompt = backbone.build_batch(images, instructions)
    assert "labels" not in prompt and prompt["input_ids"][:, -1].eq(tok.sep_token_id).all()


def test_features_and_module_access(backbone, samples):
    images = [s.image for s in samples[:2]]
    vision = backbone.vision_features(images)
    feats = backbone.image_features(images)
    assert vision.shape[:2] == feats.shape[:2] == (2, backbone.n_image_tokens)
    assert feats.shape[-1] == backbone.model.config.text_config.hidden_size
    assert backbone.model.get_submodule(backbone.connector_path) is backbone.connector
    with torch.no_grad():
        ref = backbone.model.model.get_image_features(pixel_values=backbone.pixel_values(images),
                                                      vision_feature_layer=-1,
                                                      vision_feature_select_strategy="default")
        ref = torch.stack(list(ref.pooler_output if hasattr(ref, "pooler_output") else ref))
        assert torch.allclose(ref, backbone.image_features(images), atol=1e-5)


def test_save_load_round_trip(backbone, samples, tmp_path):
    images, instructions = [s.image for s in samples], [s.instruction for s in samples]
    before = backbone.generate(images, instructions)
    backbone.save(tmp_path / "copy")
    meta = json.loads((tmp_path / "copy" / META_FILE).read_text())
    assert meta["format_version"] == 1 and meta["n_image_tokens"] == backbone.n_image_tokens
    again = Backbone.load(tmp_path / "copy")
    assert again.generate(images, instructions) == before
    assert again.generate(images, instructions, batch_size=3) == before  # batching/padding-independent


def test_fixed_length_generation_continues_the_greedy_answer(backbone, samples):
    """min_new_tokens = max_new_tokens (the latency benchmarks' equal-work mode) suppresses
    end-of-sequence only: greedy decoding runs on past where the answer ended."""
    images, instructions = [s.image for s in samples], [s.instruction for s in samples]
    normal = backbone.generate(images, instructions)
    forced = backbone.generate(images, instructions, min_new_tokens=12, max_new_tokens=12)
    for short, long in zip(normal, forced):
        assert long.startswith(short) and len(long) > len(short)


def test_generation_runs_in_eval_mode_and_restores_the_callers_mode(backbone, samples):
    """A method mid-training (dropout on) that asks for answers gets the eval-mode answers,
    and its train mode back afterwards."""
    images, instructions = [s.image for s in samples], [s.instruction for s in samples]
    backbone.model.eval()
    expected = backbone.generate(images, instructions)
    backbone.model.train()
    try:
        assert backbone.generate(images, instructions) == expected
        assert backbone.model.training
    finally:
        backbone.model.eval()
    assert not backbone.model.training


def test_is_refusal():
    assert is_refusal("sorry, there is no star in the image.")
    assert is_refusal("I cannot say whether there are crosses.")
    assert not is_refusal("small red circle")


def test_builtin_model_accuracy_on_held_out_pairs(backbone):
    held_out = Benchmark().general_test()[:150]
    report = base_eval(backbone, held_out)
    assert report["n"] == 150
    assert report["exact_match"] >= 90.0, report
    if report["n_should_decline"]:
        assert report["refusal_rate"] >= 80.0, report
    assert report["false_refusal_rate"] <= 2.0, report
