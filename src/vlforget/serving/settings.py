"""Service settings: where data lives, which method, and the limits on what clients send."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ServiceSettings:
    data_dir: Path  # uploads/, states/ and (by default) the SQLite ledger live here
    database_url: str | None = None  # None: sqlite:///<data_dir>/ledger.sqlite3
    method: str = "core"
    method_overrides: dict[str, Any] = field(default_factory=dict)
    model: str | None = None  # None: the built-in tiny model
    judge: str = "auto"
    utility_pairs: int = 40  # built-in general pairs S is measured on (0: no S)
    drop_reverts: bool = True  # CORE: revert by dropping the request's pieces (False: rebuild, as other methods)
    # limits on client input
    max_body_bytes: int = 20 * 1024 * 1024
    max_image_bytes: int = 4 * 1024 * 1024
    max_image_side: int = 1024
    max_examples: int = 64
    max_text_chars: int = 2000
    max_texts: int = 32  # refusal sentences / concept descriptions per request

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'ledger.sqlite3').resolve()}"
