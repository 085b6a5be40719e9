"""`vlforget serve --create-token NAME`: a new token, recorded by hash, shown once."""

from __future__ import annotations

from vlforget.serving.auth import hash_token, new_token
from vlforget.serving.db import make_engine, migrate, sessions
from vlforget.serving.ledger import Ledger
from vlforget.serving.settings import ServiceSettings


def create_token(settings: ServiceSettings, name: str) -> str:
    name = name.strip()
    if not name or len(name) > 200:
        raise ValueError("--create-token needs a name of 1 to 200 characters")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.url)
    engine = make_engine(settings.url)
    try:
        token = new_token()
        Ledger(sessions(engine)).add_token(name, hash_token(token))
        return token
    finally:
        engine.dispose()
