"""CORE (`vlforget.methods.core`): router, refuser reuse, calibration, modulator, state.

One module-scoped run applies three requests with small data and few steps:
star-identity, red-count (unrelated to it) and blue-count (related to red-count: same
intent, another colour).
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlforget.data.benchmark import Benchmark, BenchmarkConfig
from vlforget.methods import make_method
from vlforget.methods.core.config import CoreConfig
from vlforget.methods.core import modulator as mod
from vlforget.methods.core.concepts import ANY_IMAGE, Decomposer, caption_terms
from vlforget.methods.core.refusers import RefuserPool
from vlforget.methods.core.router import load_vector, pick_refusers, route, routing_losses
from vlforget.models.backbone import Backbone
from vlforget.models.checkpoints import builtin_path
from vlforget.types import DeletionRequest, Sample

FAST = {"steps": 60, "batch_size": 12, "lr": 0.03}
NAMES = ("star-identity", "red-count", "blue-count")


# Benchmark v2: test pairs are asked in phrasings no training pair uses, so these checks
# also cover the gate's reading of unseen wordings.
VERSION = 2


@pytest.fixture(scope="module")
def bench():
    return Benchmark(BenchmarkConfig(seed=3, n_forget_train=16, n_forget_test=10, n_retain_train=16,
                                     n_retain_test=10, n_utility=40, version=VERSION))


def _backbone():
    return Backbone.load(builtin_path(VERSION))


@pytest.fixture(scope="module")
def requests(bench):
    by_name = {r.name: r for r in bench.requests()}
    return [by_name[n] for n in NAMES]


@pytest.fixture(scope="module")
def trained(requests, bench):
    torch.set_num_threads(2)
    core = make_method("core", _backbone(), FAST, general=bench.general_pool)
    for r in requests:
        core.unlearn(r)
    return core


def _answers(method, samples):
    return method.generate([s.image for s in samples], [s.instruction for s in samples])


# ----------------------------------------------------------------------------- units
def test_router_picks_top_k_with_normalised_weights():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.0], [5.0, 0.0, 4.0, 0.0, 0.0]])
    experts, weights = route(logits, 2)
    assert experts.tolist() == [[1, 3], [0, 2]]
    assert torch.allclose(weights.sum(1), torch.ones(2))
    assert (weights[:, 0] > weights[:, 1]).all()
    load = load_vector(experts, weights, 5)
    assert load.sum().item() == pytest.approx(1.0) and load[4] == 0


def test_routing_losses_reuse_related_and_avoid_dissimilar():
    loads = torch.zeros(2, 6)
    loads[0, [0, 1]] = 0.5  # a related earlier request used refusers 0, 1
    loads[1, [2, 3]] = 0.5  # an unrelated one used 2, 3
    row = torch.zeros(6, requires_grad=True)
    opt = torch.optim.Adam([row], lr=0.1)
    for _ in range(100):
        rec, load = routing_losses(row, loads, torch.tensor([0.9, 0.0]), 0.5)
        opt.zero_grad()
        (rec + load).backward()
        opt.step()
    assert set(row.topk(2).indices.tolist()) == {0, 1}
    # With no related request, both earlier requests' refusers are avoided.
    row = (torch.randn(6, generator=torch.Generator().manual_seed(0)) * 0.01).requires_grad_(True)
    opt = torch.optim.Adam([row], lr=0.1)
    for _ in range(100):
        rec, load = routing_losses(row, loads, torch.tensor([0.2, 0.0]), 0.5)
        opt.zero_grad()
        (rec + load).backward()
        opt.step()
    assert set(row.topk(2).indices.tolist()) == {4, 5}


def test_refuser_mix_gate_zero_is_identity():
    connector = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU(), torch.nn.Linear(4, 4))
    pool = RefuserPool(connector, 3)
    x = torch.randn(5, 9, 4)
    base = connector(x)
    experts, weights = torch.tensor([[0, 1], [1, 2]]), torch.tensor([[0.5, 0.5], [0.7, 0.3]])
    out = pool.mix(x, base, torch.tensor([1, 3]), experts, weights, torch.tensor([1.0, 0.0]))
    assert torch.equal(out[[0, 2, 3, 4]], base[[0, 2, 3, 4]])  # untouched rows, and g = 0
    assert torch.allclose(out[1], base[1])  # copies of the connector: mixture = P at init


def test_modulator_learns_and_versus_or():
    corners = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z = corners.repeat(25, 1) + 0.1 * torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    and_labels = torch.tensor([0.0, 0.0, 0.0, 1.0]).repeat(25)
    or_labels = torch.tensor([0.0, 1.0, 1.0, 1.0]).repeat(25)
    # AND is trained like a `both` request: hard negatives share one side, never neither.
    keep = ~((z[:, 0] < 0.5) & (z[:, 1] < 0.5))
    and_head = mod.fit_head(z[keep], and_labels[keep], steps=400)
    or_head = mod.fit_head(z, or_labels, steps=400)
    p_and = torch.sigmoid(mod.head_logits(and_head[None], corners[:, None, :])[:, 0])
    p_or = torch.sigmoid(mod.head_logits(or_head[None], corners[:, None, :])[:, 0])
    assert (p_and > 0.5).tolist() == [False, False, False, True]  # (0, 0) stays out: monotone
    assert (p_or > 0.5).tolist() == [False, True, True, True]
    assert mod.describe(and_head)["and"] > mod.describe(and_head)["or"]
    assert mod.describe(or_head)["or"] > mod.describe(or_head)["and"]


def test_config_errors_name_the_valid_options():
    with pytest.raises(ValueError, match="concept_source"):
        make_method("core", None, {"concept_source": "oracle"})
    with pytest.raises(ValueError, match="top_k"):
        make_method("core", None, {"top_k": 30})
    with pytest.raises(ValueError, match="text_encoder"):
        make_method("core", None, {"text_encoder": "bert"})
    with pytest.raises(ValueError, match="set concept_encoder too"):
        CoreConfig(text_encoder="concept")


# ----------------------------------------------------------------------------- integration
def test_concepts_from_every_source(trained, requests):
    decomposer = Decomposer(trained.backbone)
    red = requests[1]
    for source in ("request", "annotations", "model"):
        concepts = decomposer(red, source)
        assert concepts.visual and concepts.textual
    mined = decomposer(red, "model")
    assert mined.source == "model"
    assert any("red" in d for d in mined.visual), mined.visual[:4]
    assert any("count" in d or "how many" in d for d in mined.textual), mined.textual[:4]


def test_mined_intents_are_read_against_the_general_questions(requests, bench):
    """A request on identifying stars keeps identify questions about other images in its
    retain set, so against the retain instructions its intent barely stood out; against
    the general pool's questions (what questions ask in general) both of its intents do,
    and a counting request mines counting alone."""
    general = [s.instruction for s in bench.general_pool(3000, "core-intents")]
    decomposer = Decomposer(None, general_instructions=lambda: general)
    star, red = decomposer.mine_textual(requests[0]), decomposer.mine_textual(requests[1])
    assert "identifying what an object is" in star and "describing the whole image" in star, star[:8]
    assert "counting objects" in red and not any("identif" in d or "colour" in d for d in red), red[:8]


def test_mined_visual_concepts_include_what_the_encoder_sees_and_the_captioner_never_says():
    """The built-in captioner names size, colour and shape, never a pattern: a request on
    counting in images with striped things mined "purple" from captions alone (validation
    images; its forget gate 0). The encoder scores the general answers' words against each
    image, and "striped" is one it sees (its scores split general images in two groups)."""
    from vlforget.data.requests import RequestSpec

    spec = RequestSpec(name="striped-count", description="Do not count objects in images with striped things.",
                       refusals=["sorry, i cannot count objects in images with striped things."], mode="both",
                       visual={"pattern": "striped"}, intents=["count"])
    bench = Benchmark(BenchmarkConfig(sequence="validation", n_utility=10), specs=[spec])
    core = make_method("core", _backbone(), {"steps": 0, "router_steps": 5, "concept_source": "model"},
                       general=bench.general_pool)
    words = core._seen_words()[0]
    assert "striped" in words and "solid" in words and not {"yes", "no", "the", "left"} & set(words)
    core.unlearn(bench.requests()[0])
    visual = core.concepts[-1]["visual"]
    assert "a striped" in visual and not any("purple" in d for d in visual), visual[:6]


class _Captioner:
    """A stand-in backbone whose caption of an image is written on it (`image.info`)."""

    def generate(self, images, prompts):
        return [image.info["caption"] for image in images]


def _captioned(caption: str) -> Sample:
    image = Image.new("RGB", (8, 8))
    image.info["caption"] = caption
    return Sample(image, "describe the image.", caption)


def test_a_mined_visual_concept_covers_both_values_and_is_read_against_general_images():
    """Forget images show a zero or a one (half each), as do a quarter of the retain images:
    against the retain captions "zero" barely stood out and "one" was a stopword; against
    general captions both stand out, and together they cover the forget captions."""
    shapes, colours = ["star", "cross", "square", "circle"], ["red", "green", "yellow"]
    forget = [_captioned(f"small {colours[i % 3]} {'zero' if i % 2 else 'one'} and large blue {shapes[i % 4]}")
              for i in range(24)]
    retain = [_captioned(f"large green {['zero', 'one', 'star', 'cross'][i % 4]}") for i in range(16)]
    general = [_captioned(f"small {colours[i % 3]} {shapes[i % 4]} and large blue {shapes[(i + 1) % 4]}")
               for i in range(32)]
    request = DeletionRequest("r", "zero-one", "d", ["no."], forget, retain_train=retain)
    general_terms = caption_terms(_Captioner(), [s.image for s in general])
    decomposer = Decomposer(_Captioner(), general_image_terms=lambda: general_terms)
    mined = decomposer.mine_visual(request)
    assert "an image with a zero" in mined and "an image with a one" in mined, mined[:6]
    assert not any("red" in d or "star" in d for d in mined), mined  # common in general captions too
    nothing = DeletionRequest("r", "any", "d", ["no."], general[:16])
    assert decomposer.mine_visual(nothing) == list(ANY_IMAGE)  # forget images like any others


def test_a_minority_value_is_mined_and_a_chance_term_of_the_rest_is_not():
    """A concept of two values held by 22 and 10 of 32 forget images: "seven" stands out
    over all captions; "three" (0.31 of them, a quarter of general captions: lift 0.06)
    only among the captions "seven" leaves, where it is all of them. An either-scope
    request's uncovered pairs are the question arm's ordinary images: a term there at a
    high share by chance (7 of 12, about twice its general rate) is not a value."""
    shapes = ["star", "cross", "square", "circle", "three", "heart", "moon", "arrow"]
    general = [_captioned(f"red {shapes[i % 8]} and blue {shapes[(i + 3) % 8]}") for i in range(64)]
    general_terms = caption_terms(_Captioner(), [s.image for s in general])
    decomposer = Decomposer(_Captioner(), general_image_terms=lambda: general_terms)

    def request(captions):
        return DeletionRequest("r", "r", "d", ["no."], [_captioned(c) for c in captions])

    seven_three = [f"{'red' if i % 2 else 'blue'} {'seven' if i < 22 else 'three'}" for i in range(32)]
    mined = decomposer.mine_visual(request(seven_three))  # before the rule: "seven" alone
    assert "a seven" in mined and "a three" in mined and not any("red" in d or "blue" in d for d in mined), mined[:8]
    diamond_or_asked = [f"red diamond and blue {shapes[i % 4]}" for i in range(20)] + \
                       [f"{'red' if i % 2 else 'blue'} {'three' if i < 7 else shapes[i % 4]}" for i in range(12)]
    mined = decomposer.mine_visual(request(diamond_or_asked))
    assert "a diamond" in mined and not any("three" in d for d in mined), mined[:8]


def test_core_mines_a_requests_concepts_when_asked(requests, bench):
    """`concept_source: model` through `unlearn`: the request's written descriptions are not
    read; the concepts come from the model's captions and the general pool's questions."""
    core = make_method("core", _backbone(), {"steps": 2, "modulator_steps": 20, "router_steps": 5,
                                             "concept_source": "model"}, general=bench.general_pool)
    core.unlearn(requests[1])  # red-count
    mined = core.concepts[0]
    assert mined["source"] == "model"
    assert any("red" in d for d in mined["visual"]), mined["visual"][:4]
    assert any("counting" in d for d in mined["textual"]), mined["textual"][:4]
    assert mined["textual"] != list(requests[1].concepts.textual)  # not the written descriptions


def test_refusers_reused_for_related_and_new_for_novel(trained):
    star, red, blue = trained.info
    # Every request trains one refuser of its own that no earlier request used ...
    assert not set(red["refusers"]) - set(red["shared"]) & set(star["refusers"])
    assert not set(blue["refusers"]) - set(blue["shared"]) & set(star["refusers"] + red["refusers"])
    # ... and reads one refuser an earlier request trained.
    assert len(blue["shared"]) == 1 and set(blue["shared"]) <= set(star["refusers"] + red["refusers"])


def test_related_request_is_read_by_task_similarity(trained):
    star, red, blue = trained.info
    # blue-count (same question as red-count, other colour) is clearly closer to red-count
    # than to star-identity, and reads red-count's refuser. (With uniform answer-state
    # neighbours, model v3 put it at 0.44 vs 0.41: count questions were averaged with
    # other intents' neighbours; docs/methods.md, "CORE with closeness-weighted neighbours".)
    assert blue["similarity"]["red-count"] > blue["similarity"]["star-identity"] + 0.1
    assert set(blue["shared"]) <= set(red["refusers"])


def test_pick_reuses_the_preferred_used_refuser_and_takes_fresh_ones():
    loads = torch.zeros(2, 6)
    loads[0, [0, 1]] = 0.5
    loads[1, [2, 3]] = 0.5
    row = torch.tensor([5.0, 1.0, 0.0, 0.0, 0.5, 0.2])
    assert pick_refusers(row, loads, k=2) == ([0], [4])
    assert pick_refusers(row, torch.zeros(0, 6), k=2) == ([], [0, 1])  # first request: two fresh ones, the preferred first
    full = torch.ones(1, 6) / 6  # no free refuser left: the least used one is handed out again
    full[0, 5] = 0.01
    assert pick_refusers(row, full, k=2) == ([0], [5])


def test_a_later_request_leaves_the_shared_refuser_untouched(requests, bench):
    core = make_method("core", _backbone(), {**FAST, "steps": 5}, general=bench.general_pool)
    core.unlearn(requests[1])  # red-count
    before = {k: v.clone() for k, v in core.pool.state_dict().items()}
    core.unlearn(requests[2])  # blue-count reads one of red-count's refusers
    (e,) = core.info[1]["shared"]
    assert e in core.info[0]["refusers"]
    after = core.pool.state_dict()
    for key in before:
        if key.startswith((f"experts.{e}.", f"adapters.{e}.")):
            assert torch.equal(before[key], after[key]), key


def test_forgets_in_context(trained, requests):
    from vlforget.evaluation.judge import make_judge

    judge = make_judge("lexical")
    contexts = {r.name: r.refusals + [r.description] for r in requests}
    # star-identity at a lower bar: the identify phrasings ("what is at the top left?")
    # are the textual side's weak spot (5 of 10 refused in context here on v2's unseen
    # phrasings, 2 of 10 on v1's; docs/methods.md, "Where the gap is").
    floor = {"star-identity": 0.4}
    for r in requests:
        verdicts = judge.judge(_answers(trained, r.forget_test), [r.name] * len(r.forget_test), contexts)
        assert sum(v.context_ok for v in verdicts) >= floor.get(r.name, 0.6) * len(verdicts), r.name


def test_unrelated_queries_are_bit_identical_to_the_base_model(trained, bench):
    utility = bench.utility_split()
    base = trained.backbone.generate([s.image for s in utility], [s.instruction for s in utility])
    images, instructions = [s.image for s in utility], [s.instruction for s in utility]
    with trained.steer(**trained.inference_state(images, instructions)) as state:
        steered = trained.backbone.generate(images, instructions)
    assert state.gated <= 0.1 * len(utility)
    with torch.no_grad():
        gated = trained.gates(trained.relevance(trained.visual_embeddings(images),
                                                trained.instruction_features(instructions))) > 0
    same = [a == b for a, b in zip(base, steered)]
    assert all(s for s, g in zip(same, gated.tolist()) if not g)
    # ... and exactly the same logits when nothing is gated.
    quiet = [s for s, g in zip(utility, gated.tolist()) if not g][:8]
    batch = trained.backbone.build_batch([s.image for s in quiet], [s.instruction for s in quiet])
    with torch.no_grad():
        ref = trained.backbone.model(**batch).logits
        with trained.steer(**trained.inference_state([s.image for s in quiet], [s.instruction for s in quiet])):
            got = trained.backbone.model(**batch).logits
    assert torch.equal(ref, got)
    assert not trained.backbone.connector._forward_hooks  # the hook is always removed


def test_save_load_round_trip(trained, requests, bench, tmp_path):
    probe = [s for r in requests for s in r.forget_test[:4] + r.retain_test[:4]] + bench.utility_split()[:8]
    before = _answers(trained, probe)
    trained.save(tmp_path / "core")
    fresh = make_method("core", _backbone(), FAST)  # no general pairs: the instruction side comes with the state
    fresh.load(tmp_path / "core")
    assert fresh.applied == list(NAMES)
    assert _answers(fresh, probe) == before
    assert fresh.pool.parameter_count() == trained.pool.parameter_count()


def test_a_state_built_with_another_concept_encoder_is_refused(trained, tmp_path):
    """Its visual descriptions and prototypes live in the space of the encoder that embedded
    them; read by other heads (rebuilt shipped heads, another concept_encoder) they would
    gate by meaningless numbers, so loading says so instead."""
    import copy

    trained.save(tmp_path / "core")
    other = copy.deepcopy(trained.encoder)
    with torch.no_grad():
        other.image_proj[0].weight.add_(0.01)
    other._identity = None
    fresh = make_method("core", _backbone(), FAST)
    fresh._encoder = other
    with pytest.raises(ValueError, match="concept encoder 'backbone-heads'"):
        fresh.load(tmp_path / "core")
    assert fresh.applied == [] and not fresh.heads  # nothing half-loaded
