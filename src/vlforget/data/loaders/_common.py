"""Shared helpers of the dataset loaders: files, images, tables, splits, requests.

Every loader reads a local copy of a published benchmark (nothing is downloaded)
and returns a list of `DeletionRequest`s. Images are loaded eagerly as PIL RGB
images; one file is decoded once and shared by every sample that shows it.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from PIL import Image

from vlforget.data.images import open_rgb
from vlforget.types import Concepts, DeletionRequest, Sample

PARQUET_HINT = "reading parquet files needs pyarrow (or pandas): pip install pyarrow"


# --------------------------------------------------------------------------- paths

def existing_path(path: str | Path, what: str = "dataset") -> Path:
    """The path as a `Path`, or FileNotFoundError naming it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def resolve_image_path(name: str, roots: Sequence[Path]) -> Path:
    """The first of `root / name` that exists (absolute names as they are).

    When none exists the first candidate is returned, so that loading it raises a
    ValueError naming the file the dataset asked for.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"empty or invalid image path {name!r}")
    candidate = Path(name)
    if candidate.is_absolute():
        return candidate
    tried = [root / name for root in roots]
    for path in tried:
        if path.exists():
            return path
    return tried[0] if tried else candidate


# -------------------------------------------------------------------------- images

class ImageCache:
    """Decodes each image once (as RGB) and hands the same object to every sample."""

    def __init__(self) -> None:
        self._cache: dict[str, Image.Image] = {}

    def file(self, path: str | Path) -> Image.Image:
        key = str(path)
        if key not in self._cache:
            self._cache[key] = load_image(path)
        return self._cache[key]

    def data(self, blob: bytes, where: str) -> Image.Image:
        key = "bytes:" + hashlib.sha1(blob).hexdigest()
        if key not in self._cache:
            self._cache[key] = load_image_bytes(blob, where)
        return self._cache[key]

    def cell(self, value: Any, roots: Sequence[Path], where: str) -> Image.Image:
        """An image from a table cell: {bytes, path} struct, raw bytes, base64 text or a path."""
        if isinstance(value, dict):
            blob = value.get("bytes")
            if blob:
                return self.data(_as_bytes(blob, where), where)
            if value.get("path"):
                return self.file(resolve_image_path(value["path"], roots))
            raise ValueError(f"{where}: image cell has neither bytes nor path")
        if isinstance(value, (bytes, bytearray)):
            return self.data(bytes(value), where)
        if isinstance(value, str):
            if value.startswith("data:image") or (len(value) > 256 and "/" not in value[:64]):
                return self.data(_as_bytes(value, where), where)
            return self.file(resolve_image_path(value, roots))
        raise ValueError(f"{where}: no image (got {type(value).__name__})")


def _as_bytes(blob: Any, where: str) -> bytes:
    if isinstance(blob, (bytes, bytearray)):
        return bytes(blob)
    if isinstance(blob, str):
        text = blob.split(",", 1)[1] if blob.startswith("data:") else blob
        try:
            return base64.b64decode(text, validate=True)
        except ValueError as error:
            raise ValueError(f"{where}: image bytes are neither raw bytes nor base64") from error
    raise ValueError(f"{where}: image bytes of unexpected type {type(blob).__name__}")


def load_image(path: str | Path) -> Image.Image:
    """An image file as PIL RGB; ValueError naming the file when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image file not found: {path}")
    return open_rgb(path, str(path), "corrupt or unreadable image file")


def load_image_bytes(blob: bytes, where: str) -> Image.Image:
    return open_rgb(blob, f"in {where}", "corrupt or unreadable image")


# -------------------------------------------------------------------------- tables

def read_json(path: Path) -> Any:
    """A JSON file (or JSON-lines if the whole file is not one JSON value)."""
    path = existing_path(path, "file")
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as whole_error:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"could not parse {path} as JSON ({whole_error}) "
                                 f"nor as JSON lines (line {number})") from None
        return rows


def read_parquet(path: Path) -> list[dict[str, Any]]:
    """Rows of a parquet file as plain Python values (pyarrow, else pandas)."""
    try:
        import pyarrow.parquet as pq  # noqa: PLC0415
    except ImportError:
        pq = None
    if pq is not None:
        try:
            return pq.read_table(path).to_pylist()
        except Exception as error:  # pyarrow raises its own error types
            raise ValueError(f"could not read parquet file {path}: {error}") from error
    try:
        import pandas as pd  # noqa: PLC0415
    except ImportError:
        raise ImportError(f"{path}: {PARQUET_HINT}") from None
    try:
        frame = pd.read_parquet(path)
    except Exception as error:
        raise ValueError(f"could not read parquet file {path}: {error}") from error
    return [{k: plain(v) for k, v in row.items()} for row in frame.to_dict("records")]


