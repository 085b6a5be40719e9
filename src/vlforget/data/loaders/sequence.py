"""A loaded request sequence in the shape the continual runner expects.

The runner needs `requests()`, `utility_split()`, `version` and `config`, and methods
that fit on general data need `general_pool(n, tag)`. Published benchmarks carry no
general held-out split of our kind, so `utility_split()` is empty unless the user
supplies general pairs; S is then reported as undefined (null). The general pool is
another matter (pairs to fit on, never to score): see `loaders/general.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlforget.data.loaders import load_sequence
from vlforget.data.loaders.general import GENERAL_OPTION, draw, layout_pairs, without_request_pairs
from vlforget.data.loaders.generic import read_general_pairs
from vlforget.types import DeletionRequest, Sample


# Method settings a published protocol fixes (user overrides still win): CORE's paper
# trains on forget pairs only.
PROTOCOL_DEFAULTS: dict[str, dict[str, Any]] = {"core": {"use_retain": False}}


class LoadedSequence:
    def __init__(self, format_name: str, path: str | Path, options: dict[str, Any] | None = None,
                 utility: list[Sample] | None = None):
        options = dict(options or {})
        # `general:` is the sequence's option, not the loader's: every format takes it.
        general_file = options.pop(GENERAL_OPTION, None)
        if general_file is not None and (not isinstance(general_file, (str, Path)) or not str(general_file).strip()):
            raise ValueError(f"option {GENERAL_OPTION!r} expects the path of a file or folder of general pairs "
                             f"(llava_json, jsonl or parquet), got {general_file!r}")
        self._requests: list[DeletionRequest] = load_sequence(format_name, path, **options)
        if not self._requests:
            raise ValueError(f"{path}: the {format_name} loader found no deletion requests")
        self._utility = list(utility or [])
        self.format, self._path, self._options = format_name, path, options
        # Read now (as loaders read their data), so a bad file stops the run before it starts.
        self._general_named = read_general_pairs(general_file) if general_file is not None else None
        self._general: list[Sample] | None = None  # the filtered pool, built on first use
        self.version = f"{format_name}-loaded"
        # Recorded in results.json: what was loaded, from where (the folder's name
        # only, so no machine path lands in results), with which options.
        self.config = {"format": format_name, "dataset": Path(path).name, "options": options}
        if general_file is not None:
            self.config[GENERAL_OPTION] = Path(general_file).name
        self.method_defaults = dict(PROTOCOL_DEFAULTS.get(format_name, {}))

    def requests(self) -> list[DeletionRequest]:
        return self._requests

    def utility_split(self) -> list[Sample]:
        return self._utility

    def general_pool(self, n: int, tag: str) -> list[Sample]:
        """`n` general pairs (no request's forget data, nothing evaluated), drawn reproducibly
        for `tag`; cycled when fewer exist. From the `general:` file, else the layout's own
        (`loaders/general.py`); a ValueError naming the option when there are none."""
        if self._general is None:
            source = self._general_named if self._general_named is not None else layout_pairs(
                self.format, self._requests, self._path, self._options)
            self._general = without_request_pairs(source, self._requests)
        if not self._general:
            where = ("the 'general:' file holds none that is not a request's forget or test pair"
                     if self._general_named is not None else
                     f"the {self.format} data gives none (no retain training pair outside every request's data)")
            raise ValueError(f"no general pairs to fit on: {where}; name a file of general pairs (llava_json, "
                             f"jsonl or parquet) with '{GENERAL_OPTION}: FILE' in the data config "
                             "(--data-config, or the dataset: block of --config)")
        return draw(self._general, n, tag)
