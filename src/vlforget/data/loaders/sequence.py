"""A loaded request sequence in the shape the continual runner expects.

The runner needs `requests()`, `utility_split()`, `version` and `config`. Published
benchmarks carry no general held-out split of our kind, so `utility_split()` is empty
unless the user supplies general pairs; S is then reported as undefined (null).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlforget.data.loaders import load_sequence
from vlforget.types import DeletionRequest, Sample


# Method settings a published protocol fixes (user overrides still win): CORE's paper
# trains on forget pairs only.
PROTOCOL_DEFAULTS: dict[str, dict[str, Any]] = {"core": {"use_retain": False}}


class LoadedSequence:
    def __init__(self, format_name: str, path: str | Path, options: dict[str, Any] | None = None,
                 utility: list[Sample] | None = None):
        self._requests: list[DeletionRequest] = load_sequence(format_name, path, **(options or {}))
        if not self._requests:
            raise ValueError(f"{path}: the {format_name} loader found no deletion requests")
        self._utility = list(utility or [])
        self.version = f"{format_name}-loaded"
        # Recorded in results.json: what was loaded, from where (the folder's name
        # only, so no machine path lands in results), with which options.
        self.config = {"format": format_name, "dataset": Path(path).name, "options": dict(options or {})}
        self.method_defaults = dict(PROTOCOL_DEFAULTS.get(format_name, {}))

    def requests(self) -> list[DeletionRequest]:
        return self._requests

    def utility_split(self) -> list[Sample]:
        return self._utility
