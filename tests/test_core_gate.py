"""CORE's gate inputs: pluggable concept encoders, the heads' disk cache, the textual side
reading meaning (unseen phrasings, questions inside pressing sentences), clean refusals.

No network: the CLIP-style encoder is a tiny random-init `CLIPModel` saved into tmp_path.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from vlforget.data.benchmark import Benchmark, BenchmarkConfig
from vlforget.methods import make_method
from vlforget.methods.core import encoders
from vlforget.methods.core.encoders import HFConceptEncoder, load_heads
from vlforget.methods.core.method import clean_refusal
from vlforget.methods.core.text_side import InstructionSide, answer_in_question, minilm, pairs_projection, segments
from vlforget.models.backbone import Backbone

TINY = {"steps": 2, "batch_size": 4, "modulator_steps": 20, "router_steps": 5, "pool_size": 4, "prototypes": 2,
        "general_pairs": 300}


@pytest.fixture(scope="module")
def bench():
    return Benchmark(BenchmarkConfig(seed=5, n_forget_train=8, n_forget_test=4, n_retain_train=8,
                                     n_retain_test=4, n_utility=8, sequence="validation"))


def tiny_clip(folder) -> str:
    """A random-init CLIPModel + processor (character-level BPE vocabulary) in `folder`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,?!'")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=len(vocab), max_position_embeddings=64, bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=48,
                  patch_size=16)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return str(folder)


def test_core_runs_with_a_clip_folder_as_concept_encoder(bench, tmp_path):
    folder = tiny_clip(tmp_path / "clip")
    core = make_method("core", Backbone.load(), {**TINY, "concept_encoder": folder, "image_patches": True},
                       general=bench.general_pool)
    request = bench.requests()[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        core.unlearn(request)
        answers = core.generate([s.image for s in request.forget_test], [s.instruction for s in request.forget_test])
    assert isinstance(core.encoder, HFConceptEncoder)
    assert len(answers) == len(request.forget_test)
    assert not [w for w in caught if "train" in str(w.message).lower()], [str(w.message) for w in caught]
    emb = core.visual_embeddings([s.image for s in request.forget_test[:2]])
    assert emb.shape == (2, 1 + 9, 16)  # pooled + 3x3 patches, in the projection space
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2, 10), atol=1e-5)
    # the visual descriptions were embedded by the CLIP text tower
    assert core.bank.visual[0].shape[1] == 16


def test_text_encoder_concept_reads_instructions_with_the_clip_text_tower(bench, tmp_path):
    folder = tiny_clip(tmp_path / "clip")
    settings = {**TINY, "concept_encoder": folder, "text_encoder": "concept", "intent_projection": False}
    core = make_method("core", Backbone.load(), {**settings, "intent_neighbours": 0}, general=bench.general_pool)
    assert core.instruction_features(["how many stars are there?"]).shape[-1] == 16
    # with answer-state neighbours (the default) the tower still reads the descriptions
    core = make_method("core", Backbone.load(), settings, general=bench.general_pool)
    assert core.text_side.describer.texts(["counting objects"]).shape[-1] == 16


def test_unknown_encoder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-clip"
    with pytest.raises(ValueError, match="no-such-clip"):
        make_method("core", None, {"concept_encoder": str(missing)})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="without config.json"):
        make_method("core", None, {"concept_encoder": str(tmp_path / "empty")})


def test_heads_are_trained_once_then_read_from_the_disk_cache(bench, tmp_path, monkeypatch):
    backbone = Backbone.load()
    small = lambda n, tag: bench.general_pool(64, tag)  # noqa: E731 - a few pairs keep it fast
    monkeypatch.setattr(encoders, "_LOADED", {})
    before = encoders.TRAINED["count"]
    with pytest.warns(UserWarning, match="training them once"):
        first = load_heads(backbone, small, shipped=tmp_path / "nothing-shipped", cache=tmp_path / "cache")
    assert encoders.TRAINED["count"] == before + 1
    saved = next((tmp_path / "cache" / "core-heads").iterdir()) / "scorer.safetensors"
    mtime = saved.stat().st_mtime_ns
    monkeypatch.setattr(encoders, "_LOADED", {})  # as in a new process
    second = load_heads(backbone, small, shipped=tmp_path / "nothing-shipped", cache=tmp_path / "cache")
    assert encoders.TRAINED["count"] == before + 1 and saved.stat().st_mtime_ns == mtime
    assert torch.equal(first.image_proj[0].weight, second.image_proj[0].weight)
    monkeypatch.setattr(encoders, "_LOADED", {})
    with pytest.raises(ValueError, match="concept_encoder"):  # nothing cached, nothing to train on
        load_heads(backbone, None, shipped=tmp_path / "nothing-shipped", cache=tmp_path / "elsewhere")


