"""Mechanism tests of the inference-time methods (mllmeraser, sauce, eco).

Each test would fail if its mechanism broke: hooks left behind, unrelated queries
touched, the wrong features edited, corruption leaking onto unflagged rows or onto
decoding steps, the classifier blind to one modality, weights changed.
"""

from __future__ import annotations

import pytest
import torch

from vlforget.data.benchmark import Benchmark, BenchmarkConfig
from vlforget.methods import make_method
from vlforget.methods.hooks import decoder_layer, installed
from vlforget.methods.sauce import SparseAutoencoder
from vlforget.models.backbone import Backbone

# General pairs for the methods that fit on them (the built-in benchmark's pool).
GENERAL_POOL = Benchmark().general_pool


@pytest.fixture(scope="module")
def backbone():
    return Backbone.load()


@pytest.fixture(scope="module")
def request_():
    bench = Benchmark(BenchmarkConfig(seed=3, n_forget_train=12, n_forget_test=8, n_retain_train=12,
                                      n_retain_test=8, n_utility=20))
    return next(r for r in bench.requests() if r.name == "size-questions")


def _no_hooks(module: torch.nn.Module) -> bool:
    return not module._forward_hooks and not module._forward_pre_hooks


def test_installed_removes_hooks_even_after_an_exception():
    layer = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="boom"):
        with installed(lambda: layer.register_forward_hook(lambda m, a, o: o * 0)):
            assert not _no_hooks(layer)
            raise RuntimeError("boom")
    assert _no_hooks(layer)


def _eraser_with(backbone, bias: float):
    """An MLLMEraser with one hand-set request: a strong direction, a gate that is always on (or off)."""
    method = make_method("mllmeraser", backbone, general=GENERAL_POOL)
    hidden = backbone.model.get_input_embeddings().weight.shape[1]
    method.directions = [torch.randn(hidden, generator=torch.Generator().manual_seed(0)) * 50.0]
    method.gates = [(torch.zeros(hidden), torch.ones(hidden), torch.zeros(hidden), torch.tensor([bias]))]
    return method


def test_mllmeraser_steers_only_gated_queries_and_removes_its_hook(backbone, request_):
    probe = request_.retain_test
    images, instructions = [s.image for s in probe], [s.instruction for s in probe]
    base = backbone.generate(images, instructions)
    closed = _eraser_with(backbone, bias=-50.0)
    assert closed.generate(images, instructions) == base  # gate off: the original model, exactly
    assert not closed.last_gated.any()
    opened = _eraser_with(backbone, bias=50.0)
    assert opened.generate(images, instructions) != base
    assert opened.last_gated.all()
    assert _no_hooks(decoder_layer(backbone, opened.config.layer))


def test_mllmeraser_hook_is_removed_when_generation_fails(backbone, request_, monkeypatch):
    method = _eraser_with(backbone, bias=50.0)
    layer = decoder_layer(backbone, method.config.layer)

    def broken(*args, **kwargs):
        assert not _no_hooks(layer)  # installed while generating
        raise RuntimeError("generation failed")
    monkeypatch.setattr(backbone, "generate", broken)
    with pytest.raises(RuntimeError, match="generation failed"):
        method.generate([request_.forget_test[0].image], [request_.forget_test[0].instruction])
    assert _no_hooks(layer)


def test_sauce_clamp_edits_only_the_selected_firing_features(backbone):
    method = make_method("sauce", backbone, {"clamp_scale": -3.0}, general=GENERAL_POOL)
    hidden = 4
    method.sae = SparseAutoencoder(hidden, hidden, seed=0)
    with torch.no_grad():  # identity dictionary: feature i is hidden dimension i (where positive)
        method.sae.w_enc.copy_(torch.eye(hidden))
        method.sae.w_dec.copy_(torch.eye(hidden))
    method.selected = [torch.tensor([0])]
    output = torch.tensor([[[2.0, -1.0, 3.0, 0.5]], [[-2.0, 1.0, 3.0, 0.5]]])
    edited = method._clamp(None, (), output)
    assert torch.allclose(edited[0, 0], torch.tensor([-6.0, -1.0, 3.0, 0.5]))  # f0 = 2 -> -3 * 2
    assert torch.equal(edited[1], output[1])  # feature 0 silent: untouched
    quiet = torch.tensor([[[-1.0, 1.0, 1.0, 1.0]]])
    assert method._clamp(None, (), quiet) is None  # nothing fires: the layer output is not even copied


def test_eco_corrupts_only_flagged_rows_at_prompt_positions(backbone):
    method = make_method("eco", backbone, general=GENERAL_POOL)
    hidden = method.noise.shape[1]
    embeds = torch.randn(2, 5, hidden)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    method._strength_rows = torch.tensor([0.0, 2.0])
    _, kwargs = method._corrupt(None, (), {"inputs_embeds": embeds, "attention_mask": mask})
    out = kwargs["inputs_embeds"]
    assert torch.equal(out[0], embeds[0])  # unflagged row
    assert torch.equal(out[1, 0], embeds[1, 0])  # padding stays clean
    assert not torch.allclose(out[1, 1:], embeds[1, 1:])
    step = {"inputs_embeds": torch.randn(2, 1, hidden), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    assert method._corrupt(None, (), step) is None  # decoding steps are never corrupted


def test_eco_classifier_features_see_image_and_instruction(backbone, request_):
    method = make_method("eco", backbone, general=GENERAL_POOL)
    a, b = request_.forget_train[0], request_.retain_train[1]
    base = method.query_features([a.image], [a.instruction])
    other_image = method.query_features([b.image], [a.instruction])
    other_text = method.query_features([a.image], [b.instruction])
    assert not torch.allclose(base, other_image)
    assert not torch.allclose(base, other_text)


def test_eco_never_changes_weights_and_removes_its_hook(backbone, request_):
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    method = make_method("eco", backbone, {"classifier_negatives": 40, "classifier_steps": 50, "search_steps": 2}, general=GENERAL_POOL)
    method.unlearn(request_)
    after = backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert method.strengths[0] > 0
    assert _no_hooks(backbone.language_model)


def test_general_pool_comes_from_the_caller_never_the_built_in_world(backbone, request_):
    """A method that fits on general pairs asks the benchmark in use; given none, it says so."""
    request = request_
    method = make_method("eco", backbone, {"classifier_negatives": 8, "classifier_steps": 2, "search_steps": 1})
    with pytest.raises(ValueError, match="general pairs"):
        method.unlearn(request)
    asked = []

    def pool(n, tag):
        asked.append((n, tag))
        return GENERAL_POOL(n, tag)
    method = make_method("eco", backbone, {"classifier_negatives": 8, "classifier_steps": 2, "search_steps": 1},
                         general=pool)
    method.unlearn(request)
    assert asked and asked[0][0] == 8
