"""Mechanism tests for SMFA, SIU and SCRUB (`methods/smfa.py`, `siu.py`, `scrub.py`).

The shared table (`test_methods.py`) checks that they forget, round-trip and are
deterministic; these check the parts that make each method what it is.
"""

from __future__ import annotations

import pytest
import torch

from vlforget.data.benchmark import Benchmark, BenchmarkConfig
from vlforget.methods import make_method
from vlforget.methods import siu, smfa
from vlforget.methods.adapters import adapters_off
from vlforget.models.backbone import Backbone

TINY = {"steps": 2, "batch_size": 4}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def requests():
    bench = Benchmark(BenchmarkConfig(seed=5, n_forget_train=4, n_forget_test=2, n_retain_train=4,
                                      n_retain_test=2, n_utility=4))
    return [r for r in bench.requests() if r.name in ("star-identity", "size-questions")]


# ------------------------------------------------------------------------------ SMFA

def test_conflict_mask_masks_opposite_signs_unless_forget_clearly_dominates():
    forget = torch.tensor([1.0, 1.0, -1.0, 3.0, 0.5])
    anchor = torch.tensor([-1.0, 1.0, 1.0, -1.0, 0.5])  # same mean |entry| as forget: no rescaling
    mask = smfa.conflict_mask(forget, anchor, margin=1.0)
    # 0: opposite, equal size -> masked; 1, 4: same sign -> kept; 2: opposite -> masked;
    # 3: opposite but |3| > |1| -> the forget update wins, kept.
    assert mask.tolist() == [True, False, True, False, False]
    assert not smfa.conflict_mask(forget, anchor, margin=0.5)[0]  # a lower margin lets more through


def test_conflict_mask_rescales_the_anchor_first():
    forget = torch.tensor([1.0, 1.0, -1.0, 3.0, 0.5])
    anchor = torch.tensor([-1.0, 1.0, 1.0, -1.0, 0.5])
    # The anchor adapter's raw size must not matter, only its shape relative to dW_f.
    assert torch.equal(smfa.conflict_mask(forget, anchor * 1e-3, 1.0), smfa.conflict_mask(forget, anchor, 1.0))


def test_smfa_merges_exactly_the_unmasked_forget_update(requests, monkeypatch):
    calls = []
    real = smfa.conflict_mask

    def spy(forget_delta, anchor_delta, margin):
        mask = real(forget_delta, anchor_delta, margin)
        calls.append((forget_delta.clone(), mask))
        return mask
    monkeypatch.setattr(smfa, "conflict_mask", spy)
    method = make_method("smfa", Backbone.load(), TINY)
    method.unlearn(requests[0])
    assert len(calls) == len(method.layers)
    assert any(mask.any() for _, mask in calls)  # something conflicted
    for (update, mask), (name, layer) in zip(calls, method.layers.items()):
        delta = method.delta[name]
        assert torch.equal(delta, update * ~mask)
        assert (delta[mask] == 0).all()
        # merged into the base weight; the adapter is reset so nothing runs at inference
        assert torch.equal(layer.get_base_layer().weight, method.original[name] + delta)
        assert (layer.lora_B["default"].weight == 0).all()
    assert 0 < method.masked_share[0] < 1


def test_smfa_growing_anchor_sums_every_request_anchor(requests, monkeypatch):
    taken = []
    real = smfa.SMFA.take_adapter

    def spy(self):
        taken.append(real(self))
        return taken[-1]
    monkeypatch.setattr(smfa.SMFA, "take_adapter", spy)
    for mode in ("growing", "request"):
        taken.clear()
        method = make_method("smfa", Backbone.load(), {**TINY, "anchor_mode": mode})
        for request in requests:
            method.unlearn(request)
        first_anchor, second_anchor = taken[1], taken[3]  # forget, anchor, forget, anchor
        name = next(iter(method.layers))
        expected = second_anchor[name] + (first_anchor[name] if mode == "growing" else 0)
        assert torch.equal(method.anchor[name], expected)


def test_smfa_rejects_an_unknown_anchor_mode():
    with pytest.raises(ValueError, match="anchor_mode"):
        smfa.SMFAConfig(anchor_mode="sometimes")


