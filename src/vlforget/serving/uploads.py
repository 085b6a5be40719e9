"""Client images in, checked and stored under generated names; stored examples back out.

An upload is decoded with Pillow only after its byte size is checked, its dimensions
are read from the header before any pixel is decoded (so a decompression bomb is refused
cheaply), and it is re-encoded as PNG under `uploads/<request id>/<split>-<n>.png`: no
client file name, path or metadata ever reaches the disk.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vlforget.serving.settings import ServiceSettings
from vlforget.types import DeletionRequest


class BadInput(ValueError):
    """A client error: becomes HTTP 4xx with this message (`status` 400 or 413)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def decode_base64(data: str, where: str) -> bytes:
    if "," in data[:100] and data.startswith("data:"):  # a data: URL
        data = data.split(",", 1)[1]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"{where}: image is not valid base64") from None


def check_image(raw: bytes, settings: ServiceSettings, where: str) -> Image.Image:
    if len(raw) > settings.max_image_bytes:
        raise BadInput(f"{where}: image is {len(raw)} bytes, the limit is {settings.max_image_bytes}", 413)
    try:
        image = Image.open(io.BytesIO(raw))
    except (UnidentifiedImageError, OSError):
        raise BadInput(f"{where}: not an image Pillow can read (PNG or JPEG expected)") from None
    if image.format not in ("PNG", "JPEG", "WEBP", "BMP", "GIF"):
        raise BadInput(f"{where}: image format {image.format} is not accepted (PNG, JPEG, WEBP, BMP, GIF)")
    width, height = image.size
    if max(width, height) > settings.max_image_side or min(width, height) < 1:
        raise BadInput(f"{where}: image is {width}x{height}, the limit is {settings.max_image_side} pixels a side",
                       413)
    try:
        return image.convert("RGB")
    except OSError:
        raise BadInput(f"{where}: the image data is truncated or corrupt") from None


def check_text(value: Any, settings: ServiceSettings, where: str, required: bool = True) -> str:
    if not isinstance(value, str):
        raise BadInput(f"{where} must be a string")
    value = value.strip()
    if required and not value:
        raise BadInput(f"{where} must not be empty")
    if len(value) > settings.max_text_chars:
        raise BadInput(f"{where} is {len(value)} characters, the limit is {settings.max_text_chars}", 413)
    return value


def check_texts(values: list[str], settings: ServiceSettings, where: str) -> list[str]:
    if len(values) > settings.max_texts:
        raise BadInput(f"{where}: {len(values)} given, the limit is {settings.max_texts}", 413)
    return [check_text(v, settings, f"{where}[{i}]") for i, v in enumerate(values)]


def save_png(image: Image.Image, folder: Path, stem: str) -> str:
    """Write atomically (temp + rename) so a crash never leaves half an image; return the name."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{stem}.png"
    tmp = folder / f".{stem}.tmp"
    image.save(tmp, format="PNG")
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, folder / name)
    return name


def store_request(request_id: str, fields: dict[str, Any], forget: list[tuple[Image.Image, str, str]],
                  retain: list[tuple[Image.Image, str, str]], settings: ServiceSettings) -> dict[str, Any]:
    """Checked texts + decoded images -> the payload row (images written under generated names)."""
    if not forget:
        raise BadInput("a deletion request needs at least one forget example")
    if len(forget) + len(retain) > settings.max_examples:
        raise BadInput(f"{len(forget) + len(retain)} examples given, the limit is {settings.max_examples}", 413)
    refusals = check_texts(fields.get("refusals") or [], settings, "refusals")
    if not refusals:
        raise BadInput("refusals: give at least one refusal sentence")
    folder = settings.data_dir / "uploads" / request_id
    payload: dict[str, Any] = {
        "description": check_text(fields.get("description") or "", settings, "description", required=False),
        "refusals": refusals,
        "visual_concepts": check_texts(fields.get("visual_concepts") or [], settings, "visual_concepts"),
        "textual_concepts": check_texts(fields.get("textual_concepts") or [], settings, "textual_concepts"),
    }
    texts = {split: [(check_text(instruction, settings, f"{split}[{i}].instruction"),
                      check_text(answer or "", settings, f"{split}[{i}].answer", required=False))
                     for i, (_, instruction, answer) in enumerate(examples)]
             for split, examples in (("forget", forget), ("retain", retain))}
    # every text is checked before the first file is written: a refused request leaves no files
    for split, examples in (("forget", forget), ("retain", retain)):
        payload[split] = [{"file": save_png(image, folder, f"{split}-{i:03d}"), "instruction": instruction,
                           "answer": answer}
                          for i, ((image, _, _), (instruction, answer)) in enumerate(zip(examples, texts[split]))]
    return payload


def load_request(request_id: str, name: str, payload: dict[str, Any], settings: ServiceSettings) -> DeletionRequest:
    """The stored request as a `DeletionRequest` (named by its id: unique in every method state)."""
    folder = settings.data_dir / "uploads" / request_id

    def examples(split: str) -> list[tuple[Image.Image, str, str]]:
        out = []
        for example in payload[split]:
            with Image.open(folder / Path(example["file"]).name) as image:
                out.append((image.convert("RGB"), example["instruction"], example["answer"]))
        return out

    return DeletionRequest.from_examples(
        request_id, forget=examples("forget"), retain=examples("retain"), refusals=payload["refusals"],
        description=payload["description"] or name, visual_concepts=payload["visual_concepts"],
        textual_concepts=payload["textual_concepts"], id=request_id)
