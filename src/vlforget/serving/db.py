"""The ledger's tables (SQLAlchemy 2.x), the engine, and Alembic migrations.

Tables: `tokens` (API tokens, SHA-256 hashes only), `requests` (one row per deletion
request, its payload and current status), `states` (every saved method state: version,
folder, the request ids it has applied, in order) and `events` (the append-only ledger;
the migration installs a trigger refusing UPDATE and DELETE on it, in SQLite and
PostgreSQL alike).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Request(Base):
    __tablename__ = "requests"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # application order
    id: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), index=True)
    payload: Mapped[dict] = mapped_column(JSON)  # texts + stored example file names (never client paths)
    submitted_by: Mapped[str] = mapped_column(String(200))
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    state_version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # state that applied it
    crr: Mapped[float | None] = mapped_column(Float, nullable=True)
    ar: Mapped[float | None] = mapped_column(Float, nullable=True)
    s: Mapped[float | None] = mapped_column(Float, nullable=True)
    revert_requested: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class State(Base):
    __tablename__ = "states"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    folder: Mapped[str] = mapped_column(String(64))  # relative to data_dir/states
    applied: Mapped[list] = mapped_column(JSON)  # request ids, in application order
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(40))
    request_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("requests.id"), nullable=True)
    state_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor: Mapped[str | None] = mapped_column(String(200), nullable=True)
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # pragma: no cover - exercised by every sqlite test
            cursor = dbapi_connection.cursor()
            # WAL: readers (chat, status page) never block the worker's commits; full sync so a
            # committed transaction survives kill -9 and power loss alike.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
        return engine
    return create_engine(url, pool_pre_ping=True)


def migrate(url: str) -> None:
    """Bring the database at `url` to the newest schema (Alembic `upgrade head`)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    command.upgrade(config, "head")


def sessions(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
