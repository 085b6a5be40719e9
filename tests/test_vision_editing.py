"""Mechanism tests of the weight-editing methods (cvf_nullspace, mmunlearner).

Each test would fail if its mechanism broke: the null-space projection really keeps
protected inputs' outputs, hooks are removed, the language model is never touched by
CVF, MMUnlearner's mask really confines the update, protection accumulates.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlforget.data.benchmark import Benchmark, BenchmarkConfig
from vlforget.methods import make_method
from vlforget.methods.cvf_nullspace import NullSpace, dihedral, image_key, record_inputs, unique_images
from vlforget.models.backbone import Backbone


@pytest.fixture(scope="module")
def requests():
    bench = Benchmark(BenchmarkConfig(seed=3, n_forget_train=8, n_forget_test=4, n_retain_train=8,
                                      n_retain_test=4, n_utility=20))
    return {r.name: r for r in bench.requests()}


# ------------------------------------------------------------------ null space

def test_projected_update_leaves_protected_outputs_unchanged():
    torch.manual_seed(0)
    protected = torch.randn(40, 5) @ torch.randn(5, 16)  # 40 inputs spanning 5 of 16 dimensions
    space = NullSpace(16)
    space.add(protected[:25])
    space.add(protected[25:])  # the subspace is accumulated, not recomputed from raw rows
    projection = space.projection(1.0 - 1e-9)
    update = torch.randn(8, 16) @ projection
    assert update.abs().max() > 0.1  # there is room to move ...
    assert (protected @ update.T).abs().max() < 1e-4  # ... and protected inputs do not see it
    assert torch.allclose(projection @ projection, projection, atol=1e-5)


def test_min_free_leaves_the_least_energy_directions_free():
    torch.manual_seed(0)
    space = NullSpace(16)
    space.add(torch.randn(200, 16) * torch.linspace(0.1, 3.0, 16))  # protected inputs span every direction
    assert space.projection(1.0).abs().max() < 1e-6  # nothing left to edit (CVF edited nothing)
    projection = space.projection(1.0, min_free=0.25)
    assert round(float(torch.trace(projection))) == 4  # a quarter of the directions stays free ...
    weakest = torch.linalg.eigh(space.covariance).eigenvectors[:, :4].float()
    assert torch.allclose(projection @ weakest, weakest, atol=1e-4)  # ... the ones protected inputs use least


def test_empty_null_space_bookkeeping():
    assert torch.equal(NullSpace(4).projection(0.99), torch.eye(4))  # nothing protected yet: free
    full = NullSpace(4)
    full.add(torch.eye(4))
    assert full.projection(1.0).abs().max() < 1e-6  # everything protected: no update survives


def test_record_inputs_removes_its_hooks_even_on_error():
    layer = torch.nn.Linear(3, 2)
    with pytest.raises(RuntimeError):
        with record_inputs({"l": layer}) as seen:
            layer(torch.ones(4, 3))
            assert seen["l"][0].shape == (4, 3)
            raise RuntimeError("boom")
    assert not layer._forward_hooks


def test_dihedral_gives_eight_views():
    image = Image.new("RGB", (4, 4))
    image.putpixel((0, 1), (255, 0, 0))  # asymmetric, so all eight views differ
    views = dihedral([image])
    assert len(views) == 8 and len({image_key(v) for v in views}) == 8


# ------------------------------------------------------------------ CVF

def test_cvf_keeps_retained_features_and_the_language_model(requests):
    request = requests["star-identity"]
    # min_free=0: the whole protected span is frozen, so protection is exact (the default
    # leaves the least-energy quarter free and protects approximately).
    method = make_method("cvf_nullspace", Backbone.load(), {"steps": 20, "min_free": 0.0})
    backbone = method.backbone
    forget = unique_images(request.forget_train)
    retained = unique_images(request.retain_train, exclude={image_key(i) for i in forget})
    outside_vision = {n: p.detach().clone() for n, p in backbone.model.named_parameters()
                      if "vision_tower" not in n and "multi_modal_projector" not in n}
    with torch.no_grad():
        retained_before = backbone.image_features(retained)
        forget_before = backbone.image_features(forget)
    method.unlearn(request)
    with torch.no_grad():
        retained_after = backbone.image_features(retained)
        forget_after = backbone.image_features(forget)
    scale = retained_before.abs().max()
    assert (retained_after - retained_before).abs().max() < 1e-3 * scale  # protected: numerically unchanged
    assert (forget_after - forget_before).abs().max() > 0.1 * scale  # forget images really moved
    for n, p in backbone.model.named_parameters():  # LLM (and embeddings) frozen: text side intact
        if n in outside_vision:
            assert torch.equal(p, outside_vision[n]), n


def test_cvf_leaves_a_request_without_concept_free_images_alone(requests):
    request = requests["size-questions"]  # textual scope: every retain image is also a forget image
    method = make_method("cvf_nullspace", Backbone.load(), {"steps": 5})
    before = {n: m.weight.detach().clone() for n, m in method.layers.items()}
    method.unlearn(request)
    assert all(torch.equal(m.weight, before[n]) for n, m in method.layers.items())
    assert method.drift == [None]


# ------------------------------------------------------------------ MMUnlearner

def test_mmunlearner_updates_only_salient_weights(requests):
    method = make_method("mmunlearner", Backbone.load(), {"steps": 3, "fisher_batches": 1})
    before = {n: p.detach().clone() for n, p in method.backbone.model.named_parameters()}
    method.unlearn(requests["star-identity"])
    changed_inside = 0
    for n, p in method.backbone.model.named_parameters():
        if n not in method.params:
            assert torch.equal(p, before[n]), n  # not a candidate (norms, embeddings, head): untouched
            continue
        mask = method.edited[n]
        assert torch.equal(p[~mask], before[n][~mask]), n  # outside the saliency mask: bit-identical
        changed_inside += int((p[mask] != before[n][mask]).sum())
    assert changed_inside > 0
    assert 0 < method.sparsity[0] < 1


def test_saliency_mask_and_accumulated_protection(requests):
    method = make_method("mmunlearner", Backbone.load(), {"steps": 0, "fisher_batches": 1, "saliency_ratio": 2.0})
    forget = {"w": torch.tensor([1.0, 3.0, 5.0])}
    retained = {"w": torch.tensor([1.0, 1.0, 3.0])}
    assert method.saliency_mask(forget, retained)["w"].tolist() == [False, True, False]
    method.unlearn(requests["star-identity"])
    first = {n: t.clone() for n, t in method.protected.items()}
    method.unlearn(requests["red-count"])
    # Protection only grows: a weight that mattered to an earlier request's retained data stays protected.
    assert all((method.protected[n] >= first[n]).all() for n in first)
    assert any((method.protected[n] > first[n]).any() for n in first)
