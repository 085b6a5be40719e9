"""The method interface and the registry every unlearning method joins.

A method wraps a `Backbone` and holds whatever state unlearning leaves behind
(adapters, refusers, detectors). It sees one request at a time: `unlearn(request)`
may use that request's forget/retain training pairs and descriptions, the original
model, and its own state from earlier requests, never earlier requests' raw data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vlforget import __version__
from vlforget.configs import build_config, did_you_mean, option, to_dict
from vlforget.types import DeletionRequest, Sample

STATE_FILE = "state.safetensors"
# What a method may read while applying a request (`Method.reads`), in table order.
READS = ("forget", "retain", "text", "general")
READS_HELP = {"forget": "the request's forget pairs (with the refusal or original answer they carry)",
              "retain": "the request's retain pairs",
              "text": "the request's text: description, refusal sentences, concept descriptions",
              "general": "general pairs of the benchmark in use (no request's data), via general_pool"}
META_FILE = "method.json"
CHECKSUM_KEY = "sha256"


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def json_sha256(value: Any) -> str:
    """SHA-256 of `value` as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class MethodConfig:
    """Fields every method shares."""

    seed: int = option(0, "seed for data order and initialisation; same seed, same results", ge=0, lt=2**31)
    use_retain: bool = option(True, "let the method read the request's retain pairs; off = forget pairs only "
                              "(CORE's paper trains this way; `--dataset core` turns it off)")


