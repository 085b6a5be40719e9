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


def check_options(name: str, options: dict[str, Any]) -> None:
    """ValueError for an option the loader does not take (naming the nearest) or a value of
    the wrong kind (judged from the option's default: a number, a flag, a text, a list)."""
    from vlforget.configs import did_you_mean

    parameters = {p: v for p, v in inspect.signature(LOADERS[name]).parameters.items() if p != "path"}
    # `general` (a file of general pairs) is taken by every format, but by the loaded
    # sequence (`sequence.LoadedSequence`), not the loader; named here so a typo finds it.
    valid = [*parameters, "general"]
    for key, value in options.items():
        if key == "general":
            raise ValueError(f"{name}: option 'general' belongs to the loaded sequence (LoadedSequence, the "
                             "command line's data config), not to load_sequence")
        if key not in parameters:
            raise ValueError(f"{name}: unknown option {key!r}" + (did_you_mean(key, valid)
                                                                 or f"; valid options: {', '.join(valid)}"))
        default = parameters[key].default
        if value is None or default is None or default is inspect.Parameter.empty:
            continue
        kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,), tuple: (list, tuple),
                 list: (list, tuple)}.get(type(default))
        wrong = kinds is not None and (not isinstance(value, kinds)
                                       or (isinstance(value, bool) and type(default) is not bool))
        if wrong:
            raise ValueError(f"{name}: option {key!r} expects {_kind(default)}, got {value!r}")


def _kind(default: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a text"}.get(type(default), "a list")


def load_sequence(name: str, path: str | Path, **options: Any) -> list[DeletionRequest]:
    """The deletion-request sequence of dataset format `name` read from `path`."""
    if name not in LOADERS:
        from vlforget.configs import did_you_mean

        raise ValueError(f"unknown dataset format {name!r}" + (did_you_mean(name, list(LOADERS)) or "")
                         + f"; valid: {', '.join(LOADERS)}")
    check_options(name, options)
    return LOADERS[name](path, **options)

__all__ = ["LOADERS", "load_sequence"]
