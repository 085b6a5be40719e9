"""Config dataclasses: help text on every field, overrides from JSON/YAML files.

A config file holds only overrides. Unknown keys are an error naming the nearest
valid key, so a typo never silently falls back to a default. Every value is checked
against its field's declared type and range (`check_fields`: one generic check driven
by the dataclass annotations and the `option(..., ge=, gt=, le=, lt=, max_length=)`
metadata), and the error names the file and the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

T = TypeVar("T")


RANGE_KEYS = ("ge", "gt", "le", "lt", "max_length", "max_items")
# Longest string any checked field takes unless its metadata says otherwise: user text
# (request names, refusals, descriptions) ends up in training targets and reports.
MAX_TEXT = 1000


def option(default: Any, help: str, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, max_length: int | None = None, **kwargs: Any) -> Any:
    """A dataclass field with help text (shown by `vlforget methods --verbose`) and an optional range.

    `ge`/`gt`/`le`/`lt` bound a number (checked by `check_fields` when a config is built),
    `max_length` a string.
    """
    metadata = {"help": help, **{k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt),
                                                     ("max_length", max_length)) if v is not None}}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


# --- typed checks --------------------------------------------------------------------------------
class FieldError(ValueError):
    """A value that does not fit its field: the message names the field (and the file)."""


class _RangeError(FieldError):
    """A value of the right type outside its field's range (an Optional field reports it as such)."""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return "anything"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (list, tuple, set, Sequence) or annotation in (list, tuple):
        args = typing.get_args(annotation)
        plural = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}
        return f"a list of {plural[args[0]]}" if args and args[0] in plural else "a list"
    if origin is dict or annotation is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            type(None): "null"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_value(value: Any, annotation: Any, label: str, limits: dict[str, Any] | None = None) -> Any:
    """`value` converted to `annotation` (only the harmless conversions), or a FieldError naming `label`.

    Accepted conversions: an int where a float is declared; a numeric string where a float
    is declared (YAML 1.1 reads `1e-4` as a string); a list where a tuple is declared.
    A bool is never an int, a string never a list.
    """
    limits = limits or {}
    origin = typing.get_origin(annotation)
    wrong = FieldError(f"{label} must be {_type_name(annotation)}, got {_shown(value)} ({type(value).__name__})")
    if annotation is Any or annotation is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option_type in typing.get_args(annotation):
            try:
                return check_value(value, option_type, label, limits)
            except _RangeError:
                raise
            except FieldError:
                continue
        raise wrong
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            raise wrong
        return value
    if annotation is type(None):
        if value is not None:
            raise wrong
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return _in_range(value, label, limits)
    if annotation is float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise wrong from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        if not math.isfinite(value):
            raise FieldError(f"{label} must be a finite number, got {value}")
        return _in_range(float(value), label, limits)
    if annotation is str:
        if not isinstance(value, str):
            raise wrong
        longest = limits.get("max_length", MAX_TEXT)
        if len(value) > longest:
            raise FieldError(f"{label} is {len(value)} characters long; at most {longest} are allowed")
        return value
    if origin in (list, tuple, set) or annotation in (list, tuple, set):
        if not isinstance(value, (list, tuple)):
            raise wrong
        args = typing.get_args(annotation)
        item = args[0] if args else Any
        most = limits.get("max_items")
        if most is not None and len(value) > most:
            raise FieldError(f"{label} has {len(value)} items; at most {most} are allowed")
        items = [check_value(v, item, f"{label}[{i}]", limits) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or annotation is tuple else items
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise wrong
        key_type, value_type = (typing.get_args(annotation) or (Any, Any))
        return {check_value(k, key_type, f"{label} key", limits): check_value(v, value_type, f"{label}.{k}", limits)
                for k, v in value.items()}
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise wrong
    return value


def _in_range(value: float, label: str, limits: dict[str, Any]) -> float:
    for key, test, words in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                             ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        bound = limits.get(key)
        if bound is not None and not test(value, bound):
            raise _RangeError(f"{label} must be {words} {bound}, got {value}")
    return value


def check_fields(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """`values` checked (and harmlessly converted) against the field types and ranges of dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return {key: check_value(value, hints.get(key, Any), f"{where}: field {key!r}",
                             {k: fields[key].metadata[k] for k in RANGE_KEYS if k in fields[key].metadata})
            for key, value in values.items()}


def read_structured(path: str | Path, what: str = "config file") -> Any:
    """A JSON (by suffix) or YAML file's content; a missing, unreadable or unparsable file
    is one error naming the file (the one reader of config, request and paraphrase files)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        text = path.read_text()
    except IsADirectoryError:
        raise ValueError(f"{what} {path} is a folder, not a file") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} {path} is not UTF-8 text: {error.reason} at byte {error.start}") from None
    except OSError as error:
        raise ValueError(f"could not read {what} {path}: {error.strerror}") from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        first = str(error).strip().splitlines()
        raise ValueError(f"could not parse {what} {path}: {' '.join(line.strip() for line in first)}") from None


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
    """Instantiate config `cls` from overrides: unknown keys, wrong types and out-of-range values are
    a ValueError naming `where` (the file) and the field."""
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError(f"{where}: expected a mapping of config keys, got {type(overrides).__name__}")
    overrides = dict(overrides or {})
    valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in overrides:
        if not isinstance(key, str) or key not in valid:
            hint = did_you_mean(str(key), valid) or f"; valid keys: {', '.join(valid)}"
            raise ValueError(f"unknown key {key!r} in {where}{hint}")
    overrides = check_fields(cls, overrides, where)
    try:
        return cls(**overrides)
    except FieldError:
        raise
    except (TypeError, ValueError) as error:  # the class's own cross-field checks
        raise ValueError(f"{where}: {error}") from error


def config_help(cls: type) -> list[tuple[str, Any, str]]:
    """(name, default, help) for every field of a config dataclass."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((f.name, default, f.metadata.get("help", "")))
    return rows


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
