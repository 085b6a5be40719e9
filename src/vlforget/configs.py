"""Config dataclasses: help text on every field, overrides from JSON/YAML files.

A config file holds only overrides. Unknown keys are an error naming the nearest
valid key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

T = TypeVar("T")


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with help text (shown by `vlforget methods --verbose`)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def read_structured(path: str | Path, what: str = "config file") -> Any:
    """Parse a JSON (by suffix) or YAML file; a missing or unparsable file names itself."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    text = path.read_text()
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"could not parse {what} {path}: {error}") from error


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML file holding one mapping; clear errors for bad files."""
    data = read_structured(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def did_you_mean(name: str, valid: Sequence[str]) -> str:
    """"; did you mean 'x'?" for the nearest valid name, else "" (the one copy of this hint)."""
    near = difflib.get_close_matches(name, list(valid), n=1)
    return f"; did you mean {near[0]!r}?" if near else ""


def build_config(cls: type[T], overrides: dict[str, Any] | None = None, where: str = "config") -> T:
    """Instantiate config `cls` from overrides, rejecting unknown keys helpfully."""
    overrides = dict(overrides or {})
    valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in overrides:
        if key not in valid:
            hint = did_you_mean(key, valid) or f"; valid keys: {', '.join(valid)}"
            raise ValueError(f"unknown key {key!r} in {where}{hint}")
    try:
        return cls(**overrides)
    except TypeError as error:
        raise ValueError(f"bad value in {where}: {error}") from error


def config_help(cls: type) -> list[tuple[str, Any, str]]:
    """(name, default, help) for every field of a config dataclass."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((f.name, default, f.metadata.get("help", "")))
    return rows


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
