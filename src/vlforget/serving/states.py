"""Method states on disk, one immutable folder per version under `data_dir/states/`.

A folder is written atomically by `Method.save` (temp folder, then rename) and only
*exists* for the service once the ledger has committed its `states` row. A folder left
by a crash between the two (written, never recorded) is removed at start-up and its
request applied again from the recorded state, so nothing is applied twice.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def folder_name(version: int) -> str:
    return f"v{version:06d}"


class StateStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, folder: str) -> Path:
        return self.root / Path(folder).name

    def save(self, method, version: int) -> str:
        folder = folder_name(version)
        method.save(self.path(folder))
        # kill -9 keeps written files (they are in the page cache); a power cut would not,
        # so the files and the rename reach the disk before the ledger commits the version
        for path in (*self.path(folder).iterdir(), self.path(folder), self.root):
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        return folder

    def prune(self, recorded: set[str]) -> list[str]:
        """Delete folders the ledger does not know (crash leftovers); return their names."""
        removed = []
        for entry in sorted(self.root.iterdir()):
            if entry.name not in recorded:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                removed.append(entry.name)
        return removed
