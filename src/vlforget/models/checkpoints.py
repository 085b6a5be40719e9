"""Model folders on disk: the built-in model's folder, a hub id's local-cache snapshot,
and the settings (`vlforget.json`, else read from the checkpoint) `Backbone` loads with.

`META_FILE` (`vlforget.json`, version `FORMAT_VERSION`) holds a saved backbone's prompt
template, image size and pixel normalisation; a folder without it (real weights) gets
`checkpoint_meta`: its family's chat format and its own `preprocessor_config.json`.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from vlforget.models.families import family_of
from vlforget.models.inputs import per_channel
from vlforget.models.prompt import family_template

FORMAT_VERSION = 1
META_FILE = "vlforget.json"


def builtin_path(benchmark_version: int | None = None) -> Path:
    """Folder of the committed model for a benchmark version (inside the installed package).

    The current built-in model (benchmark v2: pretrained on every phrasing) lives in
    `assets/tiny-llava`; v1's model is kept in `assets/tiny-llava-v1` so v1 results
    reproduce bit for bit (`--benchmark-version 1`).
    """
    folder = "tiny-llava-v1" if benchmark_version == 1 else "tiny-llava"
    return Path(str(resources.files("vlforget") / "assets" / folder))


def local_model_folder(model: str | Path) -> Path:
    """`model` as a folder: itself if it exists, else the local-cache snapshot of that hub id.

    Never downloads: vlforget runs offline; weights must be fetched beforehand.
    """
    path = Path(model)
    if path.exists():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(model), local_files_only=True))
    except HFValidationError:  # cannot be a hub id either
        raise FileNotFoundError(f"model folder not found: {model}") from None
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"{model!r} is not a folder, and the weights for hub id {model!r} are not in the local Hugging Face "
            f"cache; download them first (e.g. `hf download {model}` where there is internet, then copy the "
            f"cache here) or pass --model the folder holding config.json, the weights and the tokenizer") from None


def checkpoint_meta(path: Path, model_type: str, tokenizer=None) -> dict:
    """Settings for a folder without vlforget.json (e.g. a real checkpoint): its family's chat
    format and fixed image size, and the per-channel pixel normalisation of its
    `preprocessor_config.json`."""
    family = family_of(model_type)  # an unsupported family is refused by name here, before any weights
    meta: dict = {"prompt_template": family_template(model_type, tokenizer)}
    if family.image_size:  # a tower that takes any size (Qwen2-VL): the family's fixed size
        meta["image_size"] = family.image_size
    processor_file = path / "preprocessor_config.json"
    if processor_file.exists():
        processor = json.loads(processor_file.read_text())
        if "image_mean" in processor and "image_std" in processor:
            meta["pixel_mean"] = per_channel(processor["image_mean"])
            meta["pixel_std"] = per_channel(processor["image_std"])
    return meta

