"""Which model a run used: its source, family and a fingerprint of config and weights.

A run records this in `results.json` (`backbone`), so `chat --state` can load the same
model without being told, and a resume (or a `--model` given to `chat`) is checked
against it: a run's states are only meaningful on the weights they were trained on.

The fingerprint is computed from the files, not the loaded tensors, so it does not
depend on the dtype or device the model was loaded with, and it is cheap for a 7B
checkpoint: sha256 over `config.json`, and for each weights file its name, size and
first and last MiB (enough to tell two checkpoints apart; not a tamper check).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin")
_CHUNK = 1 << 20


def checkpoint_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    config = folder / "config.json"
    digest.update(config.read_bytes() if config.exists() else b"")
    for path in sorted(p for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIXES)):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(_CHUNK))
            if size > 2 * _CHUNK:
                handle.seek(size - _CHUNK)
                digest.update(handle.read(_CHUNK))
    return digest.hexdigest()[:16]


def backbone_record(backbone) -> dict[str, Any]:
    """{source, family, model_type, dtype, fingerprint} of a loaded Backbone.

    `source` is what the user passed to `--model` (a folder, made absolute so the record
    still works from another directory, or a hub id), or None for the built-in model.
    A backbone not loaded from a folder has no fingerprint (None): it cannot be checked.
    """
    folder = getattr(backbone, "folder", None)
    source = getattr(backbone, "source", None)
    return {
        "source": source,
        "family": backbone.family.class_name,
        "model_type": backbone.model.config.model_type,
        "dtype": str(backbone.model.dtype).removeprefix("torch."),
        "fingerprint": checkpoint_fingerprint(folder) if folder is not None else None,
    }


def check_same_backbone(recorded: dict | None, current: dict, where: str) -> None:
    """ValueError when both records have fingerprints and they differ."""
    if not recorded or not recorded.get("fingerprint") or not current.get("fingerprint"):
        return
    if recorded["fingerprint"] != current["fingerprint"]:
        theirs = recorded.get("source") or "the built-in model"
        ours = current.get("source") or "the built-in model"
        raise ValueError(f"{where} was run on {theirs} ({recorded.get('model_type')}, fingerprint "
                         f"{recorded['fingerprint']}); the model given is {ours} ({current.get('model_type')}, "
                         f"fingerprint {current['fingerprint']})")