class Method(ABC):
    """Base class: subclasses set `name`, `description`, `config_class`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_class: ClassVar[type] = MethodConfig
    # False for methods that never produce a refusal by design (gradient ascent and
    # relatives, output steering, the `none` reference): their CRR and dRR can only be
    # 0 and 50, so tables show them as "n/a" and compare such methods on leak, AR and S.
    refuses: ClassVar[bool] = True
    # What `_unlearn` reads, drawn from READS; declared per module, shown by `vlforget
    # methods`, recorded in results.json and in the comparison table, so unequal
    # information is visible. tests/test_methods.py checks a method that does not
    # declare "retain" (or "text") ends in the same state without it. None = undeclared
    # (shown as "?"); () = reads nothing (the `none` row).
    reads: ClassVar[tuple[str, ...] | None] = None
    # Where general pairs (no request's data) come from: the benchmark in use's
    # `general_pool(n, tag)`, handed over by `make_method`. Methods that fit probes, SAEs,
    # gates or encoders on general data call `self.general_pool`, so none of them reads
    # the built-in world when a loaded benchmark is in use. None: the caller gave none.
    general: Callable[[int, str], list[Sample]] | None = None
    # Data files shipped with the package that change what the method does (CORE's
    # concept heads for the built-in model), relative to the `vlforget` package. They
    # are part of a tuned point's identity like the source: rebuilt heads make a stale
    # tuning record, not a silently reused one (`evaluation.tuning.method_identity`).
    assets: ClassVar[tuple[str, ...]] = ()

    def __init__(self, backbone, config: Any | None = None):
        self.backbone = backbone
        self.config = config if config is not None else self.config_class()
        self.applied: list[str] = []  # names of requests applied so far, in order

    @classmethod
    def source_sha256(cls) -> str:
        """A hash of what decides this method's behaviour besides its config: its module
        (a module in methods/ alone, a method package such as methods/core/ whole) and its
        shipped data files (`assets`). Tuning records and run folders carry it, so numbers
        are never resumed or reused across changed method code."""
        import sys
        from importlib import resources

        source = Path(sys.modules[cls.__module__].__file__)
        files = [source] if source.parent.name == "methods" else sorted(source.parent.glob("*.py"))
        for asset in cls.assets:
            files += sorted(p for p in (Path(str(resources.files("vlforget"))) / asset).glob("*") if p.is_file())
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()[:16]

    def effective_reads(self) -> tuple[str, ...] | None:
        """`reads` as configured: with use_retain off the request arrives without retain pairs."""
        if self.reads is None:
            return None
        off = set() if getattr(self.config, "use_retain", True) else {"retain"}
        return tuple(r for r in self.reads if r not in off)

    def request_seed(self, offset: int = 0) -> int:
        """The seed of the request being applied: distinct per request, the same on every rerun."""
        return self.config.seed * 1000 + len(self.applied) + offset

    def general_pool(self, n: int, tag: str) -> list[Sample]:
        """`n` general pairs of the benchmark in use, drawn reproducibly for `tag`."""
        if self.general is None:
            raise ValueError(f"method {self.name!r} fits on general pairs (no request's data) and none were "
                             "given: build it with make_method(..., general=benchmark.general_pool); for a "
                             "loaded dataset, name general pairs with `general:` in the data config")
        return self.general(n, tag)

    # -- what every method implements ---------------------------------------------
    @abstractmethod
    def _unlearn(self, request: DeletionRequest) -> None:
        """Apply one request (the base class records it)."""

    def generate(self, images: list[Image.Image], instructions: list[str], **kwargs) -> list[str]:
        """Answer with the current (unlearned) model; methods that act at inference override."""
        return self.backbone.generate(images, instructions, **kwargs)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything learned so far, as named tensors (saved with safetensors)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore `state_tensors()`; called after the method is rebuilt for `self.applied`,
        with the tensors already on `state_device()`."""

    def state_device(self) -> torch.device:
        """Where `load` puts the saved tensors: the backbone's device, where training left
        them (safetensors reads onto the CPU, and a CPU tensor meeting a GPU activation
        crashes). A method that keeps its small fits on the CPU on purpose returns the CPU."""
        return torch.device(getattr(self.backbone, "device", "cpu"))

    def state_json(self) -> dict[str, Any]:
        """Small non-tensor state (JSON-serialisable)."""
        return {}

    def load_state_json(self, data: dict[str, Any]) -> None:
        pass

    def check_state_json(self, data: dict[str, Any]) -> None:
        """Raise a ValueError naming the problem if a saved state (its `state_json()`) cannot
        be restored into this method; `load` calls it before restoring anything."""

    def report_extras(self) -> dict[str, Any]:
        """Anything worth plotting in the report (e.g. CORE's request x refuser loads)."""
        return {}

    # -- shared behaviour ----------------------------------------------------------
    def unlearn(self, request: DeletionRequest) -> None:
        if request.name in self.applied:
            raise ValueError(f"request {request.name!r} was already applied to this {self.name} state")
        if not request.forget_train:
            raise ValueError(f"request {request.name!r} has an empty forget set")
        torch.manual_seed(self.config.seed + len(self.applied))
        if not getattr(self.config, "use_retain", True):
            # One switch for every method: the request it sees has no retain pairs, so each
            # method's own "no retain data" path runs (no retain loss, anchor, negatives).
            request = dataclasses.replace(request, retain_train=[])
        self._unlearn(request)
        self.applied.append(request.name)

    def save(self, directory: str | Path) -> None:
        """Write state atomically: a temp folder first (unique per process), then a rename.

        `method.json` records SHA-256 checksums of the tensors, of the applied request list
        and of the JSON state, so `load` refuses a state whose parts were changed or do not
        belong together."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=directory.parent))
        try:
            tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_tensors().items()}
            save_file(tensors, str(tmp / STATE_FILE))
            state = self.state_json()
            meta = {
                "method": self.name,
                "vlforget_version": __version__,
                "config": to_dict(self.config),
                "applied": self.applied,
                "state": state,
                CHECKSUM_KEY: {"tensors": tensors_sha256(tensors), "applied": json_sha256(self.applied),
                               "state": json_sha256(state)},
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
            if directory.exists():
                old = Path(tempfile.mkdtemp(prefix=f".old-{os.getpid()}-", dir=directory.parent))
                os.replace(directory, old / "state")
                os.replace(tmp, directory)
                shutil.rmtree(old)
            else:
                os.replace(tmp, directory)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)

    def load(self, directory: str | Path) -> None:
        """Restore a state written by `save`; a damaged or inconsistent state is a ValueError naming the part."""
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"no saved method state in {directory} (missing {META_FILE})")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{meta_path} is not valid JSON ({error}); the state is damaged") from None
        if not isinstance(meta, dict) or not {"method", "applied", "state", CHECKSUM_KEY} <= set(meta):
            raise ValueError(f"{meta_path} lacks method, applied, state or {CHECKSUM_KEY}: not a complete "
                             f"state of this vlforget version")
        if meta["method"] != self.name:
            raise ValueError(f"{directory} holds a {meta['method']!r} state, not {self.name!r}")
        sums = meta[CHECKSUM_KEY] if isinstance(meta[CHECKSUM_KEY], dict) else {}
        for part, value in (("applied", meta["applied"]), ("state", meta["state"])):
            if json_sha256(value) != sums.get(part):
                raise ValueError(f"{meta_path}: {part!r} does not match its checksum (edited or damaged); "
                                 "the state cannot be trusted")
        try:
            tensors = load_file(str(directory / STATE_FILE))
        except FileNotFoundError:
            raise FileNotFoundError(f"no saved tensors in {directory} (missing {STATE_FILE})") from None
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"{directory / STATE_FILE} is not a readable safetensors file ({error}); "
                             "the state is damaged") from None
        if tensors_sha256(tensors) != sums.get("tensors"):
            raise ValueError(f"{directory / STATE_FILE}: the tensors do not match the checksum in {META_FILE} "
                             "(changed or damaged); the state cannot be trusted")
        self.check_state_json(meta["state"])
        device = self.state_device()
        self.applied = list(meta["applied"])
        self.load_state_json(meta["state"])
        self.load_state_tensors({name: tensor.to(device) for name, tensor in tensors.items()})


# ------------------------------------------------------------------ registry

REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a registry name")
    if cls.reads is not None and (not isinstance(cls.reads, tuple) or not set(cls.reads) <= set(READS)):
        raise ValueError(f"{cls.__name__}.reads must be a tuple drawn from {READS}, got {cls.reads!r}")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is registered twice")
    REGISTRY[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    _import_all()
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}{did_you_mean(name, REGISTRY)}; "
                         f"available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def make_method(name: str, backbone, overrides: dict[str, Any] | None = None,
                general: Callable[[int, str], list[Sample]] | None = None) -> Method:
    """Build method `name` on `backbone`; `general` is the benchmark in use's general pool."""
    cls = method_class(name)
    config = build_config(cls.config_class, overrides, where=f"{name} config")
    # Methods draw random initial weights (LoRA A matrices, refuser pools) when built: seed that too.
    torch.manual_seed(config.seed)
    method = cls(backbone, config)
    method.general = general
    return method


def available_methods() -> dict[str, type[Method]]:
    _import_all()
    return dict(sorted(REGISTRY.items()))


def _import_all() -> None:
    # Importing the package registers every method (one line per module there).
    import vlforget.methods  # noqa: F401