# ------------------------------------------------------------------------------- SIU

def _logits(seed, shape=(2, 5, 7)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_dual_masked_kl_token_mask_skips_positions_the_original_disagrees_with():
    teacher = _logits(0)
    labels = torch.full((2, 5), -100)
    labels[:, 2:] = teacher[:, 1:4].argmax(-1)  # targets the original model agrees with ...
    labels[0, 3] = (teacher[0, 2].argmax() + 1) % 7  # ... except one new (unlearning) token
    none = torch.zeros(7, dtype=torch.bool)
    student = _logits(1)
    base = siu.dual_masked_kl(student, teacher, labels, none)
    assert base > 0
    moved = student.clone()
    moved[0, 2] += 5 * torch.arange(7)  # logits predicting the new token: excluded
    assert torch.allclose(siu.dual_masked_kl(moved, teacher, labels, none), base)
    moved[1, 2] += 5 * torch.arange(7)  # a kept position: counted
    assert not torch.allclose(siu.dual_masked_kl(moved, teacher, labels, none), base)
    assert siu.dual_masked_kl(teacher, teacher, labels, none).abs() < 1e-6


def test_dual_masked_kl_vocabulary_mask_ignores_forgotten_tokens():
    teacher = _logits(0)
    labels = torch.full((2, 5), -100)
    labels[:, 1:] = teacher[:, :4].argmax(-1)
    forgotten = torch.zeros(7, dtype=torch.bool)
    forgotten[[t for t in range(7) if t not in labels.tolist()[0] + labels.tolist()[1]][:2]] = True
    assert forgotten.any()
    student = _logits(1)
    base = siu.dual_masked_kl(student, teacher, labels, forgotten)
    moved = student.clone()
    moved[..., forgotten] += 10.0  # the current model may move forgotten tokens freely
    assert torch.allclose(siu.dual_masked_kl(moved, teacher, labels, forgotten), base)
    assert not torch.allclose(siu.dual_masked_kl(moved, teacher, labels, torch.zeros(7, dtype=torch.bool)),
                              siu.dual_masked_kl(student, teacher, labels, torch.zeros(7, dtype=torch.bool)))


def test_multifaceted_targets_and_forgotten_vocabulary(requests):
    request = requests[0]
    forget, keep = siu.multifaceted_targets(request, phrasings=2)
    assert [s.answer for s in forget[:2]] == request.refusals[:2]
    assert [s.instruction for s in forget] == [s.instruction for s in request.forget_train]
    assert keep == request.retain_train
    backbone = Backbone.load()
    vocab = siu.forgotten_vocabulary(backbone, request, forget, keep)
    keep_ids = {t for ids in backbone.encode_text([s.answer for s in forget + keep]) for t in ids}
    old_ids = {t for ids in backbone.encode_text([s.meta["original_answer"] for s in request.forget_train]) for t in ids}
    assert set(vocab.nonzero().flatten().tolist()) == old_ids - keep_ids


# ------------------------------------------------------------------------------ SCRUB

def test_scrub_alternates_max_steps_only_early_and_never_first():
    method = make_method("scrub", Backbone.load(), {"max_phase": 6})
    assert [method.is_max_step(s) for s in range(9)] == [False, True, False, True, False, True, False, False, False]


def test_scrub_max_step_pushes_away_from_the_frozen_teacher(requests):
    backbone = Backbone.load()
    method = make_method("scrub", backbone, {**TINY, "steps": 3, "max_phase": 3})
    method.unlearn(requests[0])  # min, max, min
    method.before_request(requests[1])
    loss = method.max_loss()
    assert loss < 0  # -KL, and the student has moved, so the KL is positive
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.params)
    # The teacher is the original model: bypassing the adapter gives the untouched network.
    batch = backbone.build_batch([s.image for s in requests[0].forget_test], [s.instruction for s in requests[0].forget_test])
    fresh = Backbone.load()
    with torch.no_grad(), adapters_off(backbone.model):
        assert torch.allclose(backbone.model(**batch).logits, fresh.model(**batch).logits, atol=1e-5)
