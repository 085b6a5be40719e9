"""One table checks every registered method the same way.

On a 3-request sequence with small data: the method forgets (forget pairs are refused
more, or for ascent methods, their old answers come out less), it survives three
requests in a row, save/load round-trips to identical outputs, and two runs with one
seed give identical results.
"""

from __future__ import annotations

import pytest
import torch

from vlforget.data.benchmark import Benchmark, BenchmarkConfig
from vlforget.methods import available_methods, make_method
from vlforget.models.backbone import Backbone
from vlforget.text import is_refusal

# General pairs for the methods that fit on them (the built-in benchmark's pool).
GENERAL_POOL = Benchmark().general_pool

# Short training so the whole table runs in a few minutes on 2 cores; enough to move
# every method measurably. Methods not listed run with their defaults.
FAST = {
    "idknll": {"steps": 30}, "ga": {"steps": 15}, "graddiff": {"steps": 15}, "kl": {"steps": 15},
    "npo": {"steps": 20}, "ewc": {}, "lwf": {"steps": 30},  # ewc at its defaults: on model v3 30 steps refuse nothing (tuning record: score 0)
    "core": {"steps": 60, "lr": 0.03},
    "gmm": {"steps": 30}, "eproj": {"steps": 30}, "moe_adapters": {"steps": 30}, "o3": {"steps": 30},
    "cvf_nullspace": {"steps": 60}, "mmunlearner": {"steps": 15, "fisher_batches": 2},
    "smfa": {"steps": 15, "lr": 0.003}, "siu": {"steps": 15, "lr": 0.003}, "scrub": {"steps": 20, "max_phase": 8, "lr": 0.003},
    "mllmeraser": {"refusal_pool": 800}, "sauce": {"sae_steps": 600, "sae_pairs": 600},
    "eco": {"classifier_negatives": 200, "search_steps": 5},
    "none": {},
}
ASCENT = {"ga", "graddiff", "kl", "npo", "cvf_nullspace", "mmunlearner", "sauce", "eco"}  # these push old answers away instead of teaching refusals
METHODS = sorted(available_methods())


@pytest.fixture(scope="module")
def requests():
    bench = Benchmark(BenchmarkConfig(seed=3, n_forget_train=16, n_forget_test=12, n_retain_train=16,
                                      n_retain_test=8, n_utility=20))
    picked = [r for r in bench.requests() if r.name in ("star-identity", "red-count", "size-questions")]
    assert len(picked) == 3
    return picked


def _forget_probe(requests):
    return [s for r in requests for s in r.forget_test]


def _answers(method, samples):
    return method.generate([s.image for s in samples], [s.instruction for s in samples])


def _run(name, requests, seed=0):
    method = make_method(name, Backbone.load(), {**FAST.get(name, {}), "seed": seed}, general=GENERAL_POOL)
    before = _answers(method, _forget_probe(requests))
    for request in requests:
        method.unlearn(request)
    return method, before


@pytest.fixture(scope="module")
def trained(requests):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _run(name, requests)
        return cache[name]
    return get


@pytest.mark.parametrize("name", METHODS)
def test_method_forgets(name, trained, requests):
    method, before = trained(name)
    probe = _forget_probe(requests)
    after = _answers(method, probe)
    assert method.applied == [r.name for r in requests]
    if name == "none":  # the reference row forgets nothing, by design
        assert after == before
    elif name in ASCENT:
        old = [s.meta["original_answer"] for s in probe]
        hits_before = sum(b.strip() == o for b, o in zip(before, old))
        hits_after = sum(a.strip() == o for a, o in zip(after, old))
        assert hits_after < hits_before, (hits_before, hits_after)
    else:
        refused_before = sum(map(is_refusal, before))
        refused_after = sum(map(is_refusal, after))
        assert refused_after > refused_before + len(probe) * 0.2, (refused_before, refused_after)


@pytest.mark.parametrize("name", METHODS)
def test_method_save_load_round_trip(name, trained, requests, tmp_path):
    method, _ = trained(name)
    probe = _forget_probe(requests) + [s for r in requests for s in r.retain_test]
    method.save(tmp_path / "state")
    fresh = make_method(name, Backbone.load(), {**FAST.get(name, {}), "seed": 0}, general=GENERAL_POOL)
    fresh.load(tmp_path / "state")
    assert fresh.applied == method.applied
    assert _answers(fresh, probe) == _answers(method, probe)


@pytest.mark.parametrize("name", METHODS)
def test_method_is_deterministic_under_a_seed(name, trained, requests):
    method, _ = trained(name)
    again, _ = _run(name, requests, seed=0)
    probe = _forget_probe(requests)
    assert _answers(again, probe) == _answers(method, probe)
    # Identical answers can hide different weights; the learned state itself must match.
    mine, theirs = method.state_tensors(), again.state_tensors()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_a_request_cannot_be_applied_twice(trained, requests):
    method, _ = trained(METHODS[0])
    with pytest.raises(ValueError, match="already applied"):
        method.unlearn(requests[0])


def test_unknown_method_name_suggests_the_nearest():
    with pytest.raises(ValueError, match="did you mean 'idknll'"):
        make_method("idknl", None)


def test_unknown_config_key_names_the_nearest():
    with pytest.raises(ValueError, match="did you mean 'steps'"):
        make_method("idknll", None, {"step": 3})