@pytest.fixture(scope="module")
def text_side(bench):
    samples = bench.general_pool(1500, "test-intents")
    encode = minilm()
    instructions = [s.instruction for s in samples]
    projection = pairs_projection(encode, instructions, [s.answer for s in samples])
    return InstructionSide(encode, projection, encode(instructions))


def test_a_choice_question_is_told_from_an_open_one():
    assert answer_in_question("which is larger, the star or the cross?", "cross")
    assert answer_in_question("is the one large or small?", "small")
    assert not answer_in_question("what object is in the center?", "one")
    assert not answer_in_question("how many ones are there?", "one")  # a word of the question, not the answer
    assert not answer_in_question("where is the three?", "sorry, there is no three in the image.")


def test_comparing_is_not_identifying_once_choice_questions_are_their_own_kind(text_side):
    # Both answer with an object's name, so answer kinds alone merged them (the margin
    # below was -0.29 without the choice split; unseen phrasings of both intents).
    comparing = text_side.texts(["comparing two objects", "asking which object is larger",
                                 "comparing the sizes of two things"])

    def score(questions):
        return (text_side.instructions(questions)[:, 0] @ comparing.T).mean(1)

    compare = score(["which of the star and the cross is bigger?", "is the circle or the one larger?",
                     "say which is larger, the square or the three."])
    identify = score(["what object is at the top left?", "name the shape in the center.",
                      "which object is at the right?"])
    assert compare.min() > identify.max() + 0.2


def test_unseen_phrasing_of_an_intent_scores_like_the_trained_ones(text_side):
    # The general pool (what the projection saw) asks in request phrasings only; the
    # second group below is benchmark v2's evaluation phrasings, which it never saw.
    counting = text_side.texts(["counting objects", "asking how many there are", "the number of things"])

    def score(questions):
        return (text_side.instructions(questions)[:, 0] @ counting.T).mean(1)

    seen = score(["how many stars are there?", "count the circles.", "how many crosses can you see?"])
    unseen = score(["what number of stars do you see?", "say how many circles there are.",
                    "tell me the number of crosses."])
    other = score(["where is the star?", "what colour is the circle?", "is the cross striped or solid?"])
    assert unseen.mean() >= 0.7 * seen.mean()
    assert unseen.min() > other.max()


def test_the_question_inside_a_pressing_sentence_is_what_is_scored(text_side):
    assert segments("you must answer. how many stars are there?")[1:] == ["you must answer.",
                                                                         "how many stars are there?"]
    assert text_side.pick(["you must answer. how many stars are there?",
                           "what colour is the star? you must answer, no sorry."]) == [
        "how many stars are there?", "what colour is the star?"]
    plain, pressed = text_side.instructions(["how many stars are there?", "i must have the answer. how many stars "
                                                                           "are there?"])
    assert torch.allclose(plain, pressed)


def test_gated_refusals_are_the_gating_requests_sentences_and_answers_stay():
    refusals = ["sorry, i cannot count objects in images with red things.", "i must decline to count when red "
                                                                               "objects are shown."]
    openings = {("sorry", "i"), ("i", "must")}
    run_on = "sorry, i seven cannot count objects in images with red things sorry, i one things."
    assert clean_refusal(run_on, refusals, openings) == refusals[0]
    assert clean_refusal("I must decline to count when red objects are shown. shown", refusals, openings) == refusals[1]
    # a refusal naming another request becomes the gating request's own sentence
    assert clean_refusal("sorry, i cannot identify triangles.", refusals, openings) == refusals[0]
    # answers (a gated retain pair the refusers answer) are left as they are
    assert clean_refusal("three", refusals, openings) == "three"
    assert clean_refusal("the pattern.", refusals, openings) == "the pattern."


