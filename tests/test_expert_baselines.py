"""Mechanism tests of CORE's expert baselines (gmm, eproj, moe_adapters, o3).

Each test would fail if the mechanism broke: hooks outlive their context, a route
that picks nothing changes the output, frozen experts move, the orthogonality
penalty is not what the paper writes, a detector score of 0 still applies the LoRA.
Training runs are a few steps on one request, so the file stays fast.
"""

from __future__ import annotations

import pytest
import torch

from vlforget.data.benchmark import Benchmark, BenchmarkConfig
from vlforget.methods import make_method
from vlforget.methods.hooked_experts import gate_threshold, query_features
from vlforget.methods.moe_adapters import fit_autoencoder, reconstruction_error
from vlforget.models.backbone import Backbone


@pytest.fixture(scope="module")
def request_():
    bench = Benchmark(BenchmarkConfig(seed=3, n_forget_train=8, n_forget_test=4, n_retain_train=4,
                                      n_retain_test=4, n_utility=8))
    return next(r for r in bench.requests() if r.name == "red-count")


@pytest.fixture(scope="module")
def backbone():
    return Backbone.load()


def _batch(backbone, samples):
    return backbone.build_batch([s.image for s in samples], [s.instruction for s in samples])


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("name", ["gmm", "eproj", "moe_adapters", "o3"])
def test_hooks_exist_only_inside_hooked(name, request_):
    method = make_method(name, Backbone.load(), {"steps": 2})
    method.unlearn(request_)
    model = method.backbone.model
    before = _hook_count(model)
    route = method.route([request_.forget_test[0].image], [request_.forget_test[0].instruction])
    with method.hooked(route):
        assert _hook_count(model) > before or name == "gmm" and method.adapter is None
    assert _hook_count(model) == before
    with pytest.raises(RuntimeError):
        with method.hooked(route):
            raise RuntimeError("boom")
    assert _hook_count(model) == before and method._route is None


@pytest.mark.parametrize("name", ["eproj", "moe_adapters", "o3"])
def test_a_route_to_nothing_gives_the_original_model_exactly(name, request_, backbone):
    method = make_method(name, Backbone.load(), {"steps": 3})
    method.unlearn(request_)
    samples = request_.forget_test + request_.retain_test
    batch = _batch(method.backbone, samples)
    nothing = {"eproj": torch.full((len(samples),), -1), "moe_adapters": torch.full((len(samples),), -1),
               "o3": torch.zeros(len(samples), 1)}[name]
    everything = {"eproj": torch.zeros(len(samples), dtype=torch.long),
                  "moe_adapters": torch.zeros(len(samples), dtype=torch.long), "o3": torch.ones(len(samples), 1)}[name]
    with torch.no_grad():
        original = backbone.model(**_batch(backbone, samples)).logits
        with method.hooked(nothing):
            off = method.backbone.model(**batch).logits
        with method.hooked(everything):
            on = method.backbone.model(**batch).logits
    assert torch.equal(off, original)
    assert not torch.allclose(on, original)


def test_eproj_mixed_route_changes_only_routed_rows(request_, backbone):
    method = make_method("eproj", Backbone.load(), {"steps": 3})
    method.unlearn(request_)
    samples = request_.forget_test[:2] + request_.retain_test[:2]
    route = torch.tensor([0, -1, 0, -1])
    with torch.no_grad():
        original = backbone.model(**_batch(backbone, samples)).logits
        with method.hooked(route):
            mixed = method.backbone.model(**_batch(method.backbone, samples)).logits
    assert torch.equal(mixed[1], original[1]) and torch.equal(mixed[3], original[3])
    assert not torch.allclose(mixed[0], original[0])


def test_gmm_trains_the_shared_projector_in_place(request_, backbone):
    method = make_method("gmm", Backbone.load(), {"steps": 3})
    method.unlearn(request_)
    trained = dict(method.backbone.connector.named_parameters())
    assert any(not torch.equal(p, trained[n]) for n, p in backbone.connector.named_parameters())


def test_moe_frozen_experts_do_not_move(request_):
    bench = Benchmark(BenchmarkConfig(seed=3, n_forget_train=8, n_forget_test=4, n_retain_train=4,
                                      n_retain_test=4, n_utility=8))
    second = next(r for r in bench.requests() if r.name == "size-questions")
    method = make_method("moe_adapters", Backbone.load(), {"steps": 4, "freeze_top": 2})
    method.unlearn(request_)
    frozen = method.frozen.clone()
    assert frozen.sum(1).tolist() == [2] * len(method.layers)
    down, up = method.down.clone(), method.up.clone()
    method.unlearn(second)
    assert torch.equal(method.down[frozen], down[frozen]) and torch.equal(method.up[frozen], up[frozen])
    assert not torch.equal(method.up[~frozen], up[~frozen])  # the others did train
    assert (method.frozen.sum(1) >= 2).all()


