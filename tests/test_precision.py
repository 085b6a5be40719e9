"""Every method in half precision, and on the backbone's device only.

The backbone is loaded in bfloat16 on CPU (what `--dtype bfloat16` gives on a GPU; the
CLI itself falls back to float32 on CPU). Each method applies two short requests and
answers; its stored tensors must be finite. A second test moves nothing to a GPU (there
is none here) but checks that no method creates a tensor on a device other than the
backbone's: every tensor factory call is watched while the method runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import vlforget

from vlforget.data.benchmark import Benchmark, BenchmarkConfig
from vlforget.methods import available_methods, make_method
from vlforget.models.backbone import Backbone

# General pairs for the methods that fit on them (the built-in benchmark's pool).
GENERAL_POOL = Benchmark().general_pool

pytestmark = pytest.mark.usefixtures("one_thread")

# As few steps as make every code path run once or twice (numbers are not checked here).
TINY = {
    "idknll": {"steps": 2}, "ga": {"steps": 2}, "graddiff": {"steps": 2}, "kl": {"steps": 2},
    "npo": {"steps": 2}, "ewc": {"steps": 2}, "lwf": {"steps": 2},
    "core": {"steps": 2, "modulator_steps": 20, "router_steps": 5},
    "gmm": {"steps": 2}, "eproj": {"steps": 2}, "moe_adapters": {"steps": 2}, "o3": {"steps": 2},
    "cvf_nullspace": {"steps": 2}, "mmunlearner": {"steps": 2, "fisher_batches": 1},
    "smfa": {"steps": 2}, "siu": {"steps": 2}, "scrub": {"steps": 2, "max_phase": 1},
    "mllmeraser": {"refusal_pool": 50}, "sauce": {"sae_steps": 20, "sae_pairs": 60},
    "eco": {"classifier_negatives": 20, "search_steps": 1},
}
# Methods that do not run in bfloat16 yet, as {name: "module.py: reason"} (xfail(strict)
# flips to a failure once a method is fixed, so entries must go with their fixes). None left.
KNOWN_HALF_PRECISION_FAILURES: dict[str, str] = {}
METHODS = sorted(available_methods())


@pytest.fixture(scope="module")
def requests():
    bench = Benchmark(BenchmarkConfig(seed=3, n_forget_train=6, n_forget_test=4, n_retain_train=6,
                                      n_retain_test=4, n_utility=4))
    return [r for r in bench.requests() if r.name in ("star-identity", "red-count")]


def _config(name: str) -> dict:
    fields = available_methods()[name].config_class.__dataclass_fields__
    return {k: v for k, v in TINY.get(name, {}).items() if k in fields}


def _marks(name):
    reason = KNOWN_HALF_PRECISION_FAILURES.get(name)
    return [pytest.mark.xfail(reason=reason, strict=True)] if reason else []


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in METHODS])
def test_every_method_runs_two_requests_in_bfloat16(name, requests, tmp_path):
    backbone = Backbone.load(None, "cpu", torch.bfloat16)
    assert backbone.model.dtype == torch.bfloat16
    method = make_method(name, backbone, _config(name), general=GENERAL_POOL)
    for request in requests:
        method.unlearn(request)
    probe = [s for r in requests for s in r.forget_test[:2]]
    answers = method.generate([s.image for s in probe], [s.instruction for s in probe])
    assert len(answers) == len(probe) and all(isinstance(a, str) for a in answers)
    for key, tensor in method.state_tensors().items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor.float()).all(), key
    method.save(tmp_path / "state")
    again = make_method(name, Backbone.load(None, "cpu", torch.bfloat16), _config(name))
    again.load(tmp_path / "state")
    assert again.generate([s.image for s in probe], [s.instruction for s in probe]) == answers


# Tensor factories: what they make lands on torch's default device (the CPU) unless told.
FACTORIES = {torch.zeros, torch.ones, torch.full, torch.empty, torch.tensor, torch.as_tensor, torch.randn,
             torch.rand, torch.randint, torch.randperm, torch.arange, torch.eye, torch.linspace}
SOURCE = str(Path(vlforget.__file__).parent)


class UnplacedTensors(TorchFunctionMode):
    """Records every tensor factory called from vlforget's own code without a `device`.

    On a GPU such a tensor lands on the CPU and meets the backbone's CUDA activations, the
    bug behind "Expected all tensors to be on the same device" (this machine has no GPU,
    so the test checks the cause rather than waiting for the crash). Factories inside
    torch, transformers or peft are not counted: they place their tensors themselves.
    State a method keeps on the CPU on purpose says so (device="cpu")."""

    def __init__(self, root: str = SOURCE):
        super().__init__()
        self.root = root
        self.places: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(self.root):
                where = os.path.relpath(caller.f_code.co_filename, self.root)
                self.places.add(f"{where}:{caller.f_lineno}")
        return func(*args, **kwargs)


# Methods that still create tensors without naming a device, as {name: "module.py: tensors
# made without a device"} (xfail(strict) flips once fixed, so entries go with their fixes). None left.
KNOWN_DEVICE_FAILURES: dict[str, str] = {}


def _device_marks(name):
    reason = KNOWN_DEVICE_FAILURES.get(name)
    return [pytest.mark.xfail(reason=reason, strict=True)] if reason else []


@pytest.mark.parametrize("name", [pytest.param(n, marks=_device_marks(n)) for n in METHODS])
def test_no_method_creates_tensors_off_the_backbones_device(name, requests):
    """Building the method, two requests and answering: every tensor vlforget makes names its device."""
    backbone = Backbone.load()
    with UnplacedTensors() as watch:
        method = make_method(name, backbone, _config(name), general=GENERAL_POOL)
        for request in requests:
            method.unlearn(request)
        probe = [s for r in requests for s in r.forget_test[:2]]
        method.generate([s.image for s in probe], [s.instruction for s in probe])
    assert not watch.places, f"tensors made without a device at {sorted(watch.places)}"


def test_the_device_watch_sees_an_unplaced_tensor():
    with UnplacedTensors(root=str(Path(__file__).parent)) as watch:
        torch.zeros(3, device="cpu")
        torch.tensor([1.0], device=torch.device("cpu"))
        torch.zeros(3)  # the one without a device
    assert len(watch.places) == 1 and next(iter(watch.places)).startswith("test_precision.py:")
