"""Loaders: locally downloaded copies of the field's benchmarks -> deletion-request sequences.

    from vlforget.data.loaders import load_sequence
    requests = load_sequence("core", "/data/CORE/datasets")

Nothing is downloaded: each loader reads the files a user already has. See
docs/loaders.md for the layouts, where each came from, and every option.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

from vlforget.data.loaders.clear import load_clear
from vlforget.data.loaders.core_release import load_core
from vlforget.data.loaders.fiubench import load_fiubench
from vlforget.data.loaders.generic import load_jsonl, load_llava_json, load_parquet
from vlforget.data.loaders.mllmu import load_mllmu
from vlforget.data.loaders.safeeraser import load_safeeraser
from vlforget.types import DeletionRequest

LOADERS: dict[str, Callable[..., list[DeletionRequest]]] = {
    "core": load_core,
    "safeeraser": load_safeeraser,
    "mllmu": load_mllmu,
    "clear": load_clear,
    "fiubench": load_fiubench,
    "llava_json": load_llava_json,
    "jsonl": load_jsonl,
    "parquet": load_parquet,
}


def load_sequence(name: str, path: str | Path, **options: Any) -> list[DeletionRequest]:
    """The deletion-request sequence of dataset format `name` read from `path`."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset format {name!r}; valid: {', '.join(LOADERS)}")
    loader = LOADERS[name]
    valid = [p for p in inspect.signature(loader).parameters if p != "path"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown}; valid options: {', '.join(valid)}")
    return loader(path, **options)

__all__ = ["LOADERS", "load_sequence"]