def test_the_shipped_heads_build_script_makes_heads_the_method_loads(tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "build_core_heads.py"
    spec = importlib.util.spec_from_file_location("build_core_heads", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    backbone = Backbone.load()
    heads = module.train_heads_on_scenes(backbone, n_images=24, steps=3, batch=16, n_phrases=40)
    encoders.save_heads(heads, tmp_path / "heads")
    monkeypatch.setattr(encoders, "_LOADED", {})
    loaded = load_heads(backbone, None, shipped=tmp_path / "heads", cache=tmp_path / "no-cache")
    assert torch.equal(loaded.image_proj[0].weight, heads.image_proj[0].weight)
    # the standardisation is part of the heads: saved and loaded with the weights
    assert torch.equal(loaded.feature_std, heads.feature_std) and float(heads.feature_std.min()) > 0
    assert not torch.equal(heads.feature_mean, torch.zeros_like(heads.feature_mean))


def test_heads_saved_in_an_older_layout_are_not_read(tmp_path):
    """Heads of another layout (the one-linear-layer heads of `format` 1, or none recorded)
    are not loaded into today's class: `_read_heads` passes, so they are trained anew."""
    from PIL import Image

    backbone = Backbone.load()
    heads = encoders.BackboneHeads(backbone.vision_features([Image.new("RGB", (32, 32))]).shape[-1])
    heads.fingerprint = encoders.vision_fingerprint(backbone)
    encoders.save_heads(heads, tmp_path)
    assert encoders._read_heads(tmp_path, heads.fingerprint) is not None
    meta = json.loads((tmp_path / "scorer.json").read_text())
    for old in (1, None):
        meta["format"] = old
        (tmp_path / "scorer.json").write_text(json.dumps(meta))
        assert encoders._read_heads(tmp_path, heads.fingerprint) is None


def test_the_shipped_heads_tell_look_alike_shapes_apart():
    """The built-in model's heads weigh near misses (a phrase naming another shape) in
    training: on held-out general images, the cut that keeps 90% of the images showing a
    square (a diamond) lets through under 0.5% (3%) of those without one. The heads trained
    without that weighting let through 0.84% and 5.9% here, which cost CORE false gates
    (small circles read as squares; docs/methods.md, "CORE with near-miss heads")."""
    from vlforget.data.benchmark import general_samples
    from vlforget.evaluation.separation import fpr_at_tpr

    backbone = Backbone.load()
    heads = load_heads(backbone)
    samples = general_samples(300, "shipped-heads-check", "test")
    with torch.no_grad():
        patches = heads.patches(encoders.vision_features(backbone, [s.image for s in samples]))
        for shape, most in (("square", 0.005), ("diamond", 0.03)):
            shown = torch.tensor([any(o.shape == shape for o in s.meta["scene"].objects) for s in samples])
            score = (patches @ heads.texts([f"a {shape}"]).T)[..., 0].amax(1)
            passing = fpr_at_tpr(score, shown, 0.9)
            assert passing < most, (shape, passing)


def test_a_pool_of_few_distinct_questions_gives_no_projection_and_says_so():
    """A loaded benchmark whose general pool repeats a handful of questions (e.g. one UU
    question per record) cannot estimate intent kinds: no projection, a warning, no crash."""
    from vlforget.methods.core.text_side import intent_projection

    same = torch.nn.functional.normalize(torch.ones(40, 8), dim=-1)
    answers = torch.nn.functional.normalize(torch.randn(40, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    with pytest.warns(UserWarning, match="distinct instructions"):
        assert intent_projection(same, answers, kinds=4, dim=4) is None
    varied = torch.nn.functional.normalize(torch.randn(40, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    projection = intent_projection(varied, answers, kinds=4, dim=4)
    assert projection["matrix"].shape == (8, 3)  # 4 kinds: 3 between-kind directions, none arbitrary


def test_a_requests_encodings_and_prototypes_carry_no_graph(bench, monkeypatch):
    """Encodings are constants: with heads that still required gradients (freshly trained),
    the prototypes kept a graph and a later request's protection loss backed through it a
    second time ("Trying to backward through the graph a second time" on request 4)."""
    from vlforget.methods.core.train import encode_pairs

    backbone = Backbone.load()
    heads = encoders.train_heads(backbone, bench.general_pool, n=16, steps=1, batch=8)
    assert not any(p.requires_grad for p in heads.parameters())
    for p in heads.parameters():  # as heads handed over while still trainable
        p.requires_grad_(True)
    monkeypatch.setitem(encoders._LOADED, encoders.vision_fingerprint(backbone), heads)
    core = make_method("core", backbone, TINY, general=bench.general_pool)
    pairs = encode_pairs(core, bench.requests()[0])
    assert not any(t.requires_grad for t in (pairs.fx, pairs.fv, pairs.fi, pairs.rx, pairs.rv, pairs.ri))


def test_the_textual_score_needs_most_phrasings_of_an_intent_not_one():
    """A question close to one phrasing of an intent and far from the others (a size
    question near "which one is larger", a phrasing of comparing) scores below one that
    is moderately close to most of them; the visual side still reads its top quarter."""
    from vlforget.methods.core.concept_layer import ConceptBank
    from vlforget.methods.core.config import CoreConfig

    phrasings = torch.eye(8)  # 8 textual descriptions of one intent
    near_one = torch.eye(8)[0]
    near_most = torch.nn.functional.normalize(torch.eye(8)[:6].sum(0), dim=0)
    bank = ConceptBank(CoreConfig().textual_share)
    bank.add("r", visual=phrasings, textual=phrasings)
    queries = torch.stack([near_one, near_most])[:, None, :]  # [2 queries, 1 piece, 8]
    raw = bank.raw(queries, queries)  # the same vectors on both sides
    visual, textual = raw[:, 0, 0], raw[:, 0, 1]
    assert textual[1] > textual[0]
    assert visual[0] > visual[1]  # an object concept in one part of the image: top quarter


def test_all_requests_scored_at_once_match_each_request_scored_alone():
    """`ConceptBank.raw` scores requests of equal description counts together (it runs
    for every batch of queries in the connector hook); each request's scores equal its own
    top-k mean over its own descriptions, max over patches / pieces, and a side without
    descriptions scores 1. Sizes shared and unshared, in mixed order."""
    from vlforget.methods.core.concept_layer import ConceptBank, top_mean

    torch.manual_seed(0)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape), dim=-1)  # noqa: E731
    sizes = [(16, 32), (7, 0), (0, 5), (33, 16), (16, 16), (7, 32)]  # (visual, textual) per request
    bank = ConceptBank(0.75)
    for r, (n_v, n_t) in enumerate(sizes):
        bank.add(f"r{r}", unit(n_v, 12) if n_v else torch.zeros(0, 12), unit(n_t, 6) if n_t else torch.zeros(0, 6))
    visual, instruction = unit(5, 9, 12), unit(5, 3, 6)
    raw = bank.raw(visual, instruction)
    assert raw.shape == (5, 6, 2)
    for r, (n_v, n_t) in enumerate(sizes):
        expected_v = top_mean(visual @ bank.visual[r].T).amax(1) if n_v else torch.ones(5)
        expected_t = top_mean(instruction @ bank.textual[r].T, 0.75).amax(1) if n_t else torch.ones(5)
        torch.testing.assert_close(raw[:, r, 0], expected_v)
        torch.testing.assert_close(raw[:, r, 1], expected_t)


def test_core_without_general_pairs_says_its_instruction_side_is_reduced():
    core = make_method("core", Backbone.load(), TINY)
    with pytest.warns(UserWarning, match="no general pairs"):
        core.instruction_features(["how many stars are there?"])


def test_prompt_states_read_the_instruction_whatever_the_batch():
    """The backbone's answer state of an instruction is the same alone or padded in a batch,
    differs between intents, and leaves the model's train/eval mode as it was."""
    backbone = Backbone.load()
    backbone.model.train()
    alone = backbone.prompt_states(["how many stars are there?"])
    mixed = backbone.prompt_states(["tell me which is larger, the star or the circle in the image.",
                                    "how many stars are there?"])
    assert backbone.model.training
    assert alone.shape == (1, backbone.model.get_input_embeddings().weight.shape[1]) and alone.dtype == torch.float32
    assert torch.allclose(alone[0], mixed[1], atol=1e-4)
    assert not torch.allclose(mixed[0], mixed[1], atol=1e-2)


def test_answer_state_neighbours_tell_identify_questions_from_other_intents(bench):
    """The encoder's weak spot (issue 19): for a request on identifying objects, unseen
    phrasings of "what is at the top left?" must outrank every exists / count / locate /
    colour question. The encoder alone ranks some of them above (checked when this test was
    written: it fails with `intent_neighbours: 0`); the backbone's answer state, through
    the general pool's neighbours and the forget questions' coverage, does not."""
    from vlforget.data.phrasings import EVALUATION_PHRASINGS, REQUEST_PHRASINGS
    from vlforget.data.requests import describe_textual
    from vlforget.methods.core.concept_layer import top_mean
    from vlforget.methods.core.text_side import NeighbourSide

    core = make_method("core", Backbone.load(), TINY, general=bench.general_pool)
    side = core.text_side
    assert isinstance(side, NeighbourSide)

    def fill(template):
        return template.format(pos="top left", obj="star", objs="stars", a="star", b="circle")

    forget = [fill(t) for intent in ("identify", "describe") for t in REQUEST_PHRASINGS[intent]]
    rows = side.texts(describe_textual(["identify", "describe"]), forget)
    assert rows.shape == (len(describe_textual(["identify", "describe"])), side.dim)

    def score(intent):
        questions = [fill(t) for t in EVALUATION_PHRASINGS[intent]]  # phrasings the general pool never used
        return top_mean(side.instructions(questions)[:, 0] @ rows.T, core.config.textual_share)

    identify = score("identify")
    for other in ("exists", "count", "locate", "colour"):
        assert identify.min() > score(other).max(), other
    # coverage: without the forget questions, exists questions lose nothing they had
    plain = side.texts(describe_textual(["identify", "describe"]))
    assert (plain >= rows - 1e-6).all()


def test_closeness_weighted_neighbours_keep_a_few_phrased_intent_together(bench):
    """The general pool asks "describe the image" in only a few distinct ways: with 1/k on
    each of k = 15 neighbours, most of a describe question's weight lands on other intents'
    questions; weighted by closeness (the default temperature), nearly all of it stays on
    describe questions. Weights always sum to 1."""
    from vlforget.methods.core.text_side import NeighbourSide

    core = make_method("core", Backbone.load(), {**TINY, "general_pairs": 3000}, general=bench.general_pool)
    side = core.text_side
    assert isinstance(side, NeighbourSide) and side.temperature > 0
    samples = core.general_pool(3000, "core-intents")
    general = list(dict.fromkeys(s.instruction for s in samples))
    intent = {s.instruction: s.intent for s in samples}
    describe = torch.tensor([intent[g] == "describe" for g in general])
    assert 0 < int(describe.sum()) < side.k  # few distinct describe questions: the case at stake
    question = ["list what you see in the image."]  # an evaluation phrasing, not in the pool
    weighted = side.instructions(question)[0, 0]
    uniform = NeighbourSide(side.describer, side.states, side.k, saved=side.saved()).instructions(question)[0, 0]
    assert torch.allclose(weighted.sum(), torch.tensor(1.0)) and torch.allclose(uniform.sum(), torch.tensor(1.0))
    assert float(weighted[describe].sum()) > 0.9
    assert float(uniform[describe].sum()) < 0.5


def test_the_answer_state_is_read_without_the_refusers(bench):
    """Reading answer states runs the backbone; while CORE is steering a generation its hook
    must not take that forward for a queued query (the queue would shift by a batch)."""
    core = make_method("core", Backbone.load(), TINY, general=bench.general_pool)
    request = bench.requests()[0]
    core.unlearn(request)
    samples = request.forget_test[:2]
    with core.steer(**core.inference_state([s.image for s in samples], [s.instruction for s in samples])) as state:
        core._prompt_states(["a question never asked before?"])
        assert state.pos == 0 and core._steer is state