def test_load_hands_the_tensors_over_on_the_methods_state_device(tmp_path):
    """safetensors reads onto the CPU; `load` moves the tensors to `state_device()` (the
    backbone's device by default) before `load_state_tensors`, so a GPU run's restored
    state meets its activations on the GPU. `meta` stands in for a second device here."""
    from vlforget.methods.base import Method

    class Recorder(Method):
        name = "recorder"

        def __init__(self, backbone, target):
            super().__init__(backbone)
            self.target, self.seen = target, None

        def _unlearn(self, request):
            pass

        def state_tensors(self):
            return {"w": torch.ones(2, device="cpu")}

        def load_state_tensors(self, tensors):
            self.seen = {k: v.device for k, v in tensors.items()}

        def state_device(self):
            return self.target

    saved = Recorder(None, torch.device("cpu"))
    saved.save(tmp_path / "state")
    restored = Recorder(None, torch.device("meta"))
    restored.load(tmp_path / "state")
    assert restored.seen == {"w": torch.device("meta")}
    assert Recorder.__mro__[1].state_device(saved) == torch.device("cpu")  # no backbone: the CPU


# ------------------------------------------------------------------ what a method reads

# The least work that still runs each method's whole `_unlearn`: what it reads is what
# matters here, not how well it forgets.
TINY = {
    "idknll": {"steps": 2}, "ga": {"steps": 2}, "graddiff": {"steps": 2}, "kl": {"steps": 2}, "npo": {"steps": 2},
    "ewc": {"steps": 2, "fisher_batches": 1}, "lwf": {"steps": 2}, "scrub": {"steps": 2, "max_phase": 2},
    "siu": {"steps": 2}, "smfa": {"steps": 2},
    "core": {"steps": 2, "modulator_steps": 20, "router_steps": 5, "general_pairs": 300},
    "gmm": {"steps": 2}, "eproj": {"steps": 2}, "moe_adapters": {"steps": 2, "ae_steps": 20}, "o3": {"steps": 2},
    "cvf_nullspace": {"steps": 2}, "mmunlearner": {"steps": 2, "fisher_batches": 1},
    "mllmeraser": {"refusal_pool": 800, "gate_negatives": 20, "attack_steps": 1},
    "sauce": {"sae_steps": 20, "sae_pairs": 60}, "eco": {"classifier_negatives": 20, "classifier_steps": 20,
                                                            "search_steps": 1},
    "none": {},
}
# Methods allowed not to declare `reads` yet (none: every method declares it).
UNDECLARED: set[str] = set()


def _state_after(name, request, general):
    method = make_method(name, Backbone.load(), TINY[name], general=general)
    method.unlearn(request)
    return method.state_tensors()


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", METHODS)
def test_a_method_reads_what_it_declares_and_nothing_else(name, requests):
    """Unlearning without what a method says it does not read leaves the same state (a
    wrong declaration fails here); taking away what it says it reads changes the state."""
    from dataclasses import replace

    from vlforget.methods.base import READS
    from vlforget.types import Concepts

    reads = available_methods()[name].reads
    if reads is None:
        assert name in UNDECLARED, f"{name} must declare `reads` (a tuple drawn from {READS})"
        pytest.skip(f"{name}: declared by its owner")
    assert set(reads) <= set(READS) and (reads or name == "none")
    request = requests[0]
    assert request.retain_train, "the check needs a request with retain pairs"
    # Not declaring "general": built without general pairs, any use of them is an error.
    state = _state_after(name, request, GENERAL_POOL if "general" in reads else None)
    without_retain = _state_after(name, replace(request, retain_train=[]), GENERAL_POOL if "general" in reads else None)
    assert _same(state, without_retain) == ("retain" not in reads)
    other_text = replace(request, description="something else entirely", refusals=["No, I will not say that."],
                         concepts=Concepts(visual=["a thing"], textual=["a question"]))
    assert _same(state, _state_after(name, other_text, GENERAL_POOL if "general" in reads else None)) == \
        ("text" not in reads)


@pytest.mark.parametrize("name", ["idknll", "gmm"])
def test_a_retain_term_at_weight_zero_is_the_forget_only_form(name, requests):
    request = requests[0]
    zero = make_method(name, Backbone.load(), {**TINY[name], "retain_weight": 0.0})
    zero.unlearn(request)
    assert _same(zero.state_tensors(), _state_after(name, replace_retain(request), None))


def replace_retain(request):
    from dataclasses import replace

    return replace(request, retain_train=[])


def test_ewc_fisher_is_normalised_and_its_penalty_holds_the_adapter(requests):
    def second_request_move(ewc_lambda):
        method = make_method("ewc", Backbone.load(), {"steps": 10, "fisher_batches": 1, "ewc_lambda": ewc_lambda})
        method.unlearn(requests[0])
        mean = sum(f.sum() for f in method.fisher) / sum(f.numel() for f in method.fisher)
        assert abs(float(mean) - 1.0) < 1e-4  # normalised per request: lambda alone sets the strength
        anchor, fisher = [p.detach().clone() for p in method.params], [f.clone() for f in method.fisher]
        method.unlearn(requests[1])
        # What EWC constrains: the move weighted by the first request's Fisher.
        return float(sum((f * (p.detach() - a) ** 2).sum() for f, p, a in zip(fisher, method.params, anchor)))

    # At lambda 1 the penalty is comparable to the task loss: the weights that mattered move far less.
    assert second_request_move(1.0) < 0.5 * second_request_move(0.0)


def test_use_retain_off_is_recorded_as_not_reading_retain_pairs():
    method = make_method("idknll", Backbone.load(), {"use_retain": False})
    assert method.reads == ("forget", "retain") and method.effective_reads() == ("forget",)
    with pytest.raises(ValueError, match="reads must be a tuple"):
        from vlforget.methods.base import Method, register

        register(type("Bad", (Method,), {"name": "bad-reads", "reads": ("forget", "labels"),
                                         "_unlearn": lambda self, r: None}))