def test_autoencoder_rejects_what_it_never_saw():
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 64, generator=gen)
    inside = torch.nn.functional.normalize(torch.randn(40, 3, generator=gen) @ basis, dim=-1)
    outside = torch.nn.functional.normalize(torch.randn(40, 64, generator=gen), dim=-1)
    ae = fit_autoencoder(inside[:30], 4, 400, 2e-3, 0)
    assert reconstruction_error(ae, outside).min() > reconstruction_error(ae, inside[30:]).max()


def test_o3_orthogonality_penalty_is_the_papers():
    method = make_method("o3", Backbone.load(), {"steps": 0})
    method._new_lora(1)
    method._new_lora(2)
    expected = sum(torch.linalg.matrix_norm(a @ b.T) ** 2 for a, b in zip(method.lora_a[0], method.lora_a[1]))
    assert torch.allclose(method.orthogonality(), expected)


def test_o3_penalty_pushes_a_matrices_apart(request_):
    bench = Benchmark(BenchmarkConfig(seed=3, n_forget_train=8, n_forget_test=4, n_retain_train=4,
                                      n_retain_test=4, n_utility=8))
    second = next(r for r in bench.requests() if r.name == "size-questions")

    def overlap(weight):
        method = make_method("o3", Backbone.load(), {"steps": 6, "orthogonal_weight": weight})
        method.unlearn(request_)
        method.unlearn(second)
        return float(method.orthogonality())
    assert overlap(100.0) < overlap(0.0)


def test_o3_weights_follow_the_detector(request_):
    method = make_method("o3", Backbone.load(), {"steps": 0})
    method.unlearn(request_)
    forget = method.route([s.image for s in request_.forget_train], [s.instruction for s in request_.forget_train])
    assert forget.shape == (len(request_.forget_train), 1)
    assert (forget[:, 0] == 1.0).float().mean() >= 0.85  # the ramp is full from the 10% quantile up
    feats = query_features(method.backbone, [s.image for s in request_.forget_train], ["what is this?"] * 8)
    low, high = method.ramps[0]
    assert ((method.scores(feats)[:, 0] < low) == (method.route([s.image for s in request_.forget_train],
                                                                ["what is this?"] * 8)[:, 0] == 0)).all()
    assert high > low


def test_gate_threshold_separates_forget_from_retain_and_falls_back_to_a_quantile():
    forget, retain = torch.tensor([0.6, 0.7, 0.8, 0.9]), torch.tensor([0.1, 0.2, 0.3, 0.65])
    # Forget-only form: the quantile of the forget scores.
    assert torch.isclose(gate_threshold(forget, None, 0.25), torch.quantile(forget, 0.25))
    assert torch.isclose(gate_threshold(forget, retain[:0], 0.25), torch.quantile(forget, 0.25))
    # With retain scores: the least weighted error, midway between the two scores it separates.
    cut = gate_threshold(forget, retain, 0.25)
    assert torch.isclose(cut, torch.tensor(0.45))  # misses nothing, lets one retain pair (0.65) through
    # Retain pairs let through cost more: the cut moves above 0.65 (one forget pair missed).
    assert torch.isclose(gate_threshold(forget, retain, 0.25, negative_weight=3.0), torch.tensor(0.675))


@pytest.mark.parametrize("name", ["eproj", "o3", "moe_adapters"])
def test_gated_experts_calibrate_on_retain_pairs_when_given(name, request_):
    """With retain pairs the gate's cut makes the fewest errors on the request's own pairs
    (forget pairs left out + retain pairs let in); forget-only, a quantile makes more or as many."""
    from dataclasses import replace

    def trained(request):
        method = make_method(name, Backbone.load(), {"steps": 2, "ae_steps": 50} if name == "moe_adapters"
                             else {"steps": 2})
        method.unlearn(request)
        return method

    def errors(method):
        def gated(samples):
            route = method.route([s.image for s in samples], [s.instruction for s in samples])
            return (route >= 0) if route.dim() == 1 else (route[:, 0] >= 1.0)  # o3: LoRA in full
        return float((~gated(request_.forget_train)).float().mean() + gated(request_.retain_train).float().mean())

    calibrated, forget_only = trained(request_), trained(replace(request_, retain_train=[]))
    assert errors(calibrated) <= errors(forget_only)
    assert errors(calibrated) < 1.0  # better than gating everything or nothing