def plain(value: Any) -> Any:
    """numpy arrays / scalars from pandas into lists and Python scalars, recursively."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (bytes, str)):
        return plain(value.tolist())
    return value


def read_table_folder(folder: Path, what: str) -> list[dict[str, Any]]:
    """All rows of a split folder: its parquet shards, else its JSON / JSON-lines files.

    Hugging Face stores a config as `<config>/train-00000-of-00001.parquet` (sometimes
    under `<config>/train/`); a JSON(-lines) export with the same columns is read too.
    """
    folder = existing_path(folder, what)
    if folder.is_file():
        files = [folder]
    else:
        files = sorted(folder.rglob("*.parquet")) or sorted(
            [*folder.rglob("*.jsonl"), *folder.rglob("*.json")])
    if not files:
        raise ValueError(f"{what}: no .parquet, .jsonl or .json file in {folder}")
    rows: list[dict[str, Any]] = []
    for file in files:
        if file.suffix == ".parquet":
            rows.extend(read_parquet(file))
        else:
            data = read_json(file)
            rows.extend(data if isinstance(data, list) else [data])
    return rows


def parse_structured(value: Any) -> Any:
    """A JSON or Python-literal string into its value (other values as they are)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text or text[0] not in "[{":
        return value
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            continue
    return value


# ---------------------------------------------------------------- splits & requests

def stable_order(items: Iterable[Any], key, seed: int | str) -> list[Any]:
    """Items in a deterministic pseudo-random order (hash of seed and key)."""
    return sorted(items, key=lambda item: hashlib.sha1(f"{seed}|{key(item)}".encode()).hexdigest())


def split_test(items: Sequence[Any], test_fraction: float, key, seed: int | str) -> tuple[list, list]:
    """Deterministic train/test split; at least one train item, at least one test item if >= 2."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    ordered = stable_order(items, key, seed)
    n_test = round(len(ordered) * test_fraction)
    if test_fraction > 0 and len(ordered) >= 2:
        n_test = max(1, n_test)
    n_test = min(n_test, max(0, len(ordered) - 1))
    test_keys = {key(item) for item in ordered[:n_test]}
    train = [item for item in items if key(item) not in test_keys]
    test = [item for item in items if key(item) in test_keys]
    return train, test


def chunk(items: Sequence[Any], size: int) -> list[list[Any]]:
    if size < 1:
        raise ValueError(f"group size must be >= 1, got {size}")
    return [list(items[i: i + size]) for i in range(0, len(items), size)]


def refusal_sample(image, instruction: str, refusal: str, intent: str, original_answer: str = "",
                   **meta: Any) -> Sample:
    """A forget pair: its answer is the refusal, the answer it used to get goes to meta."""
    return Sample(image, instruction, refusal, intent,
                  {"split": "forget", "original_answer": original_answer or "", **meta})


def answer_sample(image, instruction: str, answer: str | None, intent: str, **meta: Any) -> Sample:
    """A retain pair; `answer_known` is False when the dataset gives no reference answer."""
    known = bool(answer and str(answer).strip())
    return Sample(image, instruction, str(answer).strip() if known else "", intent,
                  {"split": "retain", "answer_known": known, **meta})


def build_request(*, id: str, name: str, description: str, refusals: Sequence[str],
                  forget_train: list[Sample], forget_test: list[Sample] | None = None,
                  retain_train: list[Sample] | None = None, retain_test: list[Sample] | None = None,
                  visual: Sequence[str] = (), textual: Sequence[str] = (), concepts_source: str = "dataset",
                  scope: dict[str, Any] | None = None, source: str = "") -> DeletionRequest:
    """A DeletionRequest with a clear error when its forget set is empty."""
    if not forget_train:
        raise ValueError(f"{source or 'dataset'}: request {name!r} has an empty forget set "
                         "(no forget pair with a readable image was found for it)")
    for sample in [*forget_train, *(forget_test or []), *(retain_train or []), *(retain_test or [])]:
        sample.meta.setdefault("request", name)
    concepts = Concepts(list(visual), list(textual), source=concepts_source) if (visual or textual) else None
    return DeletionRequest(
        id=id, name=name, description=description, refusals=list(refusals),
        forget_train=forget_train, forget_test=list(forget_test or []),
        retain_train=list(retain_train or []), retain_test=list(retain_test or []),
        concepts=concepts, scope={"source": source, **(scope or {})},
    )


def distribute(items: Sequence[Any], n_groups: int) -> list[list[Any]]:
    """Round-robin items over n_groups lists."""
    groups: list[list[Any]] = [[] for _ in range(n_groups)]
    for i, item in enumerate(items):
        groups[i % n_groups].append(item)
    return groups


def request_id(index: int) -> str:
    return f"r{index + 1:02d}"


def readable(label: str) -> str:
    """'german_shepherd_dog' -> 'german shepherd dog'."""
    return str(label).replace("_", " ").strip()
