"""Dropping one request from a saved CORE state (the cheap revert).

CORE keeps every request's pieces apart, indexed by application order in its saved
state: concept layer (`concept.<i>.*`), modulator head (`head.<i>`), router row
(`row.<i>`), load vector (`load.<i>`), prototypes (`proto_*.<i>`), and its entries in
`concepts` / `info`. Dropping them means no query is routed for that request any more;
the refusers it trained stay as they are (later requests may share them, frozen), and
the other requests keep their heads, rows and prototypes unchanged. This works on the
saved state (`Method.save`'s files), not on CORE's code. Every other method is rebuilt
from the state before the request (`Worker.revert`).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from vlforget.methods.base import META_FILE, STATE_FILE

DROPPABLE = {"core"}
PER_REQUEST = ("concept", "head", "row", "load", "proto_features", "proto_instructions")


def drop_request(folder: Path, request_id: str) -> tuple[dict, dict]:
    """(meta, tensors) of the state in `folder` without `request_id`, the later ones renumbered."""
    meta = json.loads((Path(folder) / META_FILE).read_text())
    if meta["method"] not in DROPPABLE:
        raise ValueError(f"a {meta['method']!r} state cannot drop a request; rebuild it instead")
    index = meta["applied"].index(request_id)
    tensors = {}
    for key, value in load_file(str(Path(folder) / STATE_FILE)).items():
        parts = key.split(".")
        if parts[0] in PER_REQUEST and len(parts) > 1 and parts[1].isdigit():
            position = int(parts[1])
            if position == index:
                continue
            parts[1] = str(position - 1 if position > index else position)
        tensors[".".join(parts)] = value
    meta["applied"].pop(index)
    for key in ("concepts", "info"):
        if key in meta["state"]:
            meta["state"][key].pop(index)
    return meta, tensors


def load_dropped(method, meta: dict, tensors: dict) -> None:
    """Load a `drop_request` result into a freshly built method (what `Method.load` does)."""
    method.applied = list(meta["applied"])
    method.load_state_json(meta.get("state", {}))
    method.load_state_tensors(tensors)
